//! Aliases (`model_aliases`, and their splits in `model_alias_versions`), for
//! [`crate::PgRegistryRepository`].

use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use maas_domain::RepoError;
use maas_domain::alias::{AliasSplit, ResolvedAlias, Weight, WeightedVersion};
use maas_domain::model::Alias;
use maas_domain::values::{AliasName, ModelName};
use uuid::Uuid;

use crate::error::{Failure, corrupt};
use crate::repo::{missing, model_not_found, version_not_found};
use crate::rows::VersionRow;
use crate::schema::{model_alias_versions, model_aliases, model_versions, models};

fn alias_not_found(model: &ModelName, alias: &AliasName) -> RepoError {
    RepoError::NotFound(format!("alias '{alias}' of model '{model}' not found"))
}

/// Creates `alias` with `split`, or replaces its whole split, in one transaction: a version
/// that does not exist (the lowest such) fails the whole write.
pub(crate) async fn set(
    conn: &mut AsyncPgConnection,
    model: &ModelName,
    alias: &AliasName,
    split: &AliasSplit,
) -> Result<Alias, Failure> {
    let numbers: Vec<i32> = split.targets().iter().map(|t| t.version.get()).collect();
    let written = conn
        .transaction::<_, Failure, _>(async |conn| {
            // The model's row in share mode until commit: a version is deleted only under its
            // update lock, so the versions found below stay until the split is written.
            let model_id: Uuid = models::table
                .filter(models::name.eq(model.as_str()))
                .select(models::id)
                .for_share()
                .first(conn)
                .await
                .optional()?
                .ok_or_else(|| model_not_found(model))?;
            let found: Vec<(i32, Uuid)> = model_versions::table
                .filter(model_versions::model_id.eq(model_id))
                .filter(model_versions::version.eq_any(&numbers))
                .select((model_versions::version, model_versions::id))
                .load(conn)
                .await?;
            let id_of = |number: i32| found.iter().find(|(n, _)| *n == number).map(|(_, id)| *id);
            let mut rows = Vec::with_capacity(numbers.len());
            let mut ids = Vec::with_capacity(numbers.len());
            for target in split.targets() {
                let id = id_of(target.version.get())
                    .ok_or_else(|| version_not_found(model, target.version))?;
                ids.push(id);
                rows.push((
                    model_alias_versions::model_id.eq(model_id),
                    model_alias_versions::alias.eq(alias.as_str()),
                    model_alias_versions::version_id.eq(id),
                    model_alias_versions::weight.eq(i32::from(target.weight.get())),
                ));
            }
            let primary = id_of(split.primary().get());
            let updated_at: DateTime<Utc> = diesel::insert_into(model_aliases::table)
                .values((
                    model_aliases::model_id.eq(model_id),
                    model_aliases::alias.eq(alias.as_str()),
                    model_aliases::version_id.eq(primary),
                ))
                .on_conflict((model_aliases::model_id, model_aliases::alias))
                .do_update()
                .set((
                    model_aliases::version_id.eq(excluded(model_aliases::version_id)),
                    model_aliases::updated_at.eq(now),
                ))
                .returning(model_aliases::updated_at)
                .get_result(conn)
                .await?;
            // The new split's rows first, then the old rows not in it: the alias always keeps
            // a row, so the trigger that deletes an alias with its last version leaves it be.
            diesel::insert_into(model_alias_versions::table)
                .values(rows)
                .on_conflict((
                    model_alias_versions::model_id,
                    model_alias_versions::alias,
                    model_alias_versions::version_id,
                ))
                .do_update()
                .set(model_alias_versions::weight.eq(excluded(model_alias_versions::weight)))
                .execute(conn)
                .await?;
            diesel::delete(
                model_alias_versions::table
                    .filter(model_alias_versions::model_id.eq(model_id))
                    .filter(model_alias_versions::alias.eq(alias.as_str()))
                    .filter(model_alias_versions::version_id.ne_all(ids)),
            )
            .execute(conn)
            .await?;
            Ok(updated_at)
        })
        .await;
    match written {
        Ok(updated_at) => Ok(Alias {
            model: model.clone(),
            alias: alias.clone(),
            versions: split.clone(),
            updated_at,
        }),
        // Not expected under the share lock; kept so that a version gone anyway is a 404.
        Err(Failure::Db(DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _))) => {
            Err(missing(conn, model, version_not_found(model, split.primary())).await)
        }
        Err(e) => Err(e),
    }
}

/// The versions `alias` points at, with their weights, in ascending version order.
pub(crate) async fn resolve(
    conn: &mut AsyncPgConnection,
    model: &ModelName,
    alias: &AliasName,
) -> Result<ResolvedAlias, Failure> {
    let rows: Vec<(VersionRow, i32, DateTime<Utc>)> = model_alias_versions::table
        .inner_join(model_versions::table.inner_join(models::table))
        .inner_join(
            model_aliases::table.on(model_aliases::model_id
                .eq(model_alias_versions::model_id)
                .and(model_aliases::alias.eq(model_alias_versions::alias))),
        )
        .filter(models::name.eq(model.as_str()))
        .filter(model_alias_versions::model_id.eq(models::id))
        .filter(model_alias_versions::alias.eq(alias.as_str()))
        .order(model_versions::version.asc())
        .select((
            VersionRow::as_select(),
            model_alias_versions::weight,
            model_aliases::updated_at,
        ))
        .load(conn)
        .await?;
    let Some(updated_at) = <[_]>::first(&rows).map(|row| row.2) else {
        return Err(missing(conn, model, alias_not_found(model, alias)).await);
    };
    let mut versions = Vec::with_capacity(rows.len());
    for (row, weight, _) in rows {
        versions.push(WeightedVersion {
            version: row.into_domain(model)?,
            weight: Weight::parse_as("weight", i64::from(weight))
                .map_err(|e| corrupt("model_alias_versions.weight", e.message))?,
        });
    }
    Ok(ResolvedAlias {
        model: model.clone(),
        alias: alias.clone(),
        versions,
        updated_at: Some(updated_at),
    })
}

/// Deletes `alias` (its split goes with it).
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
