//! `/v1`: OpenAI-compatible calls and raw calls, forwarded to the model server of the resolved
//! version, streamed back as they arrive and metered.

use std::time::Instant;

use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError as _, web};
use bytes::Bytes;
use chrono::Utc;
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
    self, Answer, AnswerRewrite, BodyError, CallSlot, Delivery, FleetFailure, OpenAiBody, Outbound,
    UpstreamError, millis, raw_call_path, raw_call_query, request_headers, upstream_uri,
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
    /// Below the URL of the version's endpoint.
    path: &'a str,
    query: Option<&'a str>,
    body: CallBody,
}

/// A call's body: an OpenAI call's, whose `model` is the model server's name for the model on
/// the way there and the client's on the way back (and which, on a route that streams, is made
/// to ask for a stream's usage), or any other, forwarded as it is.
enum CallBody {
    OpenAi { body: OpenAiBody, streams: bool },
    Raw(Bytes),
}

impl<'a> Forwarding<'a> {
    fn post(path: &'a str, query: Option<&'a str>, body: CallBody) -> Self {
        Self {
            method: hyper::Method::POST,
            path,
            query,
            body,
        }
    }

    /// What is sent for a call routed to `version`, and what its answer needs changed.
    fn to(self, version: &ModelVersion) -> (Sending<'a>, Option<AnswerRewrite>) {
        let (body, rewrite) = match self.body {
            CallBody::Raw(bytes) => (bytes, None),
            CallBody::OpenAi { body, streams } => {
                let ask_usage = streams && version.supports_stream_usage;
                let (sent, asked) = body.for_call(version.served_name(), ask_usage);
                let rewrite = AnswerRewrite {
                    client_model: body.model().to_owned(),
                    strip_usage_event: asked,
                };
                (sent, Some(rewrite))
            }
        };
        let sending = Sending {
            method: self.method,
            path: self.path,
            query: self.query,
            body,
        };
        (sending, rewrite)
    }
}

/// A call's request as it goes to the model server of its version.
struct Sending<'a> {
    method: hyper::Method,
    path: &'a str,
    query: Option<&'a str>,
    body: Bytes,
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
        let (sending, rewrite) = forwarding.to(&version);
        let answer = self.forward(&version, sending).await?;
        Ok(self.meter(&version, answer, slot, rewrite).await)
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

    /// Records a call routed to `version` (and to its endpoint `endpoint`, if it got that far)
    /// that failed at or before the upstream, and hands the error back naming them.
    fn failed_at(
        &self,
        version: &ModelVersion,
        endpoint: Option<usize>,
        err: ApiError,
    ) -> OpenAiError {
        let number = version.version.get();
        self.record_failure(Some(number), &err);
        OpenAiError::routed(
            err,
            Routed {
                model: version.model.as_str().to_owned(),
                version: number,
                endpoint,
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

    /// Phase two: the call sent to one of `version`'s model servers (the balancer's pick, and
    /// another when it cannot have reached the first), until its answer's headers are in.
    /// Counted by the status the caller gets (`maas_upstream_requests_total`; a model server's
    /// status that is no HTTP status as `invalid`). A call refused by the address policy is
    /// counted (`maas_upstream_refused_total`) and logged with its model, version and endpoint.
    async fn forward(
        &self,
        version: &ModelVersion,
        sending: Sending<'_>,
    ) -> Result<Answer, OpenAiError> {
        let secrets = self
            .state
            .registry
            .upstream_secrets(version)
            .await
            .map_err(|e| self.failed_at(version, None, ApiError::Domain(e)))?;
        let upstream = &self.state.upstream;
        let fleet = upstream.balancer().fleet(version, Instant::now());
        let model = version.model.as_str();
        let outbound = |index: usize| {
            let secret = secrets.get(index).and_then(Option::as_ref);
            self.outbound(version, index, secret, &sending)
        };
        match proxy::send_to_fleet(upstream, &fleet, model, self.started, outbound).await {
            Ok(answer) => {
                meters::count_upstream(model, answer.status());
                Ok(answer)
            }
            Err(FleetFailure { error, endpoint }) => {
                if let UpstreamError::AddressNotAllowed(reason) = &error {
                    meters::count_upstream_refused(REFUSED_ADDRESS);
                    slog::warn!(self.state.logger, "inference call refused: endpoint address not allowed";
                        "model" => model, "version" => version.version.get(),
                        "endpoint" => endpoint, "reason" => reason.as_str(),
                        "request_id" => current_request_id());
                }
                let invalid_status = match error {
                    UpstreamError::InvalidStatus(status) => Some(status),
                    _ => None,
                };
                let err = ApiError::from(error);
                let counted = invalid_status.unwrap_or_else(|| err.status_code().as_u16());
                meters::count_upstream(model, counted);
                Err(self.failed_at(version, endpoint, err))
            }
        }
    }

    /// Where and what the call sends to endpoint `index` of `version`: its URL joined with the
    /// call's path, and the headers that may go upstream (with its credential, if it has one).
    fn outbound(
        &self,
        version: &ModelVersion,
        index: usize,
        secret: Option<&UpstreamSecret>,
        sending: &Sending<'_>,
    ) -> Result<Outbound, UpstreamError> {
        let endpoint = version
            .endpoints
            .get(index)
            .ok_or_else(|| UpstreamError::NotConnected("no such endpoint".to_owned()))?;
        let uri = upstream_uri(endpoint.url.as_str(), sending.path, sending.query)?;
        let headers = request_headers(
            self.req.headers(),
            current_request_id().as_deref(),
            secret.map(UpstreamSecret::expose),
            self.req.peer_addr().map(|peer| peer.ip()),
        );
        Ok(Outbound {
            method: sending.method.clone(),
            uri,
            headers,
            body: sending.body.clone(),
        })
    }

    /// Phase three: the answer streamed back to the client through its meter, which records the
    /// call's usage when the body is over (an OpenAI call's answer with the client's `model`).
    async fn meter(
        &self,
        version: &ModelVersion,
        answer: Answer,
        slot: CallSlot,
        rewrite: Option<AnswerRewrite>,
    ) -> HttpResponse {
        let number = version.version.get();
        let event = self.event(Some(number), answer.status());
        answer
            .into_response(Delivery {
                model: version.model.as_str(),
                version: number,
                event,
                started: self.started,
                queue: self.state.usage_queue.clone(),
                idle: self.state.upstream.timeout(),
                max_tokens: self.state.upstream.max_tokens_per_call(),
                slot,
                rewrite,
            })
            .await
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
    let reservation = quota::reserve(&req, &state, quota::kind_of(path), body.as_sent()).await?;
    let call = Call::new(&state, &req, &actor, route, &target).reserving(reservation);
    // Chat and text completions stream; embeddings do not.
    let streams = path != "embeddings";
    call.run(
        &target,
        Forwarding::post(path, None, CallBody::OpenAi { body, streams }),
        slot,
    )
    .await
}

/// An OpenAI request's target (its `model`) and its body, read within the body limit.
async fn read_openai_request(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<(Target, OpenAiBody), OpenAiError> {
    if !is_json(req) {
        return Err(ApiError::UnsupportedMediaType(
            "the request body must be JSON (content-type: application/json)".into(),
        )
        .into());
    }
    let body = read_body(payload.into_inner(), content_length(req), body_limit(state)).await?;
    let body = OpenAiBody::parse(body).map_err(|e| match e {
        BodyError::Malformed(reason) => ApiError::MalformedJson(reason),
        BodyError::Invalid(invalid) => ApiError::from(invalid),
    })?;
    Ok((Target::parse(body.model())?, body))
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
    call.run(
        &target,
        Forwarding::post(rest, Some(&query), CallBody::Raw(body)),
        slot,
    )
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
