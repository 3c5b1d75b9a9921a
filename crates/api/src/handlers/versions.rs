//! `/api/v1/models/{name}/versions` and `/api/v1/models/{name}/versions/{version}`.

use std::net::IpAddr;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use maas_domain::ValidationError;
use maas_domain::serving::{EndpointList, EndpointsPatch};
use url::Host;

use super::{model_name, page_limit, version_number};
use crate::auth::Actor;
use crate::dto::{CreateVersion, ListVersionsQuery, UpdateVersion, VersionList, VersionResponse};
use crate::error::{ApiError, Problem};
use crate::extract::{Json, parse_query};
use crate::state::AppState;

/// Adds the next version (1, 2, 3…, gapless even under concurrent calls).
#[utoipa::path(post, path = "/api/v1/models/{name}/versions", tag = "versions",
    request_body = CreateVersion,
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 201, description = "Created; `Location` names the version", body = VersionResponse),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<String>,
    body: Json<CreateVersion>,
) -> Result<HttpResponse, ApiError> {
    let name = model_name(path.into_inner())?;
    let new = body.0.into_domain()?;
    check_endpoints(&state, &new.endpoints)?;
    let version = state.registry.create_version(&actor.0, &name, new).await?;
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/api/v1/models/{name}/versions/{}", version.version),
        ))
        .json(VersionResponse::from(version)))
}

/// Lists a model's versions, newest first.
#[utoipa::path(get, path = "/api/v1/models/{name}/versions", tag = "versions",
    params(("name" = String, Path, description = "Model name"), ListVersionsQuery),
    responses(
        (status = 200, description = "A page of versions", body = crate::dto::Page<crate::dto::VersionResponse>),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid parameter", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = model_name(path.into_inner())?;
    let query: ListVersionsQuery = parse_query(&req)?;
    let limit = page_limit(query.limit.as_deref())?;
    let page = state
        .registry
        .list_versions(&actor.0, &name, query.cursor.as_deref(), limit)
        .await?;
    Ok(HttpResponse::Ok().json(VersionList::from(page)))
}

/// One version.
#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}", tag = "versions",
    params(("name" = String, Path, description = "Model name"),
           ("version" = i32, Path, description = "Version number")),
    responses(
        (status = 200, description = "The version", body = VersionResponse),
        (status = 404, description = "No such version", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, version) = path.into_inner();
    let (name, version) = (model_name(name)?, version_number(&version)?);
    let version = state.registry.get_version(&actor.0, &name, version).await?;
    Ok(HttpResponse::Ok().json(VersionResponse::from(version)))
}

/// Changes a version's endpoint, framework, description or metadata.
#[utoipa::path(patch, path = "/api/v1/models/{name}/versions/{version}", tag = "versions",
    request_body = UpdateVersion,
    params(("name" = String, Path, description = "Model name"),
           ("version" = i32, Path, description = "Version number")),
    responses(
        (status = 200, description = "The changed version", body = VersionResponse),
        (status = 404, description = "No such version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(String, String)>,
    body: Json<UpdateVersion>,
) -> Result<HttpResponse, ApiError> {
    let (name, version) = path.into_inner();
    let (name, version) = (model_name(name)?, version_number(&version)?);
    let patch = body.0.into_domain()?;
    if let Some(EndpointsPatch::Replace(endpoints)) = &patch.endpoints {
        check_endpoints(&state, endpoints)?;
    }
    let version = state
        .registry
        .update_version(&actor.0, &name, version, patch)
        .await?;
    Ok(HttpResponse::Ok().json(VersionResponse::from(version)))
}

/// Deletes a version and the aliases on it; its number is not reused.
#[utoipa::path(delete, path = "/api/v1/models/{name}/versions/{version}", tag = "versions",
    params(("name" = String, Path, description = "Model name"),
           ("version" = i32, Path, description = "Version number")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such version", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, version) = path.into_inner();
    let (name, version) = (model_name(name)?, version_number(&version)?);
    state
        .registry
        .delete_version(&actor.0, &name, version)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// An endpoint whose host is an address the gateway would not connect to
/// (`upstream.allowed_networks`, `upstream.denied_networks`) is refused when it is written (422
/// naming it: `endpoint_url`, `endpoints[2].url`), in whatever spelling the URL parser reads as
/// that address (`2130706433`, `0x7f.1`, `0177.0.0.1`, `0`, `[::ffff:127.0.0.1]`). A host name
/// is not resolved here: it is checked, as every address is, when the gateway connects.
fn check_endpoints(state: &AppState, endpoints: &EndpointList) -> Result<(), ApiError> {
    for (i, endpoint) in endpoints.items().iter().enumerate() {
        let Ok(url) = url::Url::parse(endpoint.url.as_str()) else {
            continue;
        };
        let address = match url.host() {
            Some(Host::Ipv4(address)) => IpAddr::V4(address),
            Some(Host::Ipv6(address)) => IpAddr::V6(address),
            Some(Host::Domain(_)) | None => continue,
        };
        if !state.upstream.policy().allows(address) {
            return Err(ValidationError::new(
                endpoints.field(i, "url"),
                format!(
                    "endpoint address not allowed: the gateway does not connect to {address} \
                     (upstream.denied_networks)"
                ),
            )
            .into());
        }
    }
    Ok(())
}
