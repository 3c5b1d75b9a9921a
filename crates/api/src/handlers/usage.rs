//! `/api/v1/usage`: aggregated inference usage.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use maas_domain::ValidationError;
use maas_domain::inference::{UsageGrouping, UsageQuery, UsageRow};
use maas_domain::quotas::{MonthReport, QuotaUse};
use maas_domain::values::ModelName;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Actor;
use crate::error::{ApiError, Problem};
use crate::extract::parse_query;
use crate::state::AppState;

/// Query of `GET /api/v1/usage`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// From this time, inclusive (RFC 3339).
    pub from: Option<String>,
    /// Until this time, exclusive (RFC 3339).
    pub to: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// `model` (default), `key`, `day` or `version` (per model and version).
    pub group_by: Option<String>,
    /// Admins only: one user's keys.
    #[param(value_type = Option<uuid::Uuid>)]
    pub user_id: Option<String>,
}

/// One row of the report.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageItem {
    /// Model name, key id, day (`YYYY-MM-DD`), or `model:version` (`model` alone for calls
    /// that failed before a version was chosen).
    pub group: String,
    /// Grouped by version: the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Grouped by version: the version (absent for calls without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i32>,
    /// Calls.
    pub requests: i64,
    /// Calls answered with a status of 400 or more.
    pub errors: i64,
    /// Prompt tokens reported by the model servers.
    pub prompt_tokens: i64,
    /// Completion tokens reported by the model servers.
    pub completion_tokens: i64,
    /// Mean total latency, in milliseconds.
    pub avg_latency_ms: f64,
    /// Median total latency, in milliseconds (interpolated between the two nearest calls).
    pub p50_latency_ms: f64,
    /// 95th percentile of the total latency, in milliseconds (interpolated likewise).
    pub p95_latency_ms: f64,
}

impl From<UsageRow> for UsageItem {
    fn from(r: UsageRow) -> Self {
        Self {
            group: r.group,
            model: r.model,
            version: r.version,
            requests: r.requests,
            errors: r.errors,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            avg_latency_ms: r.avg_latency_ms,
            p50_latency_ms: r.p50_latency_ms,
            p95_latency_ms: r.p95_latency_ms,
        }
    }
}

/// The usage report.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    /// The grouping used.
    pub group_by: String,
    /// One row per group, ordered by group.
    pub items: Vec<UsageItem>,
    /// This month's use of the token quotas of the caller's keys (admins: of `user_id`'s, their
    /// own without it), whatever `from`, `to` and `model` say.
    pub quota: QuotaReport,
}

/// A month's use of the token quotas of a user's keys.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QuotaReport {
    /// The calendar month (UTC), `2027-01`.
    pub month: String,
    /// The user.
    pub user_id: uuid::Uuid,
    /// All the user's keys together (the user's own quotas, or the defaults).
    pub user: QuotaUseItem,
    /// Each of the user's keys, newest first (revoked ones included).
    pub keys: Vec<KeyQuotaItem>,
}

/// Tokens counted against quotas this month, and the quotas.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QuotaUseItem {
    /// Tokens counted this month: each settled call's charge (its reported usage, or its
    /// reservation when its usage is unknown), as recorded.
    pub tokens_used: u64,
    /// Tokens per month; `null`: no quota.
    pub monthly_tokens: Option<u64>,
    /// What is left of `monthly_tokens` (0 once used up); `null`: no quota.
    pub monthly_tokens_left: Option<u64>,
    /// Tokens per minute; `null`: no limit.
    pub tpm: Option<u64>,
}

impl From<QuotaUse> for QuotaUseItem {
    fn from(q: QuotaUse) -> Self {
        Self {
            tokens_used: q.tokens_used,
            monthly_tokens: q.monthly_tokens,
            monthly_tokens_left: q.monthly_tokens.map(|m| m.saturating_sub(q.tokens_used)),
            tpm: q.tpm,
        }
    }
}

/// One key's use of its quotas this month.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyQuotaItem {
    /// The key's id.
    pub key_id: uuid::Uuid,
    /// Its label.
    pub name: String,
    /// Its use and quotas.
    #[serde(flatten)]
    pub quota: QuotaUseItem,
}

impl From<MonthReport> for QuotaReport {
    fn from(r: MonthReport) -> Self {
        Self {
            month: r.month.to_string(),
            user_id: r.user_id,
            user: r.user.into(),
            keys: r
                .keys
                .into_iter()
                .map(|k| KeyQuotaItem {
                    key_id: k.key_id,
                    name: k.name.as_str().to_owned(),
                    quota: k.quota.into(),
                })
                .collect(),
        }
    }
}

fn time(field: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, ValidationError> {
    raw.map(|raw| {
        DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| ValidationError::new(field, "must be an RFC 3339 time"))
    })
    .transpose()
}

/// Aggregated usage of inference calls: members see their own keys, admins everyone's; and this
/// month's use of the token quotas of the caller's keys (admins: `user_id`'s).
#[utoipa::path(get, path = "/api/v1/usage", tag = "inference", params(UsageParams),
    responses(
        (status = 200, description = "The report", body = UsageReport),
        (status = 403, description = "A member asked for another user, or a key restricted to some models named another model", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid parameter", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn report(
    req: HttpRequest,
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let params: UsageParams = parse_query(&req)?;
    let group_by = params
        .group_by
        .as_deref()
        .map_or(Ok(UsageGrouping::Model), UsageGrouping::parse)?;
    let query = UsageQuery {
        from: time("from", params.from.as_deref())?,
        to: time("to", params.to.as_deref())?,
        model: params
            .model
            .map(|m| ModelName::parse_as("model", m))
            .transpose()?,
        within: None,
        user_id: params
            .user_id
            .as_deref()
            .map(|raw| {
                uuid::Uuid::parse_str(raw)
                    .map_err(|_| ValidationError::new("user_id", "must be a UUID"))
            })
            .transpose()?,
        group_by,
    };
    let user_id = query.user_id;
    let rows = state.usage.report(&actor.0, query).await?;
    let quota = state
        .quotas
        .month_report(&actor.0, user_id, Utc::now())
        .await?;
    Ok(HttpResponse::Ok().json(UsageReport {
        group_by: params.group_by.unwrap_or_else(|| "model".to_owned()),
        items: rows.into_iter().map(UsageItem::from).collect(),
        quota: quota.into(),
    }))
}
