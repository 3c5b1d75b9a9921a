//! [`RedisHealth`]: the readiness check of Redis.

use std::time::Duration;

use async_trait::async_trait;
use maas_domain::ports::{HealthCheck, HealthError, PoolStatus};

use crate::pool::RedisPool;

/// Pings Redis through the pool for `/health/ready`.
#[derive(Debug, Clone)]
pub struct RedisHealth {
    pool: RedisPool,
    timeout: Duration,
}

impl RedisHealth {
    /// A check on `pool` that gives up after `timeout` (checkout included).
    pub fn new(pool: RedisPool, timeout: Duration) -> Self {
        Self { pool, timeout }
    }
}

#[async_trait]
impl HealthCheck for RedisHealth {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn check(&self) -> Result<(), HealthError> {
        let ping = async {
            let mut conn = self.pool.get().await.map_err(|e| match e {
                // The pool retries refused connections until its timeout, so this is also what
                // a Redis that refuses connections looks like.
                bb8::RunError::TimedOut => {
                    HealthError::Timeout(self.pool.config().connection_timeout)
                }
                bb8::RunError::User(e) => HealthError::Unreachable(format!("cannot connect: {e}")),
            })?;
            let reply: String = redis::cmd("PING")
                .query_async(&mut *conn)
                .await
                .map_err(|e| HealthError::Failed(format!("PING: {e}")))?;
            if reply == "PONG" {
                Ok(())
            } else {
                Err(HealthError::Failed(format!("PING answered {reply:?}")))
            }
        };
        match tokio::time::timeout(self.timeout, ping).await {
            Ok(result) => result,
            Err(_elapsed) => Err(HealthError::Timeout(self.timeout)),
        }
    }

    /// Callers hold a pooled connection only while checking it out (see [`crate::pool`]), so
    /// `in_use` is near zero even under load; `open` tells how many sockets are in use.
    fn pool_status(&self) -> Option<PoolStatus> {
        let state = self.pool.state();
        Some(PoolStatus {
            max: self.pool.config().max_size,
            open: state.connections,
            idle: state.idle_connections,
        })
    }
}
