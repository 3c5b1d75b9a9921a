//! Bodies of `/api/v1/models/{name}/aliases/{alias}`: one version, or a split of several with
//! weights (canaries, blue/green).

use chrono::{DateTime, Utc};
use maas_domain::ValidationError;
use maas_domain::alias::{AliasSplit, AliasTarget, ResolvedAlias, Weight};
use maas_domain::model::Alias;
use maas_domain::values::VersionNumber;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::VersionResponse;

/// Body of `PUT /api/v1/models/{name}/aliases/{alias}`: `version` (one version takes every
/// call) or `versions` (a split), not both. The whole split is replaced.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAlias {
    /// The one version the alias points to (weight 1): the form from before splits.
    #[schema(example = 3)]
    pub version: Option<i64>,
    /// 1 to 16 distinct versions sharing the alias's calls by weight; each API key's calls
    /// all go to one of them.
    pub versions: Option<Vec<SetAliasVersion>>,
}

/// One version of a split being set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAliasVersion {
    /// An existing version of the model.
    pub version: i64,
    /// Its share of the calls relative to the others': an integer from 1 to 10,000; 1 when
    /// left out. Take a version out of the split to drain it.
    #[schema(minimum = 1, maximum = 10000, example = 90)]
    pub weight: Option<i64>,
}

impl SetAliasVersion {
    fn into_domain(self, index: usize) -> Result<AliasTarget, ValidationError> {
        let field = |name: &str| format!("versions[{index}].{name}");
        let version = VersionNumber::new(self.version)
            .map_err(|e| ValidationError::new(field("version"), e.message))?;
        let weight = match self.weight {
            Some(weight) => Weight::parse_as(&field("weight"), weight)?,
            None => Weight::ONE,
        };
        Ok(AliasTarget { version, weight })
    }
}

impl SetAlias {
    /// The split asked for. Errors name `version` (neither form given), `versions` (both, none
    /// or more than 16 listed), `versions[i].version` or `versions[i].weight`.
    pub fn into_domain(self) -> Result<AliasSplit, ValidationError> {
        match (self.version, self.versions) {
            (Some(version), None) => Ok(AliasSplit::single(VersionNumber::new(version)?)),
            (None, Some(versions)) => {
                // Counted before any entry is looked at.
                if versions.len() > AliasSplit::MAX_VERSIONS {
                    return Err(ValidationError::new(
                        "versions",
                        format!("must list 1 to {} versions", AliasSplit::MAX_VERSIONS),
                    ));
                }
                let targets = versions
                    .into_iter()
                    .enumerate()
                    .map(|(i, entry)| entry.into_domain(i))
                    .collect::<Result<Vec<_>, _>>()?;
                AliasSplit::new(targets)
            }
            (Some(_), Some(_)) => Err(ValidationError::new(
                "versions",
                "give either version (one) or versions (a split), not both",
            )),
            (None, None) => Err(ValidationError::new(
                "version",
                "give version (one version) or versions (a split of several)",
            )),
        }
    }
}

/// One version of an alias and its weight.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AliasVersionResponse {
    /// The version.
    pub version: i32,
    /// Its share of the alias's calls, relative to the other versions' weights.
    pub weight: u16,
}

impl From<AliasTarget> for AliasVersionResponse {
    fn from(t: AliasTarget) -> Self {
        Self {
            version: t.version.get(),
            weight: t.weight.get(),
        }
    }
}

/// An alias and the versions it points to (the answer to `PUT`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AliasResponse {
    /// The model's name.
    pub model: String,
    /// The alias.
    pub alias: String,
    /// The version, when the alias points at exactly one (as before splits); absent for a
    /// split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i32>,
    /// Every version it points to with its weight, in ascending version order.
    pub versions: Vec<AliasVersionResponse>,
    /// When it was last set.
    pub updated_at: DateTime<Utc>,
}

impl From<Alias> for AliasResponse {
    fn from(a: Alias) -> Self {
        let targets = a.versions.targets();
        Self {
            model: a.model.into_inner(),
            alias: a.alias.into_inner(),
            version: match targets {
                [only] => Some(only.version.get()),
                _ => None,
            },
            versions: targets.iter().copied().map(Into::into).collect(),
            updated_at: a.updated_at,
        }
    }
}

/// One version of a resolved alias: the version's fields and its weight.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WeightedVersionResponse {
    /// Its share of the alias's calls, relative to the other versions' weights.
    pub weight: u16,
    /// The version.
    #[serde(flatten)]
    pub version: VersionResponse,
}

/// An alias resolved (the answer to `GET`): at the top level its primary version's fields (its
/// only version, or the heaviest of a split, the lowest of a tie: what clients from before
/// splits read), then the alias, each version it points to with its weight, and when it was
/// set.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResolvedAliasResponse {
    /// The primary version.
    #[serde(flatten)]
    pub primary: VersionResponse,
    /// The alias.
    pub alias: String,
    /// Every version it points to with its weight, in ascending version order.
    pub versions: Vec<WeightedVersionResponse>,
    /// When the alias was last set; `null` for `latest`.
    pub alias_updated_at: Option<DateTime<Utc>>,
}

impl ResolvedAliasResponse {
    /// The answer for `resolved`; `None` for an alias without versions (no store returns one).
    pub fn new(resolved: ResolvedAlias) -> Option<Self> {
        let primary = resolved.primary()?.clone().into();
        Some(Self {
            primary,
            alias: resolved.alias.into_inner(),
            versions: resolved
                .versions
                .into_iter()
                .map(|v| WeightedVersionResponse {
                    weight: v.weight.get(),
                    version: v.version.into(),
                })
                .collect(),
            alias_updated_at: resolved.updated_at,
        })
    }
}
