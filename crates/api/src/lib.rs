//! # maas-api
//!
//! The HTTP face of maas-gateway on actix-web: routes, handlers, request-id / access-log /
//! metrics middleware, extractors that turn bad input into `application/problem+json` 4xx
//! responses naming the field, and the OpenAPI document with a vendored Swagger UI.
//!
//! It depends only on `maas-domain` (use-cases and ports) and `maas-telemetry`; storage and
//! cache adapters are handed in through [`AppState`], so another service can mount the registry
//! API over its own adapters:
//!
//! ```no_run
//! # async fn demo(state: maas_api::AppState) -> std::io::Result<()> {
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let settings = maas_api::ServerSettings::default();
//! maas_api::run(listener, state, &settings)?.await
//! # }
//! ```

pub mod auth;
pub mod client_address;
pub mod deadline;
pub mod dto;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod meters;
pub mod middleware;
pub mod openapi;
pub mod proxy;
pub mod quota;
pub mod request_id;
pub mod settings;
pub mod state;
pub mod usage;

use std::net::TcpListener;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, Resource, web};

use crate::error::ApiError;
use crate::extract::BodyLimit;
use crate::handlers::{aliases, docs, grants, health, inference, keys, models, users, versions};

pub use crate::settings::{
    AuthSettings, MetricsSettings, RateLimitSettings, RegistrySettings, ServerSettings,
    UpstreamSettings, UsageSettings,
};
pub use crate::state::{AppState, Dependency, Draining};

/// A resource whose wrong-method requests get a 405 problem instead of an empty body.
fn resource(path: &str) -> Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(req.method().to_string()))
}

async fn route_not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound(req.path().to_owned()))
}

/// Registers every route of the gateway, `/metrics` included.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(operations)
        .service(resource("/metrics").route(web::get().to(health::metrics)))
        .configure(public_routes);
}

/// Liveness and readiness: on every listener.
fn operations(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/health").route(web::get().to(health::live)))
        .service(resource("/health/ready").route(web::get().to(health::ready)));
}

/// Everything but the operations routes.
fn public_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/api/openapi.json").route(web::get().to(docs::openapi_json)))
        .service(resource("/docs").route(web::get().to(docs::swagger_ui)))
        .service(resource("/docs/swagger-ui-bundle.js").route(web::get().to(docs::swagger_js)))
        .service(resource("/docs/swagger-ui.css").route(web::get().to(docs::swagger_css)))
        .service(
            web::scope("/api/v1")
                .wrap(actix_web::middleware::from_fn(auth::authenticate))
                .configure(api_v1)
                .default_service(web::to(route_not_found)),
        )
        .service(
            web::scope("/v1")
                .wrap(actix_web::middleware::from_fn(auth::authenticate))
                .configure(openai_v1)
                .default_service(web::to(inference::not_found)),
        );
}

/// A `/v1` resource: wrong methods answer in OpenAI's error shape.
fn openai_resource(path: &str) -> Resource {
    web::resource(path).default_service(web::to(inference::method_not_allowed))
}

/// The OpenAI-compatible and raw inference routes (paths relative to `/v1`).
fn openai_v1(cfg: &mut web::ServiceConfig) {
    cfg.service(
        openai_resource("/chat/completions").route(web::post().to(inference::chat_completions)),
    )
    .service(openai_resource("/completions").route(web::post().to(inference::completions)))
    .service(openai_resource("/embeddings").route(web::post().to(inference::embeddings)))
    .service(openai_resource("/models").route(web::get().to(inference::list_models)))
    .service(
        openai_resource("/models/{name}/invoke/{path:.*}").route(web::post().to(inference::invoke)),
    );
}

/// The authenticated registry and identity API (paths relative to `/api/v1`).
fn api_v1(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/models")
            .route(web::post().to(models::create))
            .route(web::get().to(models::list)),
    )
    .service(
        resource("/models/{name}")
            .route(web::get().to(models::get))
            .route(web::patch().to(models::update))
            .route(web::delete().to(models::delete)),
    )
    .service(
        resource("/models/{name}/versions")
            .route(web::post().to(versions::create))
            .route(web::get().to(versions::list)),
    )
    .service(
        resource("/models/{name}/versions/{version}")
            .route(web::get().to(versions::get))
            .route(web::patch().to(versions::update))
            .route(web::delete().to(versions::delete)),
    )
    .service(
        resource("/models/{name}/aliases/{alias}")
            .route(web::put().to(aliases::put))
            .route(web::get().to(aliases::get))
            .route(web::delete().to(aliases::delete)),
    )
    .service(
        resource("/models/{name}/grants")
            .route(web::post().to(grants::create))
            .route(web::get().to(grants::list)),
    )
    .service(resource("/models/{name}/grants/{username}").route(web::delete().to(grants::delete)))
    .service(
        resource("/users")
            .route(web::post().to(users::create))
            .route(web::get().to(users::list)),
    )
    .service(resource("/users/me").route(web::get().to(users::me)))
    .service(resource("/users/{username}").route(web::patch().to(users::update)))
    .service(
        resource("/keys")
            .route(web::post().to(keys::create))
            .route(web::get().to(keys::list)),
    )
    .service(
        resource("/keys/{id}")
            .route(web::patch().to(keys::update))
            .route(web::delete().to(keys::revoke)),
    )
    .service(resource("/usage").route(web::get().to(handlers::usage::report)));
}

/// The whole application: state, routes, a problem+json 404 for unknown paths, the body
/// deadline, and the request-context middleware outermost. `server.max_body_bytes` bounds every
/// JSON body and `server.body_read_timeout_seconds` every body's arrival; with
/// `server.admin_port` set, `/metrics` is left out (it is served by [`run_admin`] instead).
pub fn app(
    state: AppState,
    settings: ServerSettings,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let metrics = settings.admin_port.is_none();
    App::new()
        .app_data(web::Data::new(state))
        .app_data(web::Data::new(BodyLimit(settings.max_body_bytes)))
        .app_data(web::Data::new(deadline::BodyReadTimeout(
            std::time::Duration::from_secs(settings.body_read_timeout_seconds),
        )))
        .configure(|cfg| {
            if metrics {
                routes(cfg);
            } else {
                cfg.configure(operations).configure(public_routes);
            }
        })
        .default_service(web::to(route_not_found))
        .wrap(actix_web::middleware::from_fn(deadline::body_deadline))
        .wrap(actix_web::middleware::from_fn(middleware::request_context))
}

/// Serves the app on `listener` until SIGTERM or SIGINT, then drains in-flight requests for
/// up to `server.shutdown_timeout_seconds`. Await the returned server; it resolves after the
/// drain.
///
/// With `server.drain_seconds` above 0 the signals are the gateway's own: on the first one,
/// `/health/ready` answers 503 `draining` for that long while everything else is served as
/// before, and only then does the server stop listening and drain. Call it inside a Tokio
/// runtime.
pub fn run(
    listener: TcpListener,
    state: AppState,
    settings: &ServerSettings,
) -> std::io::Result<Server> {
    let app_settings = settings.clone();
    let drain = std::time::Duration::from_secs(settings.drain_seconds);
    let draining = web::Data::new(state::Draining::default());
    let app_draining = draining.clone();
    let mut server = HttpServer::new(move || {
        app(state.clone(), app_settings.clone()).app_data(app_draining.clone())
    })
    // Streamed (chunked) answers go out in several small writes; with Nagle's algorithm on,
    // the second waits for a delayed ACK (40 ms on Linux).
    .tcp_nodelay(true)
    .shutdown_timeout(settings.shutdown_timeout_seconds)
    .listen(listener)?;
    if let Some(workers) = settings.workers {
        server = server.workers(workers.max(1));
    }
    if drain.is_zero() {
        return Ok(server.run());
    }
    let server = server.disable_signals().run();
    let handle = server.handle();
    tokio::spawn(async move {
        stop_signal().await;
        draining.start();
        tokio::time::sleep(drain).await;
        handle.stop(true).await;
    });
    Ok(server)
}

/// The admin listener (`server.admin_port`): `/metrics`, `/health` and `/health/ready` only,
/// one worker, no signal handling of its own (stop it with its handle when the main server
/// stops).
pub fn run_admin(listener: TcpListener, state: AppState) -> std::io::Result<Server> {
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .configure(operations)
            .service(resource("/metrics").route(web::get().to(health::metrics)))
            .default_service(web::to(route_not_found))
            .wrap(actix_web::middleware::from_fn(middleware::request_context))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run())
}

/// The first SIGTERM or SIGINT (Ctrl-C). Where a handler cannot be installed, only the other
/// signal counts.
async fn stop_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
