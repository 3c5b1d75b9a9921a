//! `/api/v1/models` and `/api/v1/models/{name}`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use maas_domain::model::ModelFilter;
use maas_domain::values::Tags;

use super::{model_name, page_limit};
use crate::auth::Actor;
use crate::dto::{CreateModel, ListModelsQuery, ModelList, ModelResponse, UpdateModel};
use crate::error::{ApiError, Problem};
use crate::extract::{Json, parse_query};
use crate::state::AppState;

/// Registers a model.
#[utoipa::path(post, path = "/api/v1/models", tag = "models", request_body = CreateModel,
    responses(
        (status = 201, description = "Created; `Location` names the model", body = ModelResponse),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    state: web::Data<AppState>,
    actor: Actor,
    body: Json<CreateModel>,
) -> Result<HttpResponse, ApiError> {
    let model = state
        .registry
        .create_model(&actor.0, body.0.into_domain()?)
        .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/models/{}", model.name)))
        .json(ModelResponse::from(model)))
}

/// Lists models ordered by name (keyset pagination).
#[utoipa::path(get, path = "/api/v1/models", tag = "models", params(ListModelsQuery),
    responses(
        (status = 200, description = "A page of models", body = crate::dto::Page<crate::dto::ModelResponse>),
        (status = 422, description = "Invalid parameter", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let query: ListModelsQuery = parse_query(&req)?;
    let limit = page_limit(query.limit.as_deref())?;
    if let Some(tag) = &query.tag {
        Tags::check_one("tag", tag)?;
    }
    let filter = ModelFilter {
        tag: query.tag,
        q: query.q.filter(|q| !q.is_empty()),
        ..ModelFilter::default()
    };
    let page = state
        .registry
        .list_models(&actor.0, &filter, query.cursor.as_deref(), limit)
        .await?;
    Ok(HttpResponse::Ok().json(ModelList::from(page)))
}

/// One model.
#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "models",
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "The model", body = ModelResponse),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = model_name(path.into_inner())?;
    let model = state.registry.get_model(&actor.0, &name).await?;
    Ok(HttpResponse::Ok().json(ModelResponse::from(model)))
}

/// Changes a model's description, tags or metadata.
#[utoipa::path(patch, path = "/api/v1/models/{name}", tag = "models", request_body = UpdateModel,
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "The changed model", body = ModelResponse),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<String>,
    body: Json<UpdateModel>,
) -> Result<HttpResponse, ApiError> {
    let name = model_name(path.into_inner())?;
    let model = state
        .registry
        .update_model(&actor.0, &name, body.0.into_domain()?)
        .await?;
    Ok(HttpResponse::Ok().json(ModelResponse::from(model)))
}

/// Deletes a model with its versions and aliases.
#[utoipa::path(delete, path = "/api/v1/models/{name}", tag = "models",
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = model_name(path.into_inner())?;
    state.registry.delete_model(&actor.0, &name).await?;
    Ok(HttpResponse::NoContent().finish())
}
