//! `/v1`: OpenAI-compatible calls and raw calls, forwarded to the model server of the resolved
//! version, streamed back as they arrive and metered.

use std::time::Instant;

use actix_web::http::header;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use bytes::Bytes;
use chrono::Utc;
use maas_domain::DomainError;
use maas_domain::ValidationError;
use maas_domain::identity::Principal;
use maas_domain::inference::{Target, UsageEvent};
use maas_domain::model::ModelVersion;
use maas_domain::values::ModelName;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Actor;
use crate::error::{ApiError, OpenAiError, Routed};
use crate::extract::{content_length, is_json, read_body};
use crate::meters;
use crate::middleware::RequestStarted;
use crate::proxy::{
    Meter, MeteredBody, millis, raw_call_path, raw_call_query, request_headers, response_headers,
    upstream_uri,
};
use crate::request_id::current_request_id;
use crate::state::AppState;

/// An entry of `GET /v1/models` (OpenAI's model object).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OpenAiModel {
    /// The model's name: pass it as `model`.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// The owner's username, or `maas-gateway`.
    pub owned_by: String,
}

/// `GET /v1/models` (OpenAI's list object).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OpenAiModelList {
    /// Always `list`.
    pub object: String,
    /// One entry per servable model.
    pub data: Vec<OpenAiModel>,
}

struct Call<'a> {
    state: &'a AppState,
    req: &'a HttpRequest,
    actor: &'a Principal,
    started: Instant,
    route: &'static str,
    model: String,
}

impl Call<'_> {
    fn event(&self, version: Option<i32>, status: u16) -> UsageEvent {
        UsageEvent {
            key_id: self.actor.key_id,
            user_id: self.actor.user_id,
            model: self.model.clone(),
            version,
            route: self.route.into(),
            status,
            latency_ms: millis(self.started.elapsed()),
            upstream_ms: None,
            prompt_tokens: None,
            completion_tokens: None,
            created_at: Utc::now(),
        }
    }

    /// Records a call that failed with `err`, routed to `version` if it got that far.
    fn record_failure(&self, version: Option<i32>, err: &ApiError) {
        use actix_web::ResponseError as _;
        self.state
            .usage_queue
            .push(self.event(version, err.status_code().as_u16()));
    }

    /// Records a call that failed before it was routed, and hands the error back.
    fn failed(&self, err: ApiError) -> OpenAiError {
        self.record_failure(None, &err);
        err.into()
    }

    /// Records a call routed to `version` that failed at or before the upstream, and hands the
    /// error back naming the version.
    fn failed_at(&self, version: &ModelVersion, err: ApiError) -> OpenAiError {
        let number = version.version.get();
        self.record_failure(Some(number), &err);
        OpenAiError::routed(
            err,
            Routed {
                model: version.model.as_str().to_owned(),
                version: number,
            },
        )
    }

    async fn resolve(&self, target: &Target) -> Result<ModelVersion, OpenAiError> {
        self.state
            .registry
            .resolve_target(target)
            .await
            .map_err(|e| self.failed(ApiError::Domain(e)))
    }

    /// Sends the call upstream and streams the answer back.
    async fn forward(
        &self,
        version: &ModelVersion,
        method: hyper::Method,
        path: &str,
        query: Option<&str>,
        body: Bytes,
    ) -> Result<HttpResponse, OpenAiError> {
        let number = version.version.get();
        let Some(endpoint) = &version.endpoint_url else {
            let err = DomainError::NotFound(format!("version {number} has no endpoint_url"));
            return Err(self.failed_at(version, ApiError::Domain(err)));
        };
        let uri = upstream_uri(endpoint.as_str(), path, query)
            .map_err(|e| self.failed_at(version, e.into()))?;
        let headers = request_headers(
            self.req.headers(),
            current_request_id().as_deref(),
            version.upstream_api_key.as_ref().map(|k| k.expose()),
            self.req.peer_addr().map(|peer| peer.ip()),
        );
        let upstream_started = Instant::now();
        let sent = self.state.upstream.send(method, uri, headers, body).await;
        let model = version.model.as_str();
        let response = match sent {
            Ok(response) => response,
            Err(err) => {
                use actix_web::ResponseError as _;
                let err = ApiError::from(err);
                meters::count_upstream(model, err.status_code().as_u16());
                return Err(self.failed_at(version, err));
            }
        };
        let overhead = self
            .started
            .elapsed()
            .saturating_sub(upstream_started.elapsed());
        meters::record_overhead(overhead);
        let status = response.status().as_u16();
        meters::count_upstream(model, status);

        let sse = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        let mut out = HttpResponse::build(
            actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY),
        );
        for (name, value) in response_headers(response.headers()) {
            out.append_header((name, value));
        }
        let overhead_us = overhead.as_micros();
        out.insert_header(("x-maas-model", model))
            .insert_header(("x-maas-version", number))
            .insert_header((
                "x-maas-overhead-ms",
                format!("{}.{:03}", overhead_us / 1000, overhead_us % 1000),
            ));
        if sse {
            // Proxies between the gateway and the client must not buffer the stream either.
            out.insert_header(("x-accel-buffering", "no"))
                .insert_header((header::CACHE_CONTROL, "no-cache"));
        }
        let meter = Meter::new(
            self.event(Some(number), status),
            self.started,
            upstream_started,
            sse,
            self.state.usage_queue.clone(),
        );
        let body = MeteredBody::new(response.into_body(), meter, self.state.upstream.timeout());
        // A body of known length keeps it: the client gets `Content-Length` instead of chunked
        // framing, and the answer usually leaves in one write. Still streamed, never buffered.
        Ok(match body.exact_length().filter(|_| !sse) {
            Some(length) => out.body(actix_web::body::SizedStream::new(length, body)),
            None => out.streaming(body),
        })
    }
}

fn started(req: &HttpRequest) -> Instant {
    req.extensions()
        .get::<RequestStarted>()
        .map_or_else(Instant::now, |s| s.0)
}

fn body_limit(state: &AppState) -> usize {
    state.upstream_settings.max_body_bytes
}

/// The fields of an OpenAI request body the gateway reads; the body is forwarded untouched.
#[derive(Deserialize)]
struct Envelope {
    model: Option<serde_json::Value>,
}

async fn openai(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    actor: Actor,
    path: &'static str,
    route: &'static str,
) -> Result<HttpResponse, OpenAiError> {
    let started = started(&req);
    if !is_json(&req) {
        return Err(ApiError::UnsupportedMediaType(
            "the request body must be JSON (content-type: application/json)".into(),
        )
        .into());
    }
    let body = read_body(
        payload.into_inner(),
        content_length(&req),
        body_limit(&state),
    )
    .await?;
    let envelope: Envelope =
        serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let model = match envelope.model {
        Some(serde_json::Value::String(model)) => model,
        Some(_) => return Err(ValidationError::new("model", "must be a string").into()),
        None => return Err(ValidationError::new("model", "is required").into()),
    };
    let target = Target::parse(&model)?;
    let call = Call {
        state: &state,
        req: &req,
        actor: &actor.0,
        started,
        route,
        model: target.model.as_str().to_owned(),
    };
    let version = call.resolve(&target).await?;
    call.forward(&version, hyper::Method::POST, path, None, body)
        .await
}

/// OpenAI chat completions, forwarded to `{endpoint_url}/chat/completions`.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "inference",
    request_body(content = Object, description = "An OpenAI chat completion request; `model` is `name`, `name@alias` or `name:version`"),
    responses((status = 200, description = "The model server's answer, streamed when `stream` is true")))]
pub async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, OpenAiError> {
    openai(
        req,
        payload,
        state,
        actor,
        "chat/completions",
        "/v1/chat/completions",
    )
    .await
}

/// OpenAI completions, forwarded to `{endpoint_url}/completions`.
#[utoipa::path(post, path = "/v1/completions", tag = "inference",
    request_body(content = Object, description = "An OpenAI completion request"),
    responses((status = 200, description = "The model server's answer")))]
pub async fn completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, OpenAiError> {
    openai(req, payload, state, actor, "completions", "/v1/completions").await
}

/// OpenAI embeddings, forwarded to `{endpoint_url}/embeddings`.
#[utoipa::path(post, path = "/v1/embeddings", tag = "inference",
    request_body(content = Object, description = "An OpenAI embeddings request"),
    responses((status = 200, description = "The model server's answer")))]
pub async fn embeddings(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, OpenAiError> {
    openai(req, payload, state, actor, "embeddings", "/v1/embeddings").await
}

/// Models that can serve calls, in OpenAI's list format.
#[utoipa::path(get, path = "/v1/models", tag = "inference",
    responses((status = 200, description = "Servable models", body = OpenAiModelList)))]
pub async fn list_models(
    state: web::Data<AppState>,
    _actor: Actor,
) -> Result<HttpResponse, OpenAiError> {
    let models = state.registry.list_servable_models().await?;
    Ok(HttpResponse::Ok().json(OpenAiModelList {
        object: "list".to_owned(),
        data: models
            .into_iter()
            .map(|m| OpenAiModel {
                id: m.name.into_inner(),
                object: "model".to_owned(),
                created: m.created_at.timestamp(),
                owned_by: m.owner.unwrap_or_else(|| "maas-gateway".to_owned()),
            })
            .collect(),
    }))
}

/// Any body, forwarded to `{endpoint_url}/{path}` of the selected version (`?alias=` or
/// `?version=`; other query parameters are forwarded).
#[utoipa::path(post, path = "/v1/models/{name}/invoke/{path}", tag = "inference",
    params(("name" = String, Path, description = "Model name"),
           ("path" = String, Path, description = "Path under the version's endpoint_url"),
           ("alias" = Option<String>, Query, description = "Alias to call"),
           ("version" = Option<i32>, Query, description = "Version to call")),
    request_body(content = String, description = "Forwarded as is, with its content type"),
    responses((status = 200, description = "The model server's answer")))]
pub async fn invoke(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, OpenAiError> {
    let started = started(&req);
    let (name, _decoded_rest) = path.into_inner();
    let name = ModelName::parse(name)?;
    // As sent, not as actix decoded it: the model server gets the client's bytes.
    let rest = raw_call_path(req.uri().path())?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ValidationError::new("query", e.to_string()))?;
    let pick = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let target = Target::with_params(name, pick("alias"), pick("version"))?;
    let query = raw_call_query(req.query_string());
    let body = read_body(
        payload.into_inner(),
        content_length(&req),
        body_limit(&state),
    )
    .await?;
    let call = Call {
        state: &state,
        req: &req,
        actor: &actor.0,
        started,
        route: "/v1/models/{name}/invoke/{path}",
        model: target.model.as_str().to_owned(),
    };
    let version = call.resolve(&target).await?;
    call.forward(&version, hyper::Method::POST, rest, Some(&query), body)
        .await
}

/// Unknown `/v1` paths, in OpenAI's error shape.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, OpenAiError> {
    Err(ApiError::RouteNotFound(req.path().to_owned()).into())
}

/// Wrong methods on `/v1` routes, in OpenAI's error shape.
pub async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, OpenAiError> {
    Err(ApiError::MethodNotAllowed(req.method().to_string()).into())
}
