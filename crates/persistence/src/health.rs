//! [`PgHealth`]: the readiness check of PostgreSQL.

use async_trait::async_trait;
use diesel_async::RunQueryDsl;
use maas_domain::ports::{HealthCheck, HealthError, PoolStatus};

use crate::pool::PgPool;

/// Checks PostgreSQL with `SELECT 1` through the pool, and reports the pool's counts.
#[derive(Clone, Debug)]
pub struct PgHealth {
    pool: PgPool,
    max: u32,
}

impl PgHealth {
    /// A check of the database behind `pool`.
    pub fn new(pool: PgPool) -> Self {
        let max = pool.config().max_size;
        Self { pool, max }
    }
}

#[async_trait]
impl HealthCheck for PgHealth {
    fn name(&self) -> &'static str {
        "postgres"
    }

    /// `SELECT 1` on a pooled connection, or, when every connection of the pool is busy, on a
    /// connection of its own: a pool saturated by load is not a database that is down, and a
    /// replica that reported it so would be taken out of its load balancer with all the others
    /// at the moment they are all busiest.
    async fn check(&self) -> Result<(), HealthError> {
        let state = self.pool.state();
        if state.connections >= self.max && state.idle_connections == 0 {
            let mut conn = self
                .pool
                .dedicated_connection()
                .await
                .map_err(|e| HealthError::Unreachable(format!("cannot connect: {e}")))?;
            return select_one(&mut conn).await;
        }
        let mut conn = self.pool.get().await.map_err(|e| match e {
            bb8::RunError::TimedOut => HealthError::Timeout(self.pool.config().connection_timeout),
            bb8::RunError::User(e) => HealthError::Unreachable(format!("cannot connect: {e}")),
        })?;
        select_one(&mut conn).await
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        let state = self.pool.state();
        Some(PoolStatus {
            max: self.max,
            open: state.connections,
            idle: state.idle_connections,
        })
    }
}

async fn select_one(conn: &mut diesel_async::AsyncPgConnection) -> Result<(), HealthError> {
    diesel::sql_query("SELECT 1")
        .execute(conn)
        .await
        .map(drop)
        .map_err(|e| HealthError::Failed(format!("SELECT 1: {e}")))
}
