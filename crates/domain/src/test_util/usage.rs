//! [`InMemoryUsage`]: usage events in memory, aggregated as `PgUsageRepository` aggregates them.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

use super::support::Controls;
use crate::error::RepoError;
use crate::inference::{UsageEvent, UsageGrouping, UsageQuery, UsageRow};
use crate::ports::UsageRepository;

/// Usage events in memory.
///
/// Reports as in Postgres: `from` inclusive, `to` exclusive, `model` and `user_id` exact; one row
/// per model name, key id (hyphenated lower-case UUID) or UTC day (`YYYY-MM-DD`), in byte order
/// of the group; `errors` counts statuses of 400 and above; missing token counts add nothing;
/// `avg_latency_ms` is the mean of `latency_ms`. A batch is stored whole.
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
    latency_ms: i64,
}

fn group_of(event: &UsageEvent, grouping: UsageGrouping) -> String {
    match grouping {
        UsageGrouping::Model => event.model.clone(),
        UsageGrouping::Key => event.key_id.to_string(),
        UsageGrouping::Day => event.created_at.format("%Y-%m-%d").to_string(),
    }
}

fn selected(event: &UsageEvent, query: &UsageQuery) -> bool {
    query.from.is_none_or(|from| event.created_at >= from)
        && query.to.is_none_or(|to| event.created_at < to)
        && query
            .model
            .as_ref()
            .is_none_or(|model| event.model == model.as_str())
        && query.user_id.is_none_or(|user| event.user_id == user)
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

    async fn aggregate_usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, RepoError> {
        self.controls.enter("aggregate_usage")?;
        let mut groups: BTreeMap<String, Sums> = BTreeMap::new();
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
            sums.latency_ms += i64::from(event.latency_ms);
        }
        self.controls.leave("aggregate_usage").await;
        Ok(groups
            .into_iter()
            .map(|(group, sums)| UsageRow {
                group,
                requests: sums.requests,
                errors: sums.errors,
                prompt_tokens: sums.prompt_tokens,
                completion_tokens: sums.completion_tokens,
                // Exact for any number of calls a test makes.
                avg_latency_ms: sums.latency_ms as f64 / sums.requests as f64,
            })
            .collect())
    }
}
