//! Alias use-cases of [`Registry`]: setting an alias's split, resolving it (cached), deleting it.

use super::Registry;
use crate::alias::{AliasSplit, ResolvedAlias};
use crate::error::{DomainError, RepoError, ValidationError};
use crate::identity::Principal;
use crate::inference::Target;
use crate::model::Alias;
use crate::ports::Field;
use crate::values::{AliasName, ModelName};

impl Registry {
    /// Points `alias` at one version (a [`crate::values::VersionNumber`]) or at several with
    /// weights (an [`AliasSplit`]), creating it or replacing its whole split in one step: every
    /// replica routes by the new split from its next call on. `latest` is reserved.
    pub async fn set_alias(
        &self,
        actor: &Principal,
        model: &ModelName,
        alias: &AliasName,
        split: impl Into<AliasSplit>,
    ) -> Result<Alias, DomainError> {
        reject_latest(alias)?;
        self.authorize(actor, model).await?;
        let result = self.repo.set_alias(model, alias, &split.into()).await;
        self.invalidate(model).await;
        Ok(result?)
    }

    /// The versions an alias points to, with their weights (cached); `latest` is the highest
    /// version.
    pub async fn resolve_alias(
        &self,
        actor: &Principal,
        model: &ModelName,
        alias: &AliasName,
    ) -> Result<ResolvedAlias, DomainError> {
        self.usable(actor, model).await?;
        self.alias(model, alias).await
    }

    pub(super) async fn alias(
        &self,
        model: &ModelName,
        alias: &AliasName,
    ) -> Result<ResolvedAlias, DomainError> {
        self.cached(model, Field::Alias(alias.clone()), async {
            if alias.is_latest() {
                let latest = self.repo.latest_version(model).await?;
                Ok(ResolvedAlias::single(alias.clone(), latest))
            } else {
                Ok(self.repo.resolve_alias(model, alias).await?)
            }
        })
        .await
    }

    /// What a bare model name is served by (cached): its `production` alias when set, else the
    /// highest version with an endpoint, standing in for `production`.
    pub(super) async fn default_target(
        &self,
        model: &ModelName,
    ) -> Result<ResolvedAlias, DomainError> {
        self.cached(model, Field::DefaultTarget, async {
            let production = AliasName::parse(Target::DEFAULT_ALIAS)?;
            match self.repo.resolve_alias(model, &production).await {
                Ok(resolved) => Ok(resolved),
                Err(RepoError::NotFound(_)) => {
                    let latest = self.repo.latest_servable_version(model).await?;
                    Ok(ResolvedAlias::single(production, latest))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Removes an alias. `latest` is reserved.
    pub async fn delete_alias(
        &self,
        actor: &Principal,
        model: &ModelName,
        alias: &AliasName,
    ) -> Result<(), DomainError> {
        reject_latest(alias)?;
        self.authorize(actor, model).await?;
        let result = self.repo.delete_alias(model, alias).await;
        self.invalidate(model).await;
        Ok(result?)
    }
}

fn reject_latest(alias: &AliasName) -> Result<(), DomainError> {
    if alias.is_latest() {
        return Err(ValidationError::new(
            "alias",
            "'latest' is reserved: it always resolves to the highest version",
        )
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_cannot_be_set_or_deleted() {
        let latest = AliasName::parse("latest").expect("valid");
        let err = reject_latest(&latest).expect_err("reserved");
        assert!(matches!(err, DomainError::Validation(v) if v.field == "alias"));
    }
}
