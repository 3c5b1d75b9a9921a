//! Usage use-cases: storing inference usage events and reporting on them.

use std::sync::Arc;

use crate::error::DomainError;
use crate::identity::Principal;
use crate::inference::{UsageEvent, UsageQuery, UsageRow};
use crate::ports::UsageRepository;

/// Usage events in, reports out.
#[derive(Clone)]
pub struct Usage {
    repo: Arc<dyn UsageRepository>,
}

impl Usage {
    /// Usage over a store.
    pub fn new(repo: Arc<dyn UsageRepository>) -> Self {
        Self { repo }
    }

    /// Stores a batch of events in one statement.
    pub async fn record(&self, events: &[UsageEvent]) -> Result<(), DomainError> {
        if events.is_empty() {
            return Ok(());
        }
        Ok(self.repo.insert_usage(events).await?)
    }

    /// Aggregated usage: members see only their own keys' calls; admins see all, or one user's.
    /// A key restricted to some models (its `models` allowlist) sees only those: its report is
    /// narrowed to them, and one that names another `model` is refused (403), as the registry
    /// refuses the key every other model.
    ///
    /// # Errors
    /// [`DomainError::Forbidden`] for another user's usage (members) or a model outside the
    /// key's allowlist; a validation error when `to` is not after `from`; the store's errors.
    pub async fn report(
        &self,
        actor: &Principal,
        mut query: UsageQuery,
    ) -> Result<Vec<UsageRow>, DomainError> {
        if !actor.is_admin() {
            if query.user_id.is_some_and(|id| id != actor.user_id) {
                return Err(DomainError::Forbidden(
                    "only admins may see other users' usage".to_owned(),
                ));
            }
            query.user_id = Some(actor.user_id);
        }
        if let Some(allowlist) = &actor.models {
            if let Some(model) = &query.model
                && !allowlist.allows(model)
            {
                return Err(DomainError::Forbidden(format!(
                    "this API key may not be used with model '{model}'"
                )));
            }
            query.within = Some(allowlist.clone());
        }
        if let (Some(from), Some(to)) = (query.from, query.to)
            && from >= to
        {
            return Err(crate::ValidationError::new("to", "must be after 'from'").into());
        }
        Ok(self.repo.aggregate_usage(&query).await?)
    }
}
