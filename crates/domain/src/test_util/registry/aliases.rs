//! Aliases of the in-memory registry, kept as Postgres keeps them: each alias a split of 1 to 16
//! versions with weights; setting one replaces its whole split or changes nothing (a missing
//! version is reported, the lowest first); deleting a version takes it out of every split, and
//! an alias whose last version goes is deleted with it.

use chrono::{DateTime, Utc};

use super::{Entry, version_not_found};
use crate::alias::{AliasSplit, ResolvedAlias, WeightedVersion};
use crate::error::RepoError;
use crate::model::Alias;
use crate::values::{AliasName, ModelName, VersionNumber};

pub(super) fn alias_not_found(model: &ModelName, alias: &AliasName) -> RepoError {
    RepoError::NotFound(format!("alias '{alias}' of model '{model}' not found"))
}

/// Creates `alias` or replaces its split, if every version of `split` exists.
pub(super) fn set(
    entry: &mut Entry,
    alias: &AliasName,
    split: &AliasSplit,
    now: DateTime<Utc>,
) -> Result<Alias, RepoError> {
    let model = &entry.model.name;
    if let Some(missing) = split
        .targets()
        .iter()
        .find(|t| !entry.versions.contains_key(&t.version))
    {
        return Err(version_not_found(model, missing.version));
    }
    entry.aliases.insert(alias.clone(), (split.clone(), now));
    Ok(Alias {
        model: model.clone(),
        alias: alias.clone(),
        versions: split.clone(),
        updated_at: now,
    })
}

/// The versions `alias` points at, with their weights.
pub(super) fn resolve(entry: &Entry, alias: &AliasName) -> Result<ResolvedAlias, RepoError> {
    let model = &entry.model.name;
    let (split, updated_at) = entry
        .aliases
        .get(alias)
        .ok_or_else(|| alias_not_found(model, alias))?;
    let versions = split
        .targets()
        .iter()
        .map(|t| {
            let version = entry.versions.get(&t.version).cloned().ok_or_else(|| {
                RepoError::Internal(format!("alias '{alias}' points at a deleted version"))
            })?;
            Ok(WeightedVersion {
                version,
                weight: t.weight,
            })
        })
        .collect::<Result<_, RepoError>>()?;
    Ok(ResolvedAlias {
        model: model.clone(),
        alias: alias.clone(),
        versions,
        updated_at: Some(*updated_at),
    })
}

/// Takes a deleted `version` out of every alias of the model; deletes the aliases it was the
/// last version of.
pub(super) fn drop_version(entry: &mut Entry, version: VersionNumber) {
    entry.aliases = std::mem::take(&mut entry.aliases)
        .into_iter()
        .filter_map(|(alias, (split, updated_at))| {
            split
                .without(version)
                .map(|left| (alias, (left, updated_at)))
        })
        .collect();
}
