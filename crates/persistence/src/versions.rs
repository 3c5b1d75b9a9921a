//! Writes of model versions (`model_versions`), for [`crate::PgRegistryRepository`]: each under
//! the model's row lock, so that version numbers stay gapless and `latest_version` settled.

use diesel::dsl::{max, now};
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use maas_domain::RepoError;
use maas_domain::model::{ModelVersion, NewVersion, VersionPatch};
use maas_domain::values::{ModelName, VersionNumber};
use uuid::Uuid;

use crate::error::Failure;
use crate::repo::{missing, model_not_found, version_not_found};
use crate::rows::{NewVersionRow, VersionChanges, VersionRow};
use crate::schema::{model_versions, models};
use crate::secrets::SecretKeys;

/// Adds the next version of `model`, its credentials sealed by `secrets`.
pub(crate) async fn create(
    conn: &mut AsyncPgConnection,
    model: &ModelName,
    mut new: NewVersion,
    secrets: &SecretKeys,
) -> Result<ModelVersion, Failure> {
    let endpoints = std::mem::take(&mut new.endpoints);
    let endpoints = crate::endpoints::write(endpoints.resolve(&[]), secrets)?;
    let created = conn
        .transaction::<_, DieselError, _>(async |conn| {
            // Takes the model's row lock until commit, so concurrent creates queue up here; a
            // rollback undoes the increment, so numbers stay gapless.
            let (model_id, number): (Uuid, i32) =
                diesel::update(models::table.filter(models::name.eq(model.as_str())))
                    .set((
                        models::next_version.eq(models::next_version + 1),
                        models::latest_version.eq(models::next_version.nullable()),
                        models::updated_at.eq(now),
                    ))
                    .returning((models::id, models::next_version - 1))
                    .get_result(conn)
                    .await?;
            diesel::insert_into(model_versions::table)
                .values(NewVersionRow::new(model_id, number, new, endpoints))
                .returning(VersionRow::as_returning())
                .get_result(conn)
                .await
        })
        .await;
    match created {
        Err(DieselError::NotFound) => Err(model_not_found(model).into()),
        other => Ok(other?.into_domain(model)?),
    }
}

/// Applies `patch` to one version, new credentials sealed by `secrets`. A change of endpoints
/// reads the stored ones first (under the row's lock): a credential not given is kept.
pub(crate) async fn update(
    conn: &mut AsyncPgConnection,
    model: &ModelName,
    version: VersionNumber,
    patch: VersionPatch,
    secrets: &SecretKeys,
) -> Result<ModelVersion, Failure> {
    let mut changes = VersionChanges::new(&patch);
    let Some(endpoints) = patch.endpoints else {
        return apply(conn, model, version, changes).await;
    };
    conn.transaction::<_, Failure, _>(async |conn| {
        let model_id = models::table
            .filter(models::name.eq(model.as_str()))
            .select(models::id);
        let stored: Option<serde_json::Value> = model_versions::table
            .filter(model_versions::model_id.eq_any(model_id))
            .filter(model_versions::version.eq(version.get()))
            .select(model_versions::endpoints)
            .for_update()
            .first(conn)
            .await
            .optional()?;
        let Some(stored) = stored else {
            return Err(missing(conn, model, version_not_found(model, version)).await);
        };
        let current: Vec<_> = crate::endpoints::read(stored)?
            .into_iter()
            .map(|(e, sealed)| (e.url, e.weight, sealed))
            .collect();
        let resolved = endpoints.apply(&current).map_err(RepoError::Invalid)?;
        changes.endpoints = Some(crate::endpoints::write(resolved, secrets)?);
        apply(conn, model, version, changes).await
    })
    .await
}

/// Sets `changes` on one version.
async fn apply(
    conn: &mut AsyncPgConnection,
    model: &ModelName,
    version: VersionNumber,
    changes: VersionChanges,
) -> Result<ModelVersion, Failure> {
    let model_id = models::table
        .filter(models::name.eq(model.as_str()))
        .select(models::id);
    let row = diesel::update(
        model_versions::table
            .filter(model_versions::model_id.eq_any(model_id))
            .filter(model_versions::version.eq(version.get())),
    )
    .set((changes, model_versions::updated_at.eq(now)))
    .returning(VersionRow::as_returning())
    .get_result(conn)
    .await
    .optional()?;
    match row {
        Some(row) => Ok(row.into_domain(model)?),
        None => Err(missing(conn, model, version_not_found(model, version)).await),
    }
}

/// Deletes one version (its aliases go with it) and recomputes the model's `latest_version`.
pub(crate) async fn delete(
    conn: &mut AsyncPgConnection,
    model: &ModelName,
    version: VersionNumber,
) -> Result<(), Failure> {
    conn.transaction::<_, Failure, _>(async |conn| {
        // Lock the model first, as create does, so the two never interleave and latest_version
        // is computed over a settled set of versions.
        let model_id: Uuid = models::table
            .filter(models::name.eq(model.as_str()))
            .select(models::id)
            .for_update()
            .first(conn)
            .await
            .optional()?
            .ok_or_else(|| model_not_found(model))?;
        // Aliases on the version go with it through ON DELETE CASCADE.
        let deleted = diesel::delete(
            model_versions::table
                .filter(model_versions::model_id.eq(model_id))
                .filter(model_versions::version.eq(version.get())),
        )
        .execute(conn)
        .await?;
        if deleted == 0 {
            return Err(version_not_found(model, version).into());
        }
        // next_version stays as it is: a deleted number is never handed out again.
        let highest_left = model_versions::table
            .filter(model_versions::model_id.eq(model_id))
            .select(max(model_versions::version))
            .single_value();
        diesel::update(models::table.find(model_id))
            .set((
                models::latest_version.eq(highest_left),
                models::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
        Ok(())
    })
    .await
}
