//! [`PgHealth`]: the readiness check of PostgreSQL.

use async_trait::async_trait;
use diesel_async::RunQueryDsl;
use maas_domain::ports::{HealthCheck, PoolStatus};

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

    async fn check(&self) -> Result<(), String> {
        let mut conn = self.pool.get().await.map_err(|e| match e {
            bb8::RunError::TimedOut => "timed out waiting for a database connection".to_owned(),
            bb8::RunError::User(e) => format!("cannot connect to the database: {e}"),
        })?;
        diesel::sql_query("SELECT 1")
            .execute(&mut conn)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
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
