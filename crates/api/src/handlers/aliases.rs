//! `/api/v1/models/{name}/aliases/{alias}`.

use actix_web::{HttpResponse, web};
use maas_domain::DomainError;

use super::{alias_name, model_name};
use crate::auth::Actor;
use crate::dto::{AliasResponse, ResolvedAliasResponse, SetAlias};
use crate::error::{ApiError, Problem};
use crate::extract::Json;
use crate::state::AppState;

/// Creates an alias, or replaces its whole split: `{"version": 3}` (one version) or
/// `{"versions": [{"version": 3, "weight": 90}, {"version": 4, "weight": 10}]}` (a canary:
/// each API key's calls all go to one version, chosen by weight). Every replica uses the new
/// split from its next call on. `latest` is reserved.
#[utoipa::path(put, path = "/api/v1/models/{name}/aliases/{alias}", tag = "aliases",
    request_body = SetAlias,
    params(("name" = String, Path, description = "Model name"),
           ("alias" = String, Path, description = "Alias, e.g. `production`")),
    responses(
        (status = 200, description = "The alias", body = AliasResponse),
        (status = 404, description = "No such model or version (nothing changed)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid alias, version, versions or weight, or `latest`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(String, String)>,
    body: Json<SetAlias>,
) -> Result<HttpResponse, ApiError> {
    let (name, alias) = path.into_inner();
    let (name, alias) = (model_name(name)?, alias_name(alias)?);
    let split = body.0.into_domain()?;
    let alias = state
        .registry
        .set_alias(&actor.0, &name, &alias, split)
        .await?;
    Ok(HttpResponse::Ok().json(AliasResponse::from(alias)))
}

/// The versions an alias points to with their weights, its primary version's fields at the top
/// level (as before splits); `latest` is always the highest version.
#[utoipa::path(get, path = "/api/v1/models/{name}/aliases/{alias}", tag = "aliases",
    params(("name" = String, Path, description = "Model name"),
           ("alias" = String, Path, description = "Alias, or `latest`")),
    responses(
        (status = 200, description = "The versions it points to", body = ResolvedAliasResponse),
        (status = 404, description = "No such model or alias", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, alias) = path.into_inner();
    let (name, alias) = (model_name(name)?, alias_name(alias)?);
    let resolved = state
        .registry
        .resolve_alias(&actor.0, &name, &alias)
        .await?;
    let body = ResolvedAliasResponse::new(resolved).ok_or_else(|| {
        DomainError::NotFound(format!("alias '{alias}' of model '{name}' not found"))
    })?;
    Ok(HttpResponse::Ok().json(body))
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
