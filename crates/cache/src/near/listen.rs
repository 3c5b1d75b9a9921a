//! [`listen_for_invalidations`]: the one subscription per process that drops, from the
//! [`LocalStore`], every scope any replica invalidates (see the [parent module](super)).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use maas_domain::ports::Scope;

use super::LocalStore;
use crate::error::CacheError;
use crate::settings::RedisSettings;

/// How often the listener pings Redis over its subscription to find a dead connection.
pub const LISTENER_PING_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between two attempts to (re)subscribe.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// First wait after a lost or failed subscription.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The task that keeps `local` coherent with the invalidations every replica publishes under
/// `settings.key_prefix` (see [`crate::cache::invalidation_channel`]): spawn the future it
/// returns, and abort it at shutdown. It holds one subscription, re-established with backoff
/// whenever it is lost, and pings Redis over it every [`LISTENER_PING_INTERVAL`]; an answer
/// slower than `timeout` counts as a lost subscription. It logs to the `log` crate; see
/// [`listen_for_invalidations_with_logger`] to give it a logger.
///
/// # Errors
/// [`CacheError::InvalidUrl`] for a URL the Redis client rejects.
pub fn listen_for_invalidations(
    settings: &RedisSettings,
    local: Arc<LocalStore>,
    timeout: Duration,
) -> Result<impl Future<Output = ()> + Send + 'static, CacheError> {
    listen_for_invalidations_with_logger(settings, local, timeout, crate::call::default_logger())
}

/// [`listen_for_invalidations`] reporting through `logger`: when the subscription is made and
/// lost (and, at debug level, every failed attempt to make it).
///
/// # Errors
/// [`CacheError::InvalidUrl`] for a URL the Redis client rejects.
pub fn listen_for_invalidations_with_logger(
    settings: &RedisSettings,
    local: Arc<LocalStore>,
    timeout: Duration,
    logger: slog::Logger,
) -> Result<impl Future<Output = ()> + Send + 'static, CacheError> {
    let client = redis::Client::open(settings.connection_url()).map_err(|source| {
        CacheError::InvalidUrl {
            url: settings.redacted().connection_url(),
            source,
        }
    })?;
    let channel = crate::cache::invalidation_channel(&settings.key_prefix);
    Ok(listen(client, channel, local, timeout, logger))
}

async fn listen(
    client: redis::Client,
    channel: String,
    local: Arc<LocalStore>,
    timeout: Duration,
    logger: slog::Logger,
) {
    let mut delay = FIRST_RETRY_DELAY;
    loop {
        match subscribe(&client, &channel, timeout).await {
            Ok((sink, stream)) => {
                local.go_live();
                delay = FIRST_RETRY_DELAY;
                slog::info!(logger, "listening for cache invalidations"; "channel" => &channel);
                let reason = follow(sink, stream, &local, timeout).await;
                local.go_dark();
                slog::warn!(logger,
                    "cache invalidation subscription lost; the in-process cache is bypassed \
                     until it is back";
                    "channel" => &channel, "reason" => reason);
            }
            Err(reason) => {
                local.go_dark();
                slog::debug!(logger, "cannot subscribe to cache invalidations; retrying";
                    "channel" => &channel, "reason" => reason,
                    "retry_in_ms" => u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
    timeout: Duration,
) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), String> {
    let connect = async {
        let (mut sink, stream) = client.get_async_pubsub().await?.split();
        sink.subscribe(channel).await?;
        Ok::<_, redis::RedisError>((sink, stream))
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// Applies messages until the subscription fails; returns why it did.
async fn follow(
    mut sink: redis::aio::PubSubSink,
    mut stream: redis::aio::PubSubStream,
    local: &LocalStore,
    timeout: Duration,
) -> String {
    let mut ping = tokio::time::interval(LISTENER_PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return "connection closed".to_owned();
                };
                local.received.fetch_add(1, Ordering::Relaxed);
                apply_invalidation(local, message.get_payload::<String>().ok().as_deref());
            }
            _ = ping.tick() => {
                match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("ping failed: {e}"),
                    Err(_) => return format!("ping unanswered within {} ms", timeout.as_millis()),
                }
            }
        }
    }
}

/// Drops the scope an invalidation message names; a message that names none this build knows
/// (not text, or from a newer build) drops everything, which is always safe.
fn apply_invalidation(local: &LocalStore, payload: Option<&str>) {
    match payload.map(Scope::parse) {
        Some(Ok(scope)) => local.drop_scope(&scope),
        Some(Err(_)) | None => local.clear(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use maas_domain::ports::{Cached, Field};
    use maas_domain::values::ModelName;

    use super::*;

    fn model(name: &str) -> Scope {
        Scope::Model(ModelName::parse(name).expect("valid"))
    }

    fn live_store(ttl: Duration, max_entries: usize) -> Arc<LocalStore> {
        let store = LocalStore::new(ttl, max_entries);
        store.go_live();
        store
    }

    #[test]
    fn a_message_drops_the_scope_it_names_and_an_unreadable_one_drops_everything() {
        let store = live_store(Duration::from_secs(60), 10);
        let key = Scope::Key(maas_domain::identity::KeyHash::from_bytes(&[1; 32]).expect("hash"));
        for scope in [model("a"), model("b"), key.clone()] {
            store.insert(
                store.epoch(),
                &scope,
                &Field::Model,
                &Cached::from(&b"v"[..]),
            );
        }
        apply_invalidation(&store, Some("model:a"));
        assert!(store.get(&model("a"), &Field::Model).is_none());
        assert_eq!(store.len(), 2);
        apply_invalidation(&store, Some(&key.to_string()));
        assert!(store.get(&key, &Field::Model).is_none());
        assert_eq!(store.len(), 1);
        apply_invalidation(&store, Some("tenant:a"));
        assert!(
            store.is_empty(),
            "a scope this build does not know drops everything"
        );
        store.insert(
            store.epoch(),
            &model("b"),
            &Field::Model,
            &Cached::from(&b"v"[..]),
        );
        apply_invalidation(&store, None);
        assert!(store.is_empty(), "so does a payload that is not text");
    }
}
