//! Aliases (`model_aliases`), for [`crate::PgRegistryRepository`].

use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::Text;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use maas_domain::RepoError;
use maas_domain::model::{Alias, ModelVersion};
use maas_domain::values::{AliasName, ModelName, VersionNumber};

use crate::error::Failure;
use crate::repo::{missing, version_not_found};
use crate::rows::VersionRow;
use crate::schema::{model_aliases, model_versions, models};

fn alias_not_found(model: &ModelName, alias: &AliasName) -> RepoError {
    RepoError::NotFound(format!("alias '{alias}' of model '{model}' not found"))
}

/// Points `alias` at `version`, creating it or moving it.
pub(crate) async fn set(
    conn: &mut AsyncPgConnection,
    model: &ModelName,
    alias: &AliasName,
    version: VersionNumber,
) -> Result<Alias, Failure> {
    // One statement: insert or move the alias to the version found by name and number; no row
    // when either is missing.
    let target = model_versions::table
        .inner_join(models::table)
        .filter(models::name.eq(model.as_str()))
        .filter(model_versions::version.eq(version.get()))
        .select((
            model_versions::model_id,
            alias.as_str().into_sql::<Text>(),
            model_versions::id,
        ));
    let upserted = diesel::insert_into(model_aliases::table)
        .values(target)
        .into_columns((
            model_aliases::model_id,
            model_aliases::alias,
            model_aliases::version_id,
        ))
        .on_conflict((model_aliases::model_id, model_aliases::alias))
        .do_update()
        .set((
            model_aliases::version_id.eq(excluded(model_aliases::version_id)),
            model_aliases::updated_at.eq(now),
        ))
        .returning(model_aliases::updated_at)
        .get_result::<DateTime<Utc>>(conn)
        .await
        .optional();
    match upserted {
        Ok(Some(updated_at)) => Ok(Alias {
            model: model.clone(),
            alias: alias.clone(),
            version,
            updated_at,
        }),
        // The version was deleted between finding it and inserting the alias.
        Err(DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)) => {
            Err(version_not_found(model, version).into())
        }
        Ok(None) => Err(missing(conn, model, version_not_found(model, version)).await),
        Err(e) => Err(e.into()),
    }
}

/// The version `alias` points at.
pub(crate) async fn resolve(
    conn: &mut AsyncPgConnection,
    model: &ModelName,
    alias: &AliasName,
) -> Result<ModelVersion, Failure> {
    let row = model_aliases::table
        .inner_join(model_versions::table.inner_join(models::table))
        .filter(models::name.eq(model.as_str()))
        .filter(model_aliases::model_id.eq(models::id))
        .filter(model_aliases::alias.eq(alias.as_str()))
        .select(VersionRow::as_select())
        .first(conn)
        .await
        .optional()?;
    match row {
        Some(row) => Ok(row.into_domain(model)?),
        None => Err(missing(conn, model, alias_not_found(model, alias)).await),
    }
}

/// Deletes `alias`.
pub(crate) async fn delete(
    conn: &mut AsyncPgConnection,
    model: &ModelName,
    alias: &AliasName,
) -> Result<(), Failure> {
    let model_id = models::table
        .filter(models::name.eq(model.as_str()))
        .select(models::id);
    let deleted = diesel::delete(
        model_aliases::table
            .filter(model_aliases::model_id.eq_any(model_id))
            .filter(model_aliases::alias.eq(alias.as_str())),
    )
    .execute(conn)
    .await?;
    if deleted == 0 {
        return Err(missing(conn, model, alias_not_found(model, alias)).await);
    }
    Ok(())
}
