//! [`InMemoryHealth`]: a readiness check whose outcome the test sets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

use crate::ports::{HealthCheck, HealthError, PoolStatus};

/// A dependency that is up until [`fail_with`](Self::fail_with) says otherwise, and reports the
/// pool counts it was given.
#[derive(Debug)]
pub struct InMemoryHealth {
    name: &'static str,
    failure: Mutex<Option<HealthError>>,
    pool: Option<PoolStatus>,
    checks: AtomicU64,
}

impl InMemoryHealth {
    /// An up dependency named `name` (`postgres`, `redis`, …), without a pool.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            failure: Mutex::new(None),
            pool: None,
            checks: AtomicU64::new(0),
        }
    }

    /// Reports `pool` as its pool's counts.
    #[must_use]
    pub fn with_pool_status(mut self, pool: PoolStatus) -> Self {
        self.pool = Some(pool);
        self
    }

    /// From now on checks fail with `error`; `None` makes the dependency up again.
    pub fn fail_with(&self, error: Option<HealthError>) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = error;
    }

    /// How many checks were made.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl HealthCheck for InMemoryHealth {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn check(&self) -> Result<(), HealthError> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        match self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        self.pool
    }
}
