//! `/api/v1/keys`: create, list and revoke API keys.

use actix_web::{HttpRequest, HttpResponse, web};
use maas_domain::ValidationError;
use uuid::Uuid;

use crate::auth::Actor;
use crate::dto::{CreateKey, CreatedKeyResponse, KeyList, KeyResponse, ListKeysQuery, UpdateKey};
use crate::error::{ApiError, Problem};
use crate::extract::{Json, parse_query};
use crate::state::AppState;

fn uuid_field(field: &str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ValidationError::new(field, "must be a UUID").into())
}

/// Creates a key; the response is the only place the key itself ever appears.
#[utoipa::path(post, path = "/api/v1/keys", tag = "identity", request_body = CreateKey,
    responses(
        (status = 201, description = "Created; `key` is shown this once", body = CreatedKeyResponse),
        (status = 403, description = "A member set `user_id`, `rate_limit_rpm`, `tpm` or `monthly_tokens`, or a key with an allowlist asked for models beyond it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The user holds `auth.max_keys_per_user` active keys", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    state: web::Data<AppState>,
    actor: Actor,
    body: Json<CreateKey>,
) -> Result<HttpResponse, ApiError> {
    let request = body.0.into_domain()?;
    let created = state
        .accounts
        .create_key(&actor.0, request, chrono::Utc::now())
        .await?;
    Ok(HttpResponse::Created()
        .insert_header(("cache-control", "no-store"))
        .json(CreatedKeyResponse {
            key: created.plaintext.expose().to_owned(),
            details: KeyResponse::from(created.key),
        }))
}

/// The caller's keys; admins may pass `user_id`.
#[utoipa::path(get, path = "/api/v1/keys", tag = "identity", params(ListKeysQuery),
    responses(
        (status = 200, description = "Keys, newest first", body = KeyList),
        (status = 403, description = "A member asked for another user's keys", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let query: ListKeysQuery = parse_query(&req)?;
    let user_id = query
        .user_id
        .as_deref()
        .map(|raw| uuid_field("user_id", raw))
        .transpose()?;
    let keys = state.accounts.list_keys(&actor.0, user_id).await?;
    Ok(HttpResponse::Ok().json(KeyList {
        items: keys.into_iter().map(KeyResponse::from).collect(),
    }))
}

/// Changes the models a key may be used with and (admins) its token quotas: the very next
/// request with it sees the change, on every replica.
#[utoipa::path(patch, path = "/api/v1/keys/{id}", tag = "identity", request_body = UpdateKey,
    params(("id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "The changed key", body = KeyResponse),
        (status = 403, description = "A key with an allowlist asked for models beyond it, or a member set `tpm` or `monthly_tokens`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field, or none given", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<String>,
    body: Json<UpdateKey>,
) -> Result<HttpResponse, ApiError> {
    let id = uuid_field("id", &path.into_inner())?;
    let update = body.0.into_domain()?;
    let key = state.accounts.update_key(&actor.0, id, update).await?;
    Ok(HttpResponse::Ok().json(KeyResponse::from(key)))
}

/// Revokes a key: the very next request with it is refused, on every replica.
#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "identity",
    params(("id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such key (or not the caller's)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = uuid_field("id", &path.into_inner())?;
    state.accounts.revoke_key(&actor.0, id).await?;
    Ok(HttpResponse::NoContent().finish())
}
