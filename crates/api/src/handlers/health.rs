//! `/health`, `/health/ready` and `/metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use futures_util::future::join_all;
use maas_telemetry::names;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::state::{AppState, Dependency, Draining};

/// Each dependency check of `/health/ready` is cut off after this long.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Body of `/health`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    #[schema(inline)]
    pub status: LivenessStatus,
}

/// What `/health` says of the process (in lower case): it serves HTTP, nothing else is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LivenessStatus {
    /// The process answers.
    Ok,
}

/// Whether the gateway is ready to serve, as `/health/ready` says it (in lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadinessStatus {
    /// Every dependency is up (200).
    Ready,
    /// An optional dependency is down; still serving (200).
    Degraded,
    /// A required dependency is down (503).
    Unavailable,
    /// Told to stop and waiting out `server.drain_seconds`; serving goes on (503, no checks).
    Draining,
}

impl ReadinessStatus {
    /// The HTTP status `/health/ready` answers with.
    pub fn http_status(self) -> StatusCode {
        match self {
            Self::Ready | Self::Degraded => StatusCode::OK,
            Self::Unavailable | Self::Draining => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Whether one dependency answered its check, as reported (in lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// It answered.
    Up,
    /// It failed or did not answer in time.
    Down,
}

/// Body of `/health/ready`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// `ready`, `degraded`, `unavailable` or `draining`.
    #[schema(inline)]
    pub status: ReadinessStatus,
    /// One report per dependency, by name.
    pub checks: BTreeMap<String, CheckReport>,
}

/// The outcome of one dependency check.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckReport {
    /// `up` or `down`.
    #[schema(inline)]
    pub status: CheckStatus,
    /// Whether the gateway needs it to serve.
    pub required: bool,
    /// How long the check took, in milliseconds.
    pub latency_ms: f64,
    /// Why it is down (`timeout` or `error`; details are in the log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Liveness: answers as long as the process serves HTTP; checks nothing else.
#[utoipa::path(get, path = "/health", tag = "operations", security(()),
    responses((status = 200, description = "Alive", body = Liveness)))]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Liveness {
        status: LivenessStatus::Ok,
    })
}

async fn check(state: &AppState, dep: &Dependency) -> (String, CheckReport) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, dep.check.check()).await;
    let elapsed = started.elapsed();
    let name = dep.check.name();
    metrics::histogram!(names::READINESS_CHECK_DURATION_SECONDS, "dependency" => name)
        .record(elapsed.as_secs_f64());
    let error = match outcome {
        Ok(Ok(())) => None,
        // Reported as `error` whatever its kind, as before; the log tells which.
        Ok(Err(e)) => {
            slog::warn!(state.logger, "readiness check failed";
                "dependency" => name, "kind" => e.kind(), "error" => %e);
            Some("error".to_owned())
        }
        Err(_) => {
            slog::warn!(state.logger, "readiness check timed out"; "dependency" => name);
            Some("timeout".to_owned())
        }
    };
    let report = CheckReport {
        status: if error.is_none() {
            CheckStatus::Up
        } else {
            CheckStatus::Down
        },
        required: dep.required,
        // Microsecond precision is plenty; it keeps the JSON free of float noise.
        latency_ms: (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0,
        error,
    };
    (name.to_owned(), report)
}

/// Readiness: checks every dependency concurrently, each within one second.
#[utoipa::path(get, path = "/health/ready", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready, or degraded (an optional dependency is down)", body = Readiness),
        (status = 503, description = "A required dependency is down, or the server is draining before it stops", body = Readiness),
    ))]
pub async fn ready(
    state: web::Data<AppState>,
    draining: Option<web::Data<Draining>>,
) -> HttpResponse {
    if draining.is_some_and(|d| d.is_draining()) {
        let status = ReadinessStatus::Draining;
        return HttpResponse::build(status.http_status()).json(Readiness {
            status,
            checks: BTreeMap::new(),
        });
    }
    let reports = join_all(state.dependencies.iter().map(|dep| check(&state, dep))).await;
    let required_down = reports.iter().any(|(_, r)| r.required && r.error.is_some());
    let any_down = reports.iter().any(|(_, r)| r.error.is_some());
    let status = match (required_down, any_down) {
        (true, _) => ReadinessStatus::Unavailable,
        (false, true) => ReadinessStatus::Degraded,
        (false, false) => ReadinessStatus::Ready,
    };
    HttpResponse::build(status.http_status()).json(Readiness {
        status,
        checks: reports.into_iter().collect(),
    })
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    for dep in state.dependencies.iter() {
        if let Some(pool) = dep.check.pool_status() {
            let name = dep.check.name();
            for (s, n) in [
                ("idle", pool.idle),
                ("in_use", pool.in_use()),
                ("max", pool.max),
            ] {
                metrics::gauge!(names::DB_POOL_CONNECTIONS, "pool" => name, "state" => s)
                    .set(f64::from(n));
            }
        }
    }
    let mut text = state.metrics.render();
    state.upstream.balancer().render_states(&mut text);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_spelled_in_lower_case_as_before() {
        let spelled = [
            (ReadinessStatus::Ready, "ready", 200),
            (ReadinessStatus::Degraded, "degraded", 200),
            (ReadinessStatus::Unavailable, "unavailable", 503),
            (ReadinessStatus::Draining, "draining", 503),
        ];
        for (status, text, code) in spelled {
            assert_eq!(serde_json::to_value(status).ok(), Some(text.into()));
            assert_eq!(status.http_status().as_u16(), code);
        }
        assert_eq!(
            serde_json::to_value(CheckStatus::Up).ok(),
            Some("up".into())
        );
        assert_eq!(
            serde_json::to_value(CheckStatus::Down).ok(),
            Some("down".into())
        );
    }

    #[test]
    fn a_liveness_body_is_the_same_json_as_before() {
        let body = Liveness {
            status: LivenessStatus::Ok,
        };
        assert_eq!(
            serde_json::to_string(&body).ok().as_deref(),
            Some(r#"{"status":"ok"}"#)
        );
    }

    #[test]
    fn a_readiness_body_is_the_same_json_as_before() {
        let report = CheckReport {
            status: CheckStatus::Down,
            required: false,
            latency_ms: 1.5,
            error: Some("timeout".to_owned()),
        };
        let body = Readiness {
            status: ReadinessStatus::Degraded,
            checks: BTreeMap::from([("redis".to_owned(), report)]),
        };
        assert_eq!(
            serde_json::to_string(&body).ok().as_deref(),
            Some(concat!(
                r#"{"status":"degraded","checks":{"redis":"#,
                r#"{"status":"down","required":false,"latency_ms":1.5,"error":"timeout"}}}"#
            ))
        );
    }
}
