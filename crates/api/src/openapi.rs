//! The OpenAPI 3 document, assembled from the handlers' `#[utoipa::path]` annotations.

use utoipa::OpenApi;

use crate::dto;
use crate::error::Problem;
use crate::handlers::{aliases, health, models, versions};

/// The gateway's API description, served at `/api/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "maas-gateway", description = "Model registry and inference gateway of a Model-as-a-Service platform."),
    paths(
        health::live, health::ready, health::metrics,
        models::create, models::list, models::get, models::update, models::delete,
        versions::create, versions::list, versions::get, versions::update, versions::delete,
        aliases::put, aliases::get, aliases::delete,
    ),
    components(schemas(
        Problem, dto::CreateModel, dto::UpdateModel, dto::ModelResponse, dto::ModelList,
        dto::CreateVersion, dto::UpdateVersion, dto::VersionResponse, dto::VersionList,
        dto::SetAlias, dto::AliasResponse, health::Liveness, health::Readiness, health::CheckReport,
    )),
    tags(
        (name = "models", description = "The model registry"),
        (name = "versions", description = "Versions of a model"),
        (name = "aliases", description = "Named pointers to versions"),
        (name = "operations", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;
