//! The OpenAPI 3 document, assembled from the handlers' `#[utoipa::path]` annotations.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::dto;
use crate::error::Problem;
use crate::handlers::{aliases, grants, health, inference, keys, models, usage, users, versions};

/// The gateway's API description, served at `/api/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "maas-gateway", description = "Model registry and inference gateway of a Model-as-a-Service platform."),
    paths(
        health::live, health::ready, health::metrics,
        models::create, models::list, models::get, models::update, models::delete,
        versions::create, versions::list, versions::get, versions::update, versions::delete,
        aliases::put, aliases::get, aliases::delete,
        users::create, users::list, users::me, users::update,
        keys::create, keys::list, keys::update, keys::revoke,
        grants::create, grants::list, grants::delete,
        usage::report,
        inference::chat_completions, inference::completions, inference::embeddings,
        inference::list_models, inference::invoke,
    ),
    modifiers(&Security),
    security(("bearer" = []), ("api_key" = [])),
    components(schemas(
        Problem, dto::CreateModel, dto::UpdateModel, dto::ModelResponse, dto::Page<dto::ModelResponse>,
        dto::CreateVersion, dto::UpdateVersion, dto::VersionResponse, dto::Page<dto::VersionResponse>,
        dto::SetAlias, dto::SetAliasVersion, dto::AliasResponse, dto::AliasVersionResponse,
        dto::ResolvedAliasResponse, dto::WeightedVersionResponse, health::Liveness, health::Readiness, health::CheckReport,
        dto::CreateUser, dto::UpdateUser, dto::UserResponse, dto::Page<dto::UserResponse>,
        dto::CreateKey, dto::UpdateKey, dto::KeyResponse, dto::CreatedKeyResponse, dto::KeyList,
        dto::CreateGrant, dto::GrantResponse, dto::GrantList,
        usage::UsageReport, usage::UsageItem, usage::QuotaReport, usage::QuotaUseItem,
        usage::KeyQuotaItem, inference::OpenAiModel, inference::OpenAiModelList,
    )),
    tags(
        (name = "models", description = "The model registry"),
        (name = "versions", description = "Versions of a model"),
        (name = "aliases", description = "Named pointers to one version, or to several sharing the calls by weight"),
        (name = "identity", description = "Users and API keys"),
        (name = "inference", description = "OpenAI-compatible and raw calls to model servers, and their usage"),
        (name = "operations", description = "Health and metrics (no API key needed)"),
    )
)]
pub struct ApiDoc;

/// Declares the two ways to present an API key.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in `value`, depth first.
    fn refs<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, item) in map {
                    match (key.as_str(), item) {
                        ("$ref", serde_json::Value::String(target)) => out.push(target),
                        _ => refs(item, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
            _ => {}
        }
    }

    #[test]
    fn the_liveness_status_is_the_string_ok_as_before() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
        let status = &doc["components"]["schemas"]["Liveness"]["properties"]["status"];
        // Inlined with a description of its own, the enum comes wrapped in a `oneOf`.
        let schema = status["oneOf"].get(0).unwrap_or(status);
        assert_eq!(schema["type"], "string", "{status}");
        assert_eq!(schema["enum"], serde_json::json!(["ok"]), "{status}");
    }

    #[test]
    fn every_schema_reference_in_the_document_resolves() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty(), "the document uses references");
        for target in found {
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("a local schema reference: {target}"));
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{target} is not defined"
            );
        }
    }
}
