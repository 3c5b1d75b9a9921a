//! [`PgIdentityRepository`]: users and API keys over PostgreSQL.
//!
//! Only the SHA-256 of a key reaches the database; nothing here ever sees a plaintext key.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Array, BigInt, Nullable, Timestamptz};
use diesel_async::{AsyncConnection, RunQueryDsl};
use maas_domain::RepoError;
use maas_domain::identity::{
    ApiKey, KeyHash, KeyRecord, ModelAllowlist, NewApiKey, NewUser, Role, TokenQuotas,
    TokenQuotasPatch, User, UserPatch,
};
use maas_domain::ports::IdentityRepository;
use maas_domain::values::{PageLimit, Username};
use uuid::Uuid;

use crate::error::{Failure, observe};
use crate::pool::{PgPool, PooledConnection};
use crate::rows::{
    ApiKeyRow, KeyQuotaChanges, NewApiKeyRow, NewUserRow, UserChanges, UserRow, key_hash,
    models_column, rows_for,
};
use crate::schema::{api_keys, users};

/// Key of the transaction-level advisory lock that serializes admin bootstraps across replicas
/// ("maasboot" in ASCII).
const BOOTSTRAP_LOCK_KEY: i64 = 0x6d61_6173_626f_6f74;

/// Users and API keys in PostgreSQL. Cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct PgIdentityRepository {
    pool: PgPool,
}

impl PgIdentityRepository {
    /// A repository running its queries through `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// A pooled connection; waiting longer than the pool's connection timeout is a failure.
    async fn conn(&self) -> Result<PooledConnection<'_>, Failure> {
        Ok(self.pool.get().await?)
    }
}

fn user_not_found(username: &Username) -> RepoError {
    RepoError::NotFound(format!("user '{username}' not found"))
}

fn user_id_not_found(id: Uuid) -> RepoError {
    RepoError::NotFound(format!("user {id} not found"))
}

fn key_not_found(id: Uuid) -> RepoError {
    RepoError::NotFound(format!("API key {id} not found"))
}

fn user_exists(username: &Username) -> RepoError {
    RepoError::Conflict(format!("user '{username}' already exists"))
}

fn too_many_keys(max: u32) -> RepoError {
    RepoError::Conflict(format!(
        "the user already has {max} active API keys, the most allowed \
         (auth.max_keys_per_user); revoke one first"
    ))
}

/// The message never shows the hash: it is all there is to know about a key.
fn key_hash_taken() -> RepoError {
    RepoError::Conflict("an API key with the same hash is already stored".to_owned())
}

/// The outcome of inserting a key for `user_id`, with its constraint violations named.
fn inserted_key(
    user_id: Uuid,
    inserted: Result<ApiKeyRow, DieselError>,
) -> Result<ApiKey, Failure> {
    match inserted {
        Err(DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)) => {
            Err(user_id_not_found(user_id).into())
        }
        Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
            Err(key_hash_taken().into())
        }
        other => Ok(other?.try_into()?),
    }
}

/// One `(id, time)` per key, holding its latest time, in id order: duplicates in one `UPDATE …
/// FROM` would make Postgres pick any of their times, and sorted ids help lock rows in one order.
fn latest_use_per_key(used: &[(Uuid, DateTime<Utc>)]) -> (Vec<Uuid>, Vec<DateTime<Utc>>) {
    let mut latest: BTreeMap<Uuid, DateTime<Utc>> = BTreeMap::new();
    for &(id, at) in used {
        latest
            .entry(id)
            .and_modify(|seen| *seen = (*seen).max(at))
            .or_insert(at);
    }
    latest.into_iter().unzip()
}

/// Sets `last_used_at` to the later of its value and the batch's time, for every key of the batch
/// in one statement. The sub-select locks the rows in id order (`FOR UPDATE` applies after
/// `ORDER BY`), so replicas flushing overlapping batches at once queue up instead of deadlocking.
/// `GREATEST` ignores NULL, so a key never used takes the batch's time.
const TOUCH_KEYS_SQL: &str = "\
UPDATE api_keys SET last_used_at = GREATEST(api_keys.last_used_at, v.at) \
FROM (SELECT k.id, u.at \
      FROM api_keys k JOIN unnest($1::uuid[], $2::timestamptz[]) AS u(id, at) ON k.id = u.id \
      ORDER BY k.id FOR UPDATE OF k) AS v \
WHERE api_keys.id = v.id";

#[async_trait]
impl IdentityRepository for PgIdentityRepository {
    async fn create_user(&self, new: NewUser) -> Result<User, RepoError> {
        observe("create_user", async {
            let mut conn = self.conn().await?;
            let username = new.username.clone();
            let inserted = diesel::insert_into(users::table)
                .values(NewUserRow::try_from(new)?)
                .returning(UserRow::as_returning())
                .get_result(&mut conn)
                .await;
            match inserted {
                Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                    Err(user_exists(&username).into())
                }
                other => Ok(other?.try_into()?),
            }
        })
        .await
    }

    async fn get_user(&self, username: &Username) -> Result<User, RepoError> {
        observe("get_user", async {
            let mut conn = self.conn().await?;
            let row = users::table
                .filter(users::username.eq(username.as_str()))
                .select(UserRow::as_select())
                .first(&mut conn)
                .await
                .optional()?;
            Ok(row.ok_or_else(|| user_not_found(username))?.try_into()?)
        })
        .await
    }

    async fn get_user_by_id(&self, id: Uuid) -> Result<User, RepoError> {
        observe("get_user_by_id", async {
            let mut conn = self.conn().await?;
            let row = users::table
                .find(id)
                .select(UserRow::as_select())
                .first(&mut conn)
                .await
                .optional()?;
            Ok(row.ok_or_else(|| user_id_not_found(id))?.try_into()?)
        })
        .await
    }

    async fn list_users(
        &self,
        after: Option<&Username>,
        limit: PageLimit,
    ) -> Result<Vec<User>, RepoError> {
        observe("list_users", async {
            let mut conn = self.conn().await?;
            let mut query = users::table
                .select(UserRow::as_select())
                .order(users::username.asc())
                .limit(rows_for(limit))
                .into_boxed();
            if let Some(after) = after {
                query = query.filter(users::username.gt(after.as_str()));
            }
            let rows = query.load(&mut conn).await?;
            Ok(rows
                .into_iter()
                .map(User::try_from)
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn update_user(&self, username: &Username, patch: UserPatch) -> Result<User, RepoError> {
        let Some(changes) = UserChanges::of(patch)? else {
            return self.get_user(username).await;
        };
        observe("update_user", async {
            let mut conn = self.conn().await?;
            conn.transaction::<_, Failure, _>(async |conn| {
                // The same lock as bootstrapping: changes to the set of admins take turns, so
                // two admins demoting each other at once cannot both succeed.
                diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
                    .bind::<BigInt, _>(BOOTSTRAP_LOCK_KEY)
                    .execute(conn)
                    .await?;
                let enabled_admins = async |conn: &mut _| {
                    users::table
                        .filter(users::role.eq(Role::Admin.as_str()))
                        .filter(users::disabled.eq(false))
                        .count()
                        .get_result::<i64>(conn)
                        .await
                };
                let before = enabled_admins(conn).await?;
                let row =
                    diesel::update(users::table.filter(users::username.eq(username.as_str())))
                        .set(changes)
                        .returning(UserRow::as_returning())
                        .get_result(conn)
                        .await
                        .optional()?;
                let row = row.ok_or_else(|| user_not_found(username))?;
                if before > 0 && enabled_admins(conn).await? == 0 {
                    return Err(RepoError::Conflict(format!(
                        "'{username}' is the last enabled admin: it cannot be demoted or disabled"
                    ))
                    .into());
                }
                Ok(row.try_into()?)
            })
            .await
        })
        .await
    }

    async fn create_key(
        &self,
        new: NewApiKey,
        max_active: Option<u32>,
    ) -> Result<ApiKey, RepoError> {
        observe("create_key", async {
            let mut conn = self.conn().await?;
            let user_id = new.user_id;
            let row = NewApiKeyRow::held_by(user_id, new)?;
            conn.transaction::<_, Failure, _>(async |conn| {
                if let Some(max) = max_active {
                    // The user's row lock, held until commit: concurrent creations for one user
                    // take turns here, and each counts what the ones before it committed.
                    let locked: Option<Uuid> = users::table
                        .find(user_id)
                        .select(users::id)
                        .for_update()
                        .first(conn)
                        .await
                        .optional()?;
                    if locked.is_none() {
                        return Err(user_id_not_found(user_id).into());
                    }
                    let active: i64 = api_keys::table
                        .filter(api_keys::user_id.eq(user_id))
                        .filter(api_keys::revoked_at.is_null())
                        .filter(
                            api_keys::expires_at
                                .is_null()
                                .or(api_keys::expires_at.gt(diesel::dsl::now)),
                        )
                        .count()
                        .get_result(conn)
                        .await?;
                    if active >= i64::from(max) {
                        return Err(too_many_keys(max).into());
                    }
                }
                let inserted = diesel::insert_into(api_keys::table)
                    .values(row)
                    .returning(ApiKeyRow::as_returning())
                    .get_result(conn)
                    .await;
                inserted_key(user_id, inserted)
            })
            .await
        })
        .await
    }

    async fn set_key_models(
        &self,
        id: Uuid,
        models: Option<ModelAllowlist>,
    ) -> Result<(ApiKey, KeyHash), RepoError> {
        observe("set_key_models", async {
            let mut conn = self.conn().await?;
            let row: Option<(ApiKeyRow, Vec<u8>)> = diesel::update(api_keys::table.find(id))
                .set(api_keys::models.eq(models_column(models.as_ref())))
                .returning((ApiKeyRow::as_returning(), api_keys::key_hash))
                .get_result(&mut conn)
                .await
                .optional()?;
            let (row, hash) = row.ok_or_else(|| key_not_found(id))?;
            Ok((row.try_into()?, key_hash(&hash)?))
        })
        .await
    }

    async fn set_key_quotas(
        &self,
        id: Uuid,
        patch: TokenQuotasPatch,
    ) -> Result<(ApiKey, KeyHash), RepoError> {
        observe("set_key_quotas", async {
            let mut conn = self.conn().await?;
            let row: Option<(ApiKeyRow, Vec<u8>)> = match KeyQuotaChanges::of(patch)? {
                Some(changes) => {
                    diesel::update(api_keys::table.find(id))
                        .set(changes)
                        .returning((ApiKeyRow::as_returning(), api_keys::key_hash))
                        .get_result(&mut conn)
                        .await
                }
                // diesel refuses an empty SET: nothing changes, the key is read.
                None => {
                    api_keys::table
                        .find(id)
                        .select((ApiKeyRow::as_select(), api_keys::key_hash))
                        .first(&mut conn)
                        .await
                }
            }
            .optional()?;
            let (row, hash) = row.ok_or_else(|| key_not_found(id))?;
            Ok((row.try_into()?, key_hash(&hash)?))
        })
        .await
    }

    async fn get_key(&self, id: Uuid) -> Result<ApiKey, RepoError> {
        observe("get_key", async {
            let mut conn = self.conn().await?;
            let row = api_keys::table
                .find(id)
                .select(ApiKeyRow::as_select())
                .first(&mut conn)
                .await
                .optional()?;
            Ok(row.ok_or_else(|| key_not_found(id))?.try_into()?)
        })
        .await
    }

    async fn list_keys(&self, user_id: Uuid) -> Result<Vec<ApiKey>, RepoError> {
        observe("list_keys", async {
            let mut conn = self.conn().await?;
            let rows = api_keys::table
                .filter(api_keys::user_id.eq(user_id))
                .select(ApiKeyRow::as_select())
                // The id only breaks ties, so the order is stable between calls.
                .order((api_keys::created_at.desc(), api_keys::id.desc()))
                .load(&mut conn)
                .await?;
            Ok(rows
                .into_iter()
                .map(ApiKey::try_from)
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn revoke_key(&self, id: Uuid) -> Result<(ApiKey, KeyHash), RepoError> {
        observe("revoke_key", async {
            let mut conn = self.conn().await?;
            // COALESCE keeps the first revocation time when a key is revoked again.
            let row: Option<(ApiKeyRow, Vec<u8>)> = diesel::update(api_keys::table.find(id))
                .set(
                    api_keys::revoked_at
                        .eq(sql::<Nullable<Timestamptz>>("COALESCE(revoked_at, now())")),
                )
                .returning((ApiKeyRow::as_returning(), api_keys::key_hash))
                .get_result(&mut conn)
                .await
                .optional()?;
            let (row, hash) = row.ok_or_else(|| key_not_found(id))?;
            Ok((row.try_into()?, key_hash(&hash)?))
        })
        .await
    }

    async fn key_hashes_of_user(&self, user_id: Uuid) -> Result<Vec<KeyHash>, RepoError> {
        observe("key_hashes_of_user", async {
            let mut conn = self.conn().await?;
            let hashes: Vec<Vec<u8>> = api_keys::table
                .filter(api_keys::user_id.eq(user_id))
                .select(api_keys::key_hash)
                .load(&mut conn)
                .await?;
            Ok(hashes
                .iter()
                .map(|h| key_hash(h))
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn find_key(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, RepoError> {
        observe("find_key", async {
            let mut conn = self.conn().await?;
            // One round trip: this runs on every authentication the cache misses.
            let row: Option<(ApiKeyRow, UserRow)> = api_keys::table
                .inner_join(users::table)
                .filter(api_keys::key_hash.eq(hash.as_bytes().as_slice()))
                .select((ApiKeyRow::as_select(), UserRow::as_select()))
                .first(&mut conn)
                .await
                .optional()?;
            let Some((key, user)) = row else {
                return Ok(None);
            };
            Ok(Some(KeyRecord {
                key: key.try_into()?,
                user: user.try_into()?,
            }))
        })
        .await
    }

    async fn touch_keys(&self, used: &[(Uuid, DateTime<Utc>)]) -> Result<(), RepoError> {
        if used.is_empty() {
            return Ok(());
        }
        let (ids, times) = latest_use_per_key(used);
        observe("touch_keys", async {
            let mut conn = self.conn().await?;
            diesel::sql_query(TOUCH_KEYS_SQL)
                .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
                .bind::<Array<Timestamptz>, _>(times)
                .execute(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    async fn bootstrap_admin(
        &self,
        username: &Username,
        key: NewApiKey,
    ) -> Result<Option<User>, RepoError> {
        observe("bootstrap_admin", async {
            let mut conn = self.conn().await?;
            conn.transaction::<_, Failure, _>(async |conn| {
                // Held until commit: replicas starting together take turns, and each sees
                // whether an earlier one already created the admin.
                diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
                    .bind::<BigInt, _>(BOOTSTRAP_LOCK_KEY)
                    .execute(conn)
                    .await?;
                let admin_exists: bool = diesel::select(diesel::dsl::exists(
                    users::table.filter(users::role.eq(Role::Admin.as_str())),
                ))
                .get_result(conn)
                .await?;
                if admin_exists {
                    return Ok(None);
                }
                let new = NewUser {
                    username: username.clone(),
                    role: Role::Admin,
                    rate_limit_rpm: None,
                    tokens: TokenQuotas::default(),
                };
                let inserted = diesel::insert_into(users::table)
                    .values(NewUserRow::try_from(new)?)
                    .returning(UserRow::as_returning())
                    .get_result(conn)
                    .await;
                let user: User = match inserted {
                    // No admin exists, so the name is held by a member.
                    Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                        return Err(RepoError::Conflict(format!(
                            "user '{username}' already exists and is not an admin"
                        ))
                        .into());
                    }
                    other => other?.try_into()?,
                };
                let inserted = diesel::insert_into(api_keys::table)
                    .values(NewApiKeyRow::held_by(user.id, key)?)
                    .returning(ApiKeyRow::as_returning())
                    .get_result(conn)
                    .await;
                inserted_key(user.id, inserted)?;
                Ok(Some(user))
            })
            .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).single().expect("valid time")
    }

    #[test]
    fn a_batch_keeps_the_latest_time_of_each_key_in_id_order() {
        let (a, b) = (Uuid::from_u128(2), Uuid::from_u128(1));
        let (ids, times) = latest_use_per_key(&[(a, at(10)), (b, at(5)), (a, at(30)), (a, at(20))]);
        assert_eq!(ids, [b, a]);
        assert_eq!(times, [at(5), at(30)]);
    }
}
