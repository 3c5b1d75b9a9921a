//! Grants of private models to users (`model_grants`), for [`crate::PgRegistryRepository`].

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use maas_domain::RepoError;
use maas_domain::model::Grant;
use maas_domain::values::{ModelName, Username};
use uuid::Uuid;

use crate::error::{Failure, corrupt};
use crate::repo::model_not_found;
use crate::schema::{model_grants, models, users};

async fn model_id(conn: &mut AsyncPgConnection, model: &ModelName) -> Result<Uuid, Failure> {
    let id = models::table
        .filter(models::name.eq(model.as_str()))
        .select(models::id)
        .first(conn)
        .await
        .optional()?;
    Ok(id.ok_or_else(|| model_not_found(model))?)
}

fn username(raw: String) -> Result<Username, Failure> {
    Ok(Username::parse(raw).map_err(|e| corrupt("users.username", e))?)
}

async fn user_id(conn: &mut AsyncPgConnection, username: &Username) -> Result<Uuid, Failure> {
    let id = users::table
        .filter(users::username.eq(username.as_str()))
        .select(users::id)
        .first(conn)
        .await
        .optional()?;
    Ok(id.ok_or_else(|| RepoError::NotFound(format!("user '{username}' not found")))?)
}

/// Grants `model` to `username`; a second grant keeps the first one's time.
pub(crate) async fn grant(
    conn: &mut AsyncPgConnection,
    model: &ModelName,
    username: &Username,
) -> Result<(Grant, bool), Failure> {
    let id = model_id(conn, model).await?;
    let user_id = user_id(conn, username).await?;
    let inserted = diesel::insert_into(model_grants::table)
        .values((
            model_grants::model_id.eq(id),
            model_grants::user_id.eq(user_id),
        ))
        .on_conflict_do_nothing()
        .returning(model_grants::granted_at)
        .get_result::<DateTime<Utc>>(conn)
        .await
        .optional();
    let (granted_at, created) = match inserted {
        // Deleted since it was looked up.
        Err(DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)) => {
            return Err(RepoError::NotFound(format!("user '{username}' not found")).into());
        }
        Ok(Some(at)) => (at, true),
        Ok(None) => {
            let at = model_grants::table
                .filter(model_grants::model_id.eq(id))
                .filter(model_grants::user_id.eq(user_id))
                .select(model_grants::granted_at)
                .first(conn)
                .await?;
            (at, false)
        }
        Err(e) => return Err(e.into()),
    };
    Ok((
        Grant {
            model: model.clone(),
            user_id,
            username: username.clone(),
            granted_at,
        },
        created,
    ))
}

/// Takes a grant back.
pub(crate) async fn revoke(
    conn: &mut AsyncPgConnection,
    model: &ModelName,
    username: &Username,
) -> Result<(), Failure> {
    let id = model_id(conn, model).await?;
    let user_id = user_id(conn, username).await?;
    let deleted = diesel::delete(
        model_grants::table
            .filter(model_grants::model_id.eq(id))
            .filter(model_grants::user_id.eq(user_id)),
    )
    .execute(conn)
    .await?;
    if deleted == 0 {
        return Err(
            RepoError::NotFound(format!("model '{model}' is not granted to '{username}'")).into(),
        );
    }
    Ok(())
}

/// A model's grants, by username.
pub(crate) async fn list(
    conn: &mut AsyncPgConnection,
    model: &ModelName,
) -> Result<Vec<Grant>, Failure> {
    let id = model_id(conn, model).await?;
    let rows: Vec<(Uuid, String, DateTime<Utc>)> = model_grants::table
        .inner_join(users::table)
        .filter(model_grants::model_id.eq(id))
        .select((users::id, users::username, model_grants::granted_at))
        .order(users::username.asc())
        .load(conn)
        .await?;
    rows.into_iter()
        .map(|(user_id, name, granted_at)| {
            Ok(Grant {
                model: model.clone(),
                user_id,
                username: username(name)?,
                granted_at,
            })
        })
        .collect()
}
