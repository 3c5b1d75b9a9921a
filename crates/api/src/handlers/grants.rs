//! `/api/v1/models/{name}/grants`: admins let named users use a private model.

use actix_web::{HttpResponse, web};
use maas_domain::values::Username;

use super::model_name;
use crate::auth::Actor;
use crate::dto::{CreateGrant, GrantList, GrantResponse};
use crate::error::{ApiError, Problem};
use crate::extract::Json;
use crate::state::AppState;

fn username(raw: String) -> Result<Username, ApiError> {
    Ok(Username::parse_as("username", raw)?)
}

/// Lets a user use a private model from their next call on, on every replica (admins only).
#[utoipa::path(post, path = "/api/v1/models/{name}/grants", tag = "models",
    request_body = CreateGrant,
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 201, description = "Granted", body = GrantResponse),
        (status = 200, description = "Already granted: the first grant", body = GrantResponse),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such model or user", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<String>,
    body: Json<CreateGrant>,
) -> Result<HttpResponse, ApiError> {
    let name = model_name(path.into_inner())?;
    let user = username(body.0.username)?;
    let (grant, created) = state.registry.grant(&actor.0, &name, &user).await?;
    let mut response = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response.json(GrantResponse::from(grant)))
}

/// The users a model is granted to (admins only).
#[utoipa::path(get, path = "/api/v1/models/{name}/grants", tag = "models",
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "The grants, by username", body = GrantList),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = model_name(path.into_inner())?;
    let grants = state.registry.list_grants(&actor.0, &name).await?;
    Ok(HttpResponse::Ok().json(GrantList {
        items: grants.into_iter().map(GrantResponse::from).collect(),
    }))
}

/// Takes a grant back, from the user's next call on (admins only).
#[utoipa::path(delete, path = "/api/v1/models/{name}/grants/{username}", tag = "models",
    params(("name" = String, Path, description = "Model name"),
           ("username" = String, Path, description = "The user")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such model, user or grant", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, user) = path.into_inner();
    let (name, user) = (model_name(name)?, username(user)?);
    state.registry.revoke_grant(&actor.0, &name, &user).await?;
    Ok(HttpResponse::NoContent().finish())
}
