//! `/api/v1/users`: user management (admins) and the caller's own user.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use maas_domain::values::Username;

use super::page_limit;
use crate::auth::Actor;
use crate::dto::{CreateUser, ListUsersQuery, UpdateUser, UserList, UserResponse};
use crate::error::{ApiError, Problem};
use crate::extract::{Json, parse_query};
use crate::state::AppState;

/// Creates a user (admins only).
#[utoipa::path(post, path = "/api/v1/users", tag = "identity", request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserResponse),
        (status = 401, description = "No valid API key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The username is taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    state: web::Data<AppState>,
    actor: Actor,
    body: Json<CreateUser>,
) -> Result<HttpResponse, ApiError> {
    let user = state
        .accounts
        .create_user(&actor.0, body.0.into_domain()?)
        .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/users/{}", user.username)))
        .json(UserResponse::from(user)))
}

/// Lists users by name (admins only).
#[utoipa::path(get, path = "/api/v1/users", tag = "identity", params(ListUsersQuery),
    responses(
        (status = 200, description = "A page of users", body = crate::dto::Page<crate::dto::UserResponse>),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let query: ListUsersQuery = parse_query(&req)?;
    let limit = page_limit(query.limit.as_deref())?;
    let page = state
        .accounts
        .list_users(&actor.0, query.cursor.as_deref(), limit)
        .await?;
    Ok(HttpResponse::Ok().json(UserList::from(page)))
}

/// The caller's own user.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "identity",
    responses((status = 200, description = "The caller", body = UserResponse)))]
pub async fn me(state: web::Data<AppState>, actor: Actor) -> Result<HttpResponse, ApiError> {
    let user = state.accounts.me(&actor.0).await?;
    Ok(HttpResponse::Ok().json(UserResponse::from(user)))
}

/// Changes a user's role or disables it (admins only). Its cached key lookups are dropped, so
/// the change applies to the very next request on every replica.
#[utoipa::path(patch, path = "/api/v1/users/{username}", tag = "identity", request_body = UpdateUser,
    params(("username" = String, Path, description = "Username")),
    responses(
        (status = 200, description = "The changed user", body = UserResponse),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<String>,
    body: Json<UpdateUser>,
) -> Result<HttpResponse, ApiError> {
    let username = Username::parse_as("username", path.into_inner())?;
    let user = state
        .accounts
        .update_user(&actor.0, &username, body.0.into_domain()?)
        .await?;
    Ok(HttpResponse::Ok().json(UserResponse::from(user)))
}
