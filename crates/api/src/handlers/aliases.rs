//! `/api/v1/models/{name}/aliases/{alias}`.

use actix_web::{HttpResponse, web};
use maas_domain::values::VersionNumber;

use super::{alias_name, model_name};
use crate::auth::Actor;
use crate::dto::{AliasResponse, SetAlias, VersionResponse};
use crate::error::{ApiError, Problem};
use crate::extract::Json;
use crate::state::AppState;

/// Creates or moves an alias (`latest` is reserved).
#[utoipa::path(put, path = "/api/v1/models/{name}/aliases/{alias}", tag = "aliases",
    request_body = SetAlias,
    params(("name" = String, Path, description = "Model name"),
           ("alias" = String, Path, description = "Alias, e.g. `production`")),
    responses(
        (status = 200, description = "The alias", body = AliasResponse),
        (status = 404, description = "No such model or version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid alias or version, or `latest`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(String, String)>,
    body: Json<SetAlias>,
) -> Result<HttpResponse, ApiError> {
    let (name, alias) = path.into_inner();
    let (name, alias) = (model_name(name)?, alias_name(alias)?);
    let version = VersionNumber::new(body.0.version)?;
    let alias = state
        .registry
        .set_alias(&actor.0, &name, &alias, version)
        .await?;
    Ok(HttpResponse::Ok().json(AliasResponse::from(alias)))
}

/// The version an alias points to; `latest` is always the highest version.
#[utoipa::path(get, path = "/api/v1/models/{name}/aliases/{alias}", tag = "aliases",
    params(("name" = String, Path, description = "Model name"),
           ("alias" = String, Path, description = "Alias, or `latest`")),
    responses(
        (status = 200, description = "The version it points to", body = VersionResponse),
        (status = 404, description = "No such model or alias", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, alias) = path.into_inner();
    let (name, alias) = (model_name(name)?, alias_name(alias)?);
    let version = state
        .registry
        .resolve_alias(&actor.0, &name, &alias)
        .await?;
    Ok(HttpResponse::Ok().json(VersionResponse::from(version)))
}

/// Removes an alias (`latest` is reserved).
#[utoipa::path(delete, path = "/api/v1/models/{name}/aliases/{alias}", tag = "aliases",
    params(("name" = String, Path, description = "Model name"),
           ("alias" = String, Path, description = "Alias")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such model or alias", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`latest` cannot be deleted", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, alias) = path.into_inner();
    let (name, alias) = (model_name(name)?, alias_name(alias)?);
    state.registry.delete_alias(&actor.0, &name, &alias).await?;
    Ok(HttpResponse::NoContent().finish())
}
