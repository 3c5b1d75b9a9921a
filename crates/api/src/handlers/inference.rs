//! `/v1`: OpenAI-compatible calls and raw calls, forwarded to the model server of the resolved
//! version, streamed back as they arrive and metered.

use std::time::Instant;

use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError as _, web};
use bytes::Bytes;
use chrono::Utc;
use maas_domain::DomainError;
use maas_domain::ValidationError;
use maas_domain::identity::Principal;
use maas_domain::inference::{Target, UpstreamSecret, UsageEvent};
use maas_domain::model::ModelVersion;
use maas_domain::ports::Reservation;
use maas_domain::quotas::CallKind;
use maas_domain::values::ModelName;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Actor;
use crate::error::{ApiError, OpenAiError, Routed};
use crate::extract::{content_length, is_json, read_body};
use crate::meters;
use crate::middleware::RequestStarted;
use crate::proxy::{
    self, Answer, CallSlot, Delivery, Outbound, UpstreamError, millis, raw_call_path,
    raw_call_query, request_headers, upstream_uri,
};
use crate::quota;
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

/// One inference call on its way through the gateway: the context each phase reads (as a
/// Pingora `CTX`). The phases run in this order, one method each: the key was authenticated and
/// its rate limit checked by the middleware, the call took its place among
/// `upstream.max_concurrent_calls` ([`take_slot`]) before its body was read (a key with token
/// limits is decided only then, with its reservation: [`quota::reserve`]), then
/// [`Call::resolve`] picks the version,
/// [`Call::forward`] sends the call to its model server and [`Call::meter`] streams the answer
/// back, recording its usage. A call that fails on the way leaves a usage event too.
struct Call<'a> {
    state: &'a AppState,
    req: &'a HttpRequest,
    actor: &'a Principal,
    started: Instant,
    route: &'static str,
    model: String,
    /// The tokens it reserved, settled from its usage event (see [`crate::quota`]).
    reservation: Option<Reservation>,
}

/// What goes to the model server of the resolved version.
struct Forwarding<'a> {
    method: hyper::Method,
    /// Below the version's `endpoint_url`.
    path: &'a str,
    query: Option<&'a str>,
    body: Bytes,
}

impl<'a> Forwarding<'a> {
    fn post(path: &'a str, query: Option<&'a str>, body: Bytes) -> Self {
        Self {
            method: hyper::Method::POST,
            path,
            query,
            body,
        }
    }
}

impl<'a> Call<'a> {
    fn new(
        state: &'a AppState,
        req: &'a HttpRequest,
        actor: &'a Actor,
        route: &'static str,
        target: &Target,
    ) -> Self {
        Self {
            state,
            req,
            actor: &actor.0,
            started: started(req),
            route,
            model: target.model.as_str().to_owned(),
            reservation: None,
        }
    }

    fn reserving(self, reservation: Option<Reservation>) -> Self {
        Self {
            reservation,
            ..self
        }
    }

    /// The call's phases, once its request is read.
    async fn run(
        &self,
        target: &Target,
        forwarding: Forwarding<'_>,
        slot: CallSlot,
    ) -> Result<HttpResponse, OpenAiError> {
        let version = self.resolve(target).await?;
        let answer = self.forward(&version, forwarding).await?;
        Ok(self.meter(&version, answer, slot))
    }

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
            reservation: self.reservation,
        }
    }

    /// Records a call that failed with `err`, routed to `version` if it got that far.
    fn record_failure(&self, version: Option<i32>, err: &ApiError) {
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

    /// Phase one: the version that serves `target`.
    async fn resolve(&self, target: &Target) -> Result<ModelVersion, OpenAiError> {
        self.state
            .registry
            .resolve_target(self.actor, target)
            .await
            .map_err(|e| self.failed(ApiError::Domain(e)))
    }

    /// Phase two: the call sent to `version`'s model server, until its answer's headers are in.
    /// Counted by the status the caller gets (`maas_upstream_requests_total`; a model server's
    /// status that is no HTTP status as `invalid`). A call refused by the address policy is
    /// counted (`maas_upstream_refused_total`) and logged with its model and version.
    async fn forward(
        &self,
        version: &ModelVersion,
        forwarding: Forwarding<'_>,
    ) -> Result<Answer, OpenAiError> {
        let secret = self
            .state
            .registry
            .upstream_secret(version)
            .await
            .map_err(|e| self.failed_at(version, ApiError::Domain(e)))?;
        let outbound = self.outbound(version, secret.as_ref(), forwarding)?;
        let model = version.model.as_str();
        match proxy::send(&self.state.upstream, self.started, outbound).await {
            Ok(answer) => {
                meters::count_upstream(model, answer.status());
                Ok(answer)
            }
            Err(err) => {
                if let UpstreamError::AddressNotAllowed(reason) = &err {
                    meters::count_upstream_refused(REFUSED_ADDRESS);
                    slog::warn!(self.state.logger, "inference call refused: endpoint address not allowed";
                        "model" => model, "version" => version.version.get(),
                        "reason" => reason.as_str(),
                        "request_id" => current_request_id());
                }
                let invalid_status = match err {
                    UpstreamError::InvalidStatus(status) => Some(status),
                    _ => None,
                };
                let err = ApiError::from(err);
                let counted = invalid_status.unwrap_or_else(|| err.status_code().as_u16());
                meters::count_upstream(model, counted);
                Err(self.failed_at(version, err))
            }
        }
    }

    /// Where and what the call sends: the version's endpoint joined with the call's path, and
    /// the headers that may go upstream (with the version's credential, if it has one).
    fn outbound(
        &self,
        version: &ModelVersion,
        secret: Option<&UpstreamSecret>,
        forwarding: Forwarding<'_>,
    ) -> Result<Outbound, OpenAiError> {
        let Some(endpoint) = &version.endpoint_url else {
            let number = version.version.get();
            let err = DomainError::NotFound(format!("version {number} has no endpoint_url"));
            return Err(self.failed_at(version, ApiError::Domain(err)));
        };
        let uri = upstream_uri(endpoint.as_str(), forwarding.path, forwarding.query)
            .map_err(|e| self.failed_at(version, e.into()))?;
        let headers = request_headers(
            self.req.headers(),
            current_request_id().as_deref(),
            secret.map(UpstreamSecret::expose),
            self.req.peer_addr().map(|peer| peer.ip()),
        );
        Ok(Outbound {
            method: forwarding.method,
            uri,
            headers,
            body: forwarding.body,
        })
    }

    /// Phase three: the answer streamed back to the client through its meter, which records the
    /// call's usage when the body is over.
    fn meter(&self, version: &ModelVersion, answer: Answer, slot: CallSlot) -> HttpResponse {
        let number = version.version.get();
        let event = self.event(Some(number), answer.status());
        answer.into_response(Delivery {
            model: version.model.as_str(),
            version: number,
            event,
            started: self.started,
            queue: self.state.usage_queue.clone(),
            idle: self.state.upstream.timeout(),
            max_tokens: self.state.upstream.max_tokens_per_call(),
            slot,
        })
    }
}

/// `maas_upstream_refused_total{reason}` of a call whose endpoint has no allowed address.
const REFUSED_ADDRESS: &str = "address_not_allowed";
/// `maas_upstream_refused_total{reason}` of a call past `upstream.max_concurrent_calls`.
const REFUSED_BUSY: &str = "concurrency_limit";

/// The call's place among `upstream.max_concurrent_calls`, taken before its body is read: past
/// the limit the call is refused at once (503, `Retry-After`), nothing read and nothing sent.
fn take_slot(state: &AppState) -> Result<CallSlot, OpenAiError> {
    state.upstream.try_slot().map_err(|e| {
        meters::count_upstream_refused(REFUSED_BUSY);
        ApiError::from(e).into()
    })
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
    let slot = take_slot(&state)?;
    let (target, body) = read_openai_request(&req, payload, &state).await?;
    let reservation = quota::reserve(&req, &state, quota::kind_of(path), &body).await?;
    let call = Call::new(&state, &req, &actor, route, &target).reserving(reservation);
    call.run(&target, Forwarding::post(path, None, body), slot)
        .await
}

/// An OpenAI request's target (its `model`) and its body, read within the body limit.
async fn read_openai_request(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<(Target, Bytes), OpenAiError> {
    if !is_json(req) {
        return Err(ApiError::UnsupportedMediaType(
            "the request body must be JSON (content-type: application/json)".into(),
        )
        .into());
    }
    let body = read_body(payload.into_inner(), content_length(req), body_limit(state)).await?;
    let envelope: Envelope =
        serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let model = match envelope.model {
        Some(serde_json::Value::String(model)) => model,
        Some(_) => return Err(ValidationError::new("model", "must be a string").into()),
        None => return Err(ValidationError::new("model", "is required").into()),
    };
    Ok((Target::parse(&model)?, body))
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

/// Models the caller may call, in OpenAI's list format.
#[utoipa::path(get, path = "/v1/models", tag = "inference",
    responses((status = 200, description = "Servable models", body = OpenAiModelList)))]
pub async fn list_models(
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, OpenAiError> {
    let models = state.registry.list_servable_models(&actor.0).await?;
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
    let slot = take_slot(&state)?;
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
    let reservation = quota::reserve(&req, &state, CallKind::Raw, &body).await?;
    let call = Call::new(
        &state,
        &req,
        &actor,
        "/v1/models/{name}/invoke/{path}",
        &target,
    )
    .reserving(reservation);
    call.run(&target, Forwarding::post(rest, Some(&query), body), slot)
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
