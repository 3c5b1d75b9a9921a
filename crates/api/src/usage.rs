//! The usage queue: inference calls push events without waiting; one background task settles
//! their token reservations in Redis and writes them to Postgres, in batches. A full queue drops
//! (and counts) rather than blocks; a dropped event's reservation stays as it was (the safe
//! side).

use maas_domain::inference::UsageEvent;
use maas_domain::{Quotas, Usage};
use maas_telemetry::names;
use tokio::sync::mpsc;

/// The sending side, cloned into every worker.
#[derive(Clone, Debug)]
pub struct UsageQueue {
    tx: mpsc::Sender<UsageEvent>,
}

/// The receiving side; hand it to [`write_usage`].
#[derive(Debug)]
pub struct UsageReceiver {
    rx: mpsc::Receiver<UsageEvent>,
}

impl UsageQueue {
    /// A queue holding at most `capacity` events.
    pub fn new(capacity: usize) -> (Self, UsageReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx }, UsageReceiver { rx })
    }

    /// Queues an event without waiting; drops and counts it when the queue is full.
    pub fn push(&self, event: UsageEvent) {
        if self.tx.try_send(event).is_err() {
            metrics::counter!(names::USAGE_EVENTS_DROPPED_TOTAL, "reason" => "queue_full")
                .increment(1);
        }
    }
}

/// How long the writer lets events gather after the first one before it writes them: one INSERT
/// per window instead of one per trickle of events.
pub const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(200);

/// Writes queued events in batches of up to `batch_size` until every [`UsageQueue`] is dropped
/// (the server stopped), then returns: so awaiting it after shutdown flushes the queue. Before a
/// batch is written, the token reservations of its calls are settled with their usage through
/// `quotas` (one limiter call per batch), off the response path; when the limiter fails they
/// stay as they were, and are counted (`maas_quota_settlements_total{result="failed"}`).
///
/// The writer wakes once per [`BATCH_WINDOW`], not once per event: after the first event of a
/// window it sleeps for the window, then writes everything queued (in batches of `batch_size`).
/// Waking a thread of another runtime for every call would cost the request path more than the
/// writing does. The queue must hold a window's worth of events (`usage.queue_capacity`, 10,000
/// by default: 50,000 calls/s); past that, events are dropped and counted.
pub async fn write_usage(
    mut receiver: UsageReceiver,
    usage: Usage,
    quotas: Option<Quotas>,
    batch_size: usize,
    log: slog::Logger,
) {
    let batch_size = batch_size.max(1);
    let mut batch = Vec::with_capacity(batch_size);
    loop {
        if receiver.rx.recv_many(&mut batch, batch_size).await == 0 {
            return;
        }
        tokio::time::sleep(BATCH_WINDOW).await;
        loop {
            while batch.len() < batch_size {
                match receiver.rx.try_recv() {
                    Ok(event) => batch.push(event),
                    // Empty, or closed (shutdown): write what there is; the next recv ends.
                    Err(_) => break,
                }
            }
            let full = batch.len() == batch_size;
            if let Some(quotas) = &quotas {
                settle(quotas, &batch, &log).await;
            }
            if let Err(e) = usage.record(&batch).await {
                slog::error!(log, "writing usage events failed; they are lost";
                    "events" => batch.len(), "error" => e.to_string());
                metrics::counter!(names::USAGE_EVENTS_DROPPED_TOTAL, "reason" => "write_failed")
                    .increment(batch.len() as u64);
            }
            batch.clear();
            if !full {
                break;
            }
        }
    }
}

/// Settles the reservations of a batch's calls.
async fn settle(quotas: &Quotas, batch: &[UsageEvent], log: &slog::Logger) {
    match quotas.settle(batch).await {
        Ok(0) => {}
        Ok(settled) => {
            metrics::counter!(names::QUOTA_SETTLEMENTS_TOTAL, "result" => "settled")
                .increment(settled as u64);
        }
        Err(e) => {
            let reserved = batch.iter().filter(|e| e.reservation.is_some()).count();
            slog::warn!(log, "settling token reservations failed; they stay as reserved";
                "calls" => reserved, "error" => e.to_string());
            metrics::counter!(names::QUOTA_SETTLEMENTS_TOTAL, "result" => "failed")
                .increment(reserved as u64);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A usage event of a successful chat completion without token counts.
    pub(crate) fn event() -> UsageEvent {
        UsageEvent {
            key_id: uuid::Uuid::nil(),
            user_id: uuid::Uuid::nil(),
            model: "m".into(),
            version: Some(1),
            route: "/v1/chat/completions".into(),
            status: 200,
            latency_ms: 1,
            upstream_ms: Some(1),
            prompt_tokens: None,
            completion_tokens: None,
            created_at: chrono::Utc::now(),
            reservation: None,
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_new_events_instead_of_waiting() {
        let (queue, mut receiver) = UsageQueue::new(2);
        for _ in 0..5 {
            queue.push(event());
        }
        drop(queue);
        let mut got = Vec::new();
        while receiver.rx.recv_many(&mut got, 10).await > 0 {}
        assert_eq!(got.len(), 2, "capacity 2: three were dropped, none waited");
    }
}
