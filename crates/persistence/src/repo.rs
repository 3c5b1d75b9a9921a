//! [`PgRegistryRepository`]: the registry port over PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use maas_domain::RepoError;
use maas_domain::alias::{AliasSplit, ResolvedAlias};
use maas_domain::inference::{ServableModel, UpstreamSecret};
use maas_domain::model::{
    Alias, Grant, Model, ModelFilter, ModelPatch, ModelVersion, NewModel, NewVersion, VersionPatch,
    Visibility,
};
use maas_domain::ports::RegistryRepository;
use maas_domain::values::{AliasName, EndpointUrl, ModelName, PageLimit, Username, VersionNumber};
use uuid::Uuid;

use crate::error::{Failure, corrupt, observe};
use crate::pool::{PgPool, PooledConnection};
use crate::rows::{ModelChanges, ModelRow, NewModelRow, VersionRow, rows_for};
use crate::schema::{model_grants, model_versions, models, users};
use crate::secrets::SecretKeys;

/// The model registry in PostgreSQL. Cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct PgRegistryRepository {
    pool: PgPool,
    secrets: SecretKeys,
}

impl PgRegistryRepository {
    /// A repository running its queries through `pool`, without an encryption key: upstream
    /// credentials cannot be stored ([`with_secrets`](Self::with_secrets) gives it keys).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            secrets: SecretKeys::default(),
        }
    }

    /// The keys upstream credentials are sealed and opened with (see [`crate::secrets`]).
    #[must_use]
    pub fn with_secrets(mut self, secrets: SecretKeys) -> Self {
        self.secrets = secrets;
        self
    }

    /// Writes every stored upstream credential again, encrypted under the current key (those
    /// under a previous key, and those stored in plain text before encryption existed), every
    /// endpoint's of every version, in one transaction; returns how many were rewritten.
    /// `maas-gateway secrets rotate`.
    ///
    /// # Errors
    /// No current key, a credential under a key that is not configured, or the database.
    pub async fn rotate_secrets(&self) -> Result<usize, RepoError> {
        observe("rotate_secrets", async {
            if !self.secrets.can_store() {
                return Err(RepoError::Internal(
                    "secrets.encryption_key is not set: nothing to rotate to".to_owned(),
                )
                .into());
            }
            let mut conn = self.conn().await?;
            let secrets = &self.secrets;
            conn.transaction::<_, Failure, _>(async |conn| {
                let stored: Vec<(Uuid, serde_json::Value)> = model_versions::table
                    .filter(has_credentials())
                    .select((model_versions::id, model_versions::endpoints))
                    .for_update()
                    .load(conn)
                    .await?;
                let mut rewritten = 0;
                for (id, endpoints) in stored {
                    let Some((endpoints, n)) = crate::endpoints::rotated(endpoints, secrets)?
                    else {
                        continue;
                    };
                    // The trigger seals the first endpoint's column the same.
                    diesel::update(model_versions::table.find(id))
                        .set(model_versions::endpoints.eq(endpoints))
                        .execute(conn)
                        .await?;
                    rewritten += n;
                }
                Ok(rewritten)
            })
            .await
        })
        .await
    }

    /// How many upstream credentials are still stored as written before encryption existed
    /// (in plain text): `secrets rotate` encrypts them.
    ///
    /// # Errors
    /// The database.
    pub async fn plaintext_secrets(&self) -> Result<i64, RepoError> {
        observe("plaintext_secrets", async {
            let mut conn = self.conn().await?;
            let stored: Vec<serde_json::Value> = model_versions::table
                .filter(has_credentials())
                .select(model_versions::endpoints)
                .load(&mut conn)
                .await?;
            let mut count = 0;
            for endpoints in stored {
                count += crate::endpoints::plaintext(endpoints)?;
            }
            Ok(i64::try_from(count).unwrap_or(i64::MAX))
        })
        .await
    }

    /// A pooled connection; waiting longer than the pool's connection timeout is a failure.
    async fn conn(&self) -> Result<PooledConnection<'_>, Failure> {
        Ok(self.pool.get().await?)
    }
}

/// Versions with at least one endpoint credential (`endpoints` holds the key
/// `upstream_api_key` in one of its objects).
fn has_credentials() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql::<diesel::sql_types::Bool>(
        "jsonb_path_exists(model_versions.endpoints, '$[*].upstream_api_key')",
    )
}

/// The owner of a model that could not be created because its owner is gone.
fn user_id_not_found(owner: Option<Uuid>) -> RepoError {
    match owner {
        Some(id) => RepoError::NotFound(format!("user {id} not found")),
        None => RepoError::Internal("create_model: foreign key violation without owner".into()),
    }
}

/// The condition "models `$user` may use: public ones, its own, and those granted to it", as
/// an expression for any query that has `models` in it (a macro: diesel's types differ with the
/// query's joins).
macro_rules! usable_by {
    ($user:expr) => {{
        let user: Uuid = $user;
        models::visibility
            .eq(Visibility::Public.as_str())
            .or(models::owner_id.eq(user).assume_not_null())
            .or(models::id.eq_any(
                model_grants::table
                    .filter(model_grants::user_id.eq(user))
                    .select(model_grants::model_id),
            ))
    }};
}

pub(crate) fn model_not_found(model: &ModelName) -> RepoError {
    RepoError::NotFound(format!("model '{model}' not found"))
}

pub(crate) fn version_not_found(model: &ModelName, version: VersionNumber) -> RepoError {
    RepoError::NotFound(format!("version {version} of model '{model}' not found"))
}

async fn model_exists(conn: &mut AsyncPgConnection, model: &ModelName) -> Result<bool, Failure> {
    Ok(diesel::select(diesel::dsl::exists(
        models::table.filter(models::name.eq(model.as_str())),
    ))
    .get_result(conn)
    .await?)
}

/// The error for something of `model` that was not found: the model itself when it is missing,
/// else `otherwise`. Costs a query, but only on the not-found path.
pub(crate) async fn missing(
    conn: &mut AsyncPgConnection,
    model: &ModelName,
    otherwise: RepoError,
) -> Failure {
    match model_exists(conn, model).await {
        Ok(true) => otherwise.into(),
        Ok(false) => model_not_found(model).into(),
        Err(e) => e,
    }
}

/// A `LIKE` pattern matching `text` anywhere, with the wildcards `%` and `_` and the escape
/// character `\` taken literally.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn versions_of(rows: Vec<VersionRow>, model: &ModelName) -> Result<Vec<ModelVersion>, RepoError> {
    rows.into_iter().map(|row| row.into_domain(model)).collect()
}

#[async_trait]
impl RegistryRepository for PgRegistryRepository {
    async fn create_model(&self, new: NewModel) -> Result<Model, RepoError> {
        observe("create_model", async {
            let mut conn = self.conn().await?;
            let name = new.name.clone();
            let owner = new.owner_id;
            let inserted = diesel::insert_into(models::table)
                .values(NewModelRow::from(new))
                .returning(ModelRow::as_returning())
                .get_result(&mut conn)
                .await;
            match inserted {
                Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                    Err(RepoError::Conflict(format!("model '{name}' already exists")).into())
                }
                // The owner was deleted after it was authenticated.
                Err(DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)) => {
                    Err(user_id_not_found(owner).into())
                }
                other => Ok(other?.try_into()?),
            }
        })
        .await
    }

    async fn get_model(&self, name: &ModelName) -> Result<Model, RepoError> {
        observe("get_model", async {
            let mut conn = self.conn().await?;
            let row = models::table
                .filter(models::name.eq(name.as_str()))
                .select(ModelRow::as_select())
                .first(&mut conn)
                .await
                .optional()?;
            Ok(row.ok_or_else(|| model_not_found(name))?.try_into()?)
        })
        .await
    }

    async fn list_models(
        &self,
        filter: &ModelFilter,
        after: Option<&ModelName>,
        limit: PageLimit,
    ) -> Result<Vec<Model>, RepoError> {
        observe("list_models", async {
            let mut conn = self.conn().await?;
            let mut query = models::table
                .select(ModelRow::as_select())
                .order(models::name.asc())
                .limit(rows_for(limit))
                .into_boxed();
            if let Some(after) = after {
                query = query.filter(models::name.gt(after.as_str()));
            }
            if let Some(user) = filter.usable_by {
                query = query.filter(usable_by!(user));
            }
            if let Some(names) = &filter.names {
                query = query.filter(models::name.eq_any(names.iter().map(ModelName::as_str)));
            }
            if let Some(tag) = &filter.tag {
                query = query.filter(models::tags.contains(vec![tag.clone()]));
            }
            if let Some(q) = &filter.q {
                let pattern = contains_pattern(q);
                query = query.filter(
                    models::name
                        .ilike(pattern.clone())
                        .or(models::description.ilike(pattern)),
                );
            }
            let rows = query.load(&mut conn).await?;
            Ok(rows
                .into_iter()
                .map(Model::try_from)
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn update_model(&self, name: &ModelName, patch: ModelPatch) -> Result<Model, RepoError> {
        observe("update_model", async {
            let mut conn = self.conn().await?;
            let row = diesel::update(models::table.filter(models::name.eq(name.as_str())))
                .set((ModelChanges::from(patch), models::updated_at.eq(now)))
                .returning(ModelRow::as_returning())
                .get_result(&mut conn)
                .await
                .optional()?;
            Ok(row.ok_or_else(|| model_not_found(name))?.try_into()?)
        })
        .await
    }

    async fn delete_model(&self, name: &ModelName) -> Result<(), RepoError> {
        observe("delete_model", async {
            let mut conn = self.conn().await?;
            // Versions and aliases go with it through ON DELETE CASCADE.
            let deleted = diesel::delete(models::table.filter(models::name.eq(name.as_str())))
                .execute(&mut conn)
                .await?;
            if deleted == 0 {
                return Err(model_not_found(name).into());
            }
            Ok(())
        })
        .await
    }

    async fn create_version(
        &self,
        model: &ModelName,
        new: NewVersion,
    ) -> Result<ModelVersion, RepoError> {
        observe("create_version", async {
            let mut conn = self.conn().await?;
            crate::versions::create(&mut conn, model, new, &self.secrets).await
        })
        .await
    }

    async fn list_versions(
        &self,
        model: &ModelName,
        before: Option<VersionNumber>,
        limit: PageLimit,
    ) -> Result<Vec<ModelVersion>, RepoError> {
        observe("list_versions", async {
            let mut conn = self.conn().await?;
            let mut query = model_versions::table
                .inner_join(models::table)
                .filter(models::name.eq(model.as_str()))
                .select(VersionRow::as_select())
                .order(model_versions::version.desc())
                .limit(rows_for(limit))
                .into_boxed();
            if let Some(before) = before {
                query = query.filter(model_versions::version.lt(before.get()));
            }
            let rows = query.load(&mut conn).await?;
            if rows.is_empty() && !model_exists(&mut conn, model).await? {
                return Err(model_not_found(model).into());
            }
            Ok(versions_of(rows, model)?)
        })
        .await
    }

    async fn get_version(
        &self,
        model: &ModelName,
        version: VersionNumber,
    ) -> Result<ModelVersion, RepoError> {
        observe("get_version", async {
            let mut conn = self.conn().await?;
            let row = model_versions::table
                .inner_join(models::table)
                .filter(models::name.eq(model.as_str()))
                .filter(model_versions::version.eq(version.get()))
                .select(VersionRow::as_select())
                .first(&mut conn)
                .await
                .optional()?;
            match row {
                Some(row) => Ok(row.into_domain(model)?),
                None => Err(missing(&mut conn, model, version_not_found(model, version)).await),
            }
        })
        .await
    }

    async fn upstream_secrets(
        &self,
        model: &ModelName,
        version: VersionNumber,
    ) -> Result<Vec<(EndpointUrl, Option<UpstreamSecret>)>, RepoError> {
        observe("upstream_secrets", async {
            let mut conn = self.conn().await?;
            let stored: Option<serde_json::Value> = model_versions::table
                .inner_join(models::table)
                .filter(models::name.eq(model.as_str()))
                .filter(model_versions::version.eq(version.get()))
                .select(model_versions::endpoints)
                .first(&mut conn)
                .await
                .optional()?;
            match stored {
                Some(stored) => Ok(crate::endpoints::opened(stored, &self.secrets)?),
                None => Err(missing(&mut conn, model, version_not_found(model, version)).await),
            }
        })
        .await
    }

    async fn latest_version(&self, model: &ModelName) -> Result<ModelVersion, RepoError> {
        observe("latest_version", async {
            let mut conn = self.conn().await?;
            let row = model_versions::table
                .inner_join(models::table)
                .filter(models::name.eq(model.as_str()))
                .select(VersionRow::as_select())
                .order(model_versions::version.desc())
                .first(&mut conn)
                .await
                .optional()?;
            match row {
                Some(row) => Ok(row.into_domain(model)?),
                None => {
                    let none = RepoError::NotFound(format!("model '{model}' has no versions"));
                    Err(missing(&mut conn, model, none).await)
                }
            }
        })
        .await
    }

    async fn latest_servable_version(&self, model: &ModelName) -> Result<ModelVersion, RepoError> {
        observe("latest_servable_version", async {
            let mut conn = self.conn().await?;
            // Walks model_versions_servable_idx backwards: versions without an endpoint are
            // not in it (endpoint_url is the first endpoint's, kept by the table's trigger).
            let row = model_versions::table
                .inner_join(models::table)
                .filter(models::name.eq(model.as_str()))
                .filter(model_versions::endpoint_url.is_not_null())
                .select(VersionRow::as_select())
                .order(model_versions::version.desc())
                .first(&mut conn)
                .await
                .optional()?;
            match row {
                Some(row) => Ok(row.into_domain(model)?),
                None => {
                    let none = RepoError::NotFound(format!(
                        "model '{model}' has no version with an endpoint"
                    ));
                    Err(missing(&mut conn, model, none).await)
                }
            }
        })
        .await
    }

    async fn list_servable_models(
        &self,
        filter: &ModelFilter,
    ) -> Result<Vec<ServableModel>, RepoError> {
        observe("list_servable_models", async {
            let mut conn = self.conn().await?;
            // One query: `IN (SELECT …)` is planned as a semi-join, so a model with several
            // servable versions still comes back once.
            let servable = model_versions::table
                .filter(model_versions::endpoint_url.is_not_null())
                .select(model_versions::model_id);
            let mut query = models::table
                .left_join(users::table)
                .filter(models::id.eq_any(servable))
                .select((models::name, models::created_at, users::username.nullable()))
                .order(models::name.asc())
                .into_boxed();
            if let Some(user) = filter.usable_by {
                query = query.filter(usable_by!(user));
            }
            if let Some(names) = &filter.names {
                query = query.filter(models::name.eq_any(names.iter().map(ModelName::as_str)));
            }
            let rows: Vec<(String, DateTime<Utc>, Option<String>)> = query.load(&mut conn).await?;
            Ok(rows
                .into_iter()
                .map(|(name, created_at, owner)| {
                    Ok(ServableModel {
                        name: ModelName::parse(name).map_err(|e| corrupt("models.name", e))?,
                        created_at,
                        owner,
                    })
                })
                .collect::<Result<_, RepoError>>()?)
        })
        .await
    }

    async fn update_version(
        &self,
        model: &ModelName,
        version: VersionNumber,
        patch: VersionPatch,
    ) -> Result<ModelVersion, RepoError> {
        observe("update_version", async {
            let mut conn = self.conn().await?;
            crate::versions::update(&mut conn, model, version, patch, &self.secrets).await
        })
        .await
    }

    async fn delete_version(
        &self,
        model: &ModelName,
        version: VersionNumber,
    ) -> Result<(), RepoError> {
        observe("delete_version", async {
            let mut conn = self.conn().await?;
            crate::versions::delete(&mut conn, model, version).await
        })
        .await
    }

    async fn set_alias(
        &self,
        model: &ModelName,
        alias: &AliasName,
        split: &AliasSplit,
    ) -> Result<Alias, RepoError> {
        observe("set_alias", async {
            let mut conn = self.conn().await?;
            crate::aliases::set(&mut conn, model, alias, split).await
        })
        .await
    }

    async fn resolve_alias(
        &self,
        model: &ModelName,
        alias: &AliasName,
    ) -> Result<ResolvedAlias, RepoError> {
        observe("resolve_alias", async {
            let mut conn = self.conn().await?;
            crate::aliases::resolve(&mut conn, model, alias).await
        })
        .await
    }

    async fn delete_alias(&self, model: &ModelName, alias: &AliasName) -> Result<(), RepoError> {
        observe("delete_alias", async {
            let mut conn = self.conn().await?;
            crate::aliases::delete(&mut conn, model, alias).await
        })
        .await
    }

    async fn grant(
        &self,
        model: &ModelName,
        username: &Username,
    ) -> Result<(Grant, bool), RepoError> {
        observe("grant", async {
            let mut conn = self.conn().await?;
            crate::grants::grant(&mut conn, model, username).await
        })
        .await
    }

    async fn revoke_grant(&self, model: &ModelName, username: &Username) -> Result<(), RepoError> {
        observe("revoke_grant", async {
            let mut conn = self.conn().await?;
            crate::grants::revoke(&mut conn, model, username).await
        })
        .await
    }

    async fn list_grants(&self, model: &ModelName) -> Result<Vec<Grant>, RepoError> {
        observe("list_grants", async {
            let mut conn = self.conn().await?;
            crate::grants::list(&mut conn, model).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_and_the_escape_character_are_taken_literally() {
        assert_eq!(contains_pattern("50%"), "%50\\%%");
        assert_eq!(contains_pattern("a_b\\c"), "%a\\_b\\\\c%");
        assert_eq!(contains_pattern("llama"), "%llama%");
    }
}
