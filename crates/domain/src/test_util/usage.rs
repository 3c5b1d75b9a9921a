//! [`InMemoryUsage`]: usage events in memory, aggregated as `PgUsageRepository` aggregates them.
//! Tokens counted against quotas are summed as it sums them: a call's `quota_tokens` when it
//! reserved tokens, else its known prompt and completion tokens.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::support::Controls;
use crate::error::RepoError;
use crate::inference::{UsageEvent, UsageGrouping, UsageQuery, UsageRow};
use crate::ports::{QuotaSubject, UsageRepository};

/// Usage events in memory.
///
/// Reports as in Postgres: `from` inclusive, `to` exclusive, `model` and `user_id` exact; one row
/// per model name, key id (hyphenated lower-case UUID) or UTC day (`YYYY-MM-DD`), in byte order
/// of the group, or per model and version (`model:version`, `model` alone for no version),
/// ordered by model in byte order, then version, no version first; `errors` counts statuses of
/// 400 and above; missing token counts add nothing; `avg_latency_ms` is the mean of
/// `latency_ms`, and the percentiles interpolate between the two nearest of the sorted
/// latencies, as `percentile_cont` does. A batch is stored whole.
#[derive(Debug, Default)]
pub struct InMemoryUsage {
    events: Mutex<Vec<UsageEvent>>,
    controls: Controls,
}

#[derive(Default)]
struct Sums {
    requests: i64,
    errors: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    latencies_ms: Vec<i32>,
}

/// A group's sort key: its text, or the model and version when grouped by version.
fn group_of(event: &UsageEvent, grouping: UsageGrouping) -> (String, Option<i32>) {
    match grouping {
        UsageGrouping::Model => (event.model.clone(), None),
        UsageGrouping::Key => (event.key_id.to_string(), None),
        UsageGrouping::Day => (event.created_at.format("%Y-%m-%d").to_string(), None),
        UsageGrouping::Version => (event.model.clone(), event.version),
    }
}

/// `percentile_cont(fraction)` over `sorted`, which is not empty.
fn percentile(sorted: &[i32], fraction: f64) -> f64 {
    let position = fraction * (sorted.len() - 1) as f64;
    let (below, above) = (position.floor(), position.ceil());
    let low = f64::from(sorted[below as usize]);
    let high = f64::from(sorted[above as usize]);
    low + (position - below) * (high - low)
}

fn selected(event: &UsageEvent, query: &UsageQuery) -> bool {
    query.from.is_none_or(|from| event.created_at >= from)
        && query.to.is_none_or(|to| event.created_at < to)
        && query
            .model
            .as_ref()
            .is_none_or(|model| event.model == model.as_str())
        && query.user_id.is_none_or(|user| event.user_id == user)
        && query.within.as_ref().is_none_or(|within| {
            within
                .names()
                .iter()
                .any(|name| name.as_str() == event.model)
        })
}

/// What an event counts against quotas, as the Postgres adapter sums it: its charge when it had
/// a reservation, else its known token counts.
fn quota_tokens(event: &UsageEvent) -> u64 {
    event.quota_tokens().unwrap_or_else(|| {
        [event.prompt_tokens, event.completion_tokens]
            .into_iter()
            .flatten()
            .map(|n| u64::try_from(n).unwrap_or(0))
            .sum()
    })
}

impl InMemoryUsage {
    /// No events.
    pub fn new() -> Self {
        Self::default()
    }

    /// Call counts, the outage switch and holds (see [`Controls`]).
    pub fn controls(&self) -> &Controls {
        &self.controls
    }

    /// Every event stored so far, in the order stored.
    pub fn events(&self) -> Vec<UsageEvent> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl UsageRepository for InMemoryUsage {
    async fn insert_usage(&self, events: &[UsageEvent]) -> Result<(), RepoError> {
        self.controls.enter("insert_usage")?;
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(events);
        self.controls.leave("insert_usage").await;
        Ok(())
    }

    async fn tokens_used(
        &self,
        subject: QuotaSubject,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<u64, RepoError> {
        self.controls.enter("tokens_used")?;
        let used = self
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|e| (from..to).contains(&e.created_at))
            .filter(|e| match subject {
                QuotaSubject::Key(id) => e.key_id == id,
                QuotaSubject::User(id) => e.user_id == id,
            })
            .map(quota_tokens)
            .sum();
        self.controls.leave("tokens_used").await;
        Ok(used)
    }

    async fn tokens_used_by_key(
        &self,
        user_id: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(Uuid, u64)>, RepoError> {
        self.controls.enter("tokens_used_by_key")?;
        let mut by_key: BTreeMap<Uuid, u64> = BTreeMap::new();
        for event in self
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|e| e.user_id == user_id && (from..to).contains(&e.created_at))
        {
            *by_key.entry(event.key_id).or_default() += quota_tokens(event);
        }
        self.controls.leave("tokens_used_by_key").await;
        Ok(by_key.into_iter().collect())
    }

    async fn aggregate_usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, RepoError> {
        self.controls.enter("aggregate_usage")?;
        let mut groups: BTreeMap<(String, Option<i32>), Sums> = BTreeMap::new();
        for event in self
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|e| selected(e, query))
        {
            let sums = groups.entry(group_of(event, query.group_by)).or_default();
            sums.requests += 1;
            sums.errors += i64::from(event.status >= 400);
            sums.prompt_tokens += event.prompt_tokens.unwrap_or(0);
            sums.completion_tokens += event.completion_tokens.unwrap_or(0);
            sums.latencies_ms.push(event.latency_ms);
        }
        self.controls.leave("aggregate_usage").await;
        Ok(groups
            .into_iter()
            .map(|((group, version), mut sums)| {
                sums.latencies_ms.sort_unstable();
                let total: i64 = sums.latencies_ms.iter().map(|l| i64::from(*l)).sum();
                let by_version = query.group_by == UsageGrouping::Version;
                UsageRow {
                    group: match version {
                        Some(version) => format!("{group}:{version}"),
                        None => group.clone(),
                    },
                    model: by_version.then_some(group),
                    version,
                    requests: sums.requests,
                    errors: sums.errors,
                    prompt_tokens: sums.prompt_tokens,
                    completion_tokens: sums.completion_tokens,
                    // Exact for any number of calls a test makes.
                    avg_latency_ms: total as f64 / sums.requests as f64,
                    p50_latency_ms: percentile(&sums.latencies_ms, 0.5),
                    p95_latency_ms: percentile(&sums.latencies_ms, 0.95),
                }
            })
            .collect())
    }
}
