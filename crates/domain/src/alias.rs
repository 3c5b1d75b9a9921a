//! Aliases that split calls between versions (canaries, blue/green), and how a call picks one.
//!
//! An alias points at 1 to [`AliasSplit::MAX_VERSIONS`] versions, each with a [`Weight`]. The
//! versions take consecutive ranges of `[0, 1)` in ascending version order, each as wide as its
//! share of the total weight. A call goes to the version whose range holds its client's
//! [`place`]: a point fixed by SHA-256 of the API key's id, the model and the alias. So:
//!
//! - one key always gets the same version of a split, on every replica and across restarts
//!   (nothing random, no process-seeded hasher), and different aliases split independently;
//! - only the proportions matter: 9/1 and 90/10 send every key to the same version;
//! - between two versions, raising the higher one's weight (the usual canary) only moves keys
//!   onto it, and lowering it only moves keys off it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::error::ValidationError;
use crate::model::ModelVersion;
use crate::values::{AliasName, ModelName, VersionNumber};

/// A version's share of its alias's calls, relative to the other versions' weights: 1 to
/// [`Weight::MAX`]. Zero is not a weight: a drained version is taken out of the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Weight(u16);

impl Weight {
    /// The largest weight (so 1 in 10,000 is the finest share of two versions).
    pub const MAX: u16 = 10_000;
    /// The weight of a version set without one (`{"version": 3}`).
    pub const ONE: Self = Self(1);

    /// Accepts 1..=[`Weight::MAX`]; the error names `field`.
    pub fn parse_as(field: &str, raw: i64) -> Result<Self, ValidationError> {
        u16::try_from(raw)
            .ok()
            .filter(|w| (1..=Self::MAX).contains(w))
            .map(Self)
            .ok_or_else(|| {
                ValidationError::new(field, format!("must be an integer from 1 to {}", Self::MAX))
            })
    }

    /// The weight.
    pub fn get(self) -> u16 {
        self.0
    }
}

/// Checked when read back too (from the cache or the database), so that a weight of 0 can never
/// reach a split.
impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = i64::deserialize(deserializer)?;
        Self::parse_as("weight", raw).map_err(serde::de::Error::custom)
    }
}

/// One version an alias points at, with its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasTarget {
    /// The version.
    pub version: VersionNumber,
    /// Its share of the alias's calls.
    pub weight: Weight,
}

/// What an alias points at: 1 to [`AliasSplit::MAX_VERSIONS`] distinct versions with their
/// weights, kept in ascending version order (the order their ranges are laid out in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AliasSplit(Vec<AliasTarget>);

impl AliasSplit {
    /// The most versions one alias splits between: enough for any rollout, few enough that
    /// resolving and picking stay trivially cheap.
    pub const MAX_VERSIONS: usize = 16;

    /// A split of `targets`, in any order. Errors name `versions` (none, or too many) or
    /// `versions[i].version` (listed twice), `i` counting from 0 in the order given.
    pub fn new(mut targets: Vec<AliasTarget>) -> Result<Self, ValidationError> {
        if targets.is_empty() || targets.len() > Self::MAX_VERSIONS {
            return Err(ValidationError::new(
                "versions",
                format!("must list 1 to {} versions", Self::MAX_VERSIONS),
            ));
        }
        // Quadratic, over at most 16 entries.
        for (i, target) in targets.iter().enumerate() {
            if targets[..i].iter().any(|t| t.version == target.version) {
                return Err(ValidationError::new(
                    format!("versions[{i}].version"),
                    format!("version {} is listed twice", target.version),
                ));
            }
        }
        targets.sort_by_key(|t| t.version);
        Ok(Self(targets))
    }

    /// One version taking every call (what `{"version": n}` sets).
    pub fn single(version: VersionNumber) -> Self {
        Self(vec![AliasTarget {
            version,
            weight: Weight::ONE,
        }])
    }

    /// The versions and weights, in ascending version order.
    pub fn targets(&self) -> &[AliasTarget] {
        &self.0
    }

    /// The split with `version` taken out, the others keeping their weights (so their shares
    /// grow in proportion); `None` when it was the last. What deleting a version does to the
    /// aliases on it.
    pub fn without(&self, version: VersionNumber) -> Option<Self> {
        let left: Vec<AliasTarget> = self
            .0
            .iter()
            .filter(|t| t.version != version)
            .copied()
            .collect();
        (!left.is_empty()).then_some(Self(left))
    }

    /// The version with the most weight (the lowest of those tied): the one replicas of builds
    /// from before splits send every call of the alias to.
    pub fn primary(&self) -> VersionNumber {
        let mut primary = self.0[0];
        for target in &self.0[1..] {
            if target.weight > primary.weight {
                primary = *target;
            }
        }
        primary.version
    }
}

impl From<VersionNumber> for AliasSplit {
    fn from(version: VersionNumber) -> Self {
        Self::single(version)
    }
}

/// Read back (from the database) with the same rules as [`AliasSplit::new`].
impl<'de> Deserialize<'de> for AliasSplit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let targets = Vec::<AliasTarget>::deserialize(deserializer)?;
        Self::new(targets).map_err(serde::de::Error::custom)
    }
}

/// A client's place along the splits of `alias` of `model`: the first 8 bytes of
/// SHA-256(key id ‖ model ‖ 0 ‖ alias), big-endian; read as a fraction of 2⁶⁴, the point in
/// `[0, 1)` that picks the client's version. The same on every replica, in every build that
/// keeps this function, whatever the process.
pub fn place(client: Uuid, model: &ModelName, alias: &AliasName) -> u64 {
    let mut hash = Sha256::new();
    hash.update(client.as_bytes());
    hash.update(model.as_str().as_bytes());
    // Names never hold a NUL byte, so no two (model, alias) pairs hash the same text.
    hash.update([0]);
    hash.update(alias.as_str().as_bytes());
    let digest = hash.finalize();
    let mut first = [0_u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Which of `weights` (laid out in order) holds `place`: the index `i` such that
/// `place / 2⁶⁴` falls in the `i`-th range. `None` only when `weights` is empty.
pub fn pick_index(place: u64, weights: &[Weight]) -> Option<usize> {
    let total: u64 = weights.iter().map(|w| u64::from(w.get())).sum();
    // place · total / 2⁶⁴, exactly: a point in [0, total).
    let point = (u128::from(place) * u128::from(total)) >> 64;
    let mut upper: u128 = 0;
    weights.iter().position(|w| {
        upper += u128::from(w.get());
        point < upper
    })
}

/// A version of a resolved alias, with its weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedVersion {
    /// The version.
    pub version: ModelVersion,
    /// Its share of the alias's calls.
    pub weight: Weight,
}

/// What an alias resolves to: each version it points at, with its weight, in ascending version
/// order. This is what the cache holds for an alias (`latest` included, as one version) and for
/// a model's default target (its `production` alias, or else the highest version with an
/// endpoint as one version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedAlias {
    /// The model.
    pub model: ModelName,
    /// The alias (`production` for a default target).
    pub alias: AliasName,
    /// The versions, at least one.
    pub versions: Vec<WeightedVersion>,
    /// When the alias was last set; `None` for `latest` and a default target without alias.
    pub updated_at: Option<DateTime<Utc>>,
}

impl ResolvedAlias {
    /// One version standing in for an alias (`latest`, a default target without alias).
    pub fn single(alias: AliasName, version: ModelVersion) -> Self {
        Self {
            model: version.model.clone(),
            alias,
            versions: vec![WeightedVersion {
                version,
                weight: Weight::ONE,
            }],
            updated_at: None,
        }
    }

    /// The version the calls of API key `client` go to (see the module's documentation).
    /// `None` only for an alias without versions, which no store returns.
    pub fn pick(mut self, client: Uuid) -> Option<ModelVersion> {
        let index = if self.versions.len() == 1 {
            0
        } else {
            let weights: Vec<Weight> = self.versions.iter().map(|v| v.weight).collect();
            pick_index(place(client, &self.model, &self.alias), &weights)?
        };
        (index < self.versions.len()).then(|| self.versions.swap_remove(index).version)
    }

    /// The primary version: the heaviest, the lowest of a tie (as [`AliasSplit::primary`]).
    /// `None` only for an alias without versions, which no store returns.
    pub fn primary(&self) -> Option<&ModelVersion> {
        let mut primary = self.versions.first()?;
        for candidate in &self.versions[1..] {
            if candidate.weight > primary.weight {
                primary = candidate;
            }
        }
        Some(&primary.version)
    }

    /// The split, without the versions' details.
    pub fn split(&self) -> Vec<AliasTarget> {
        self.versions
            .iter()
            .map(|v| AliasTarget {
                version: v.version.version,
                weight: v.weight,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weight(n: i64) -> Weight {
        Weight::parse_as("weight", n).expect("valid")
    }

    fn target(version: i64, w: i64) -> AliasTarget {
        AliasTarget {
            version: VersionNumber::new(version).expect("valid"),
            weight: weight(w),
        }
    }

    #[test]
    fn weights_are_integers_from_one_to_ten_thousand() {
        assert_eq!(weight(1).get(), 1);
        assert_eq!(weight(10_000).get(), 10_000);
        for bad in [0, -1, 10_001, i64::MAX] {
            assert_eq!(
                Weight::parse_as("versions[1].weight", bad)
                    .expect_err("bad")
                    .field,
                "versions[1].weight"
            );
        }
        assert!(serde_json::from_str::<Weight>("0").is_err());
        assert_eq!(
            serde_json::from_str::<Weight>("7").expect("valid"),
            weight(7)
        );
    }

    #[test]
    fn a_split_has_one_to_sixteen_distinct_versions_kept_in_version_order() {
        let split = AliasSplit::new(vec![target(4, 10), target(3, 90)]).expect("valid");
        assert_eq!(split.targets(), [target(3, 90), target(4, 10)]);
        assert_eq!(
            AliasSplit::new(vec![]).expect_err("empty").field,
            "versions"
        );
        let many = (1..=17).map(|v| target(v, 1)).collect();
        assert_eq!(AliasSplit::new(many).expect_err("17").field, "versions");
        assert!(AliasSplit::new((1..=16).map(|v| target(v, 1)).collect()).is_ok());
        let twice = AliasSplit::new(vec![target(3, 1), target(4, 1), target(3, 2)]);
        assert_eq!(twice.expect_err("duplicate").field, "versions[2].version");
        assert!(serde_json::from_str::<AliasSplit>("[]").is_err());
    }

    #[test]
    fn a_deleted_version_leaves_the_split_and_the_last_one_takes_the_alias_with_it() {
        let split = AliasSplit::new(vec![target(3, 90), target(4, 10), target(5, 10)]);
        let split = split.expect("valid");
        let v = |n| VersionNumber::new(n).expect("valid");
        let left = split.without(v(3)).expect("two left");
        assert_eq!(left.targets(), [target(4, 10), target(5, 10)]);
        assert_eq!(split.without(v(9)).as_ref(), Some(&split));
        assert_eq!(AliasSplit::single(v(3)).without(v(3)), None);
    }

    #[test]
    fn the_primary_is_the_heaviest_version_and_the_lowest_of_a_tie() {
        let primary = |targets| AliasSplit::new(targets).expect("valid").primary().get();
        assert_eq!(primary(vec![target(3, 90), target(4, 10)]), 3);
        assert_eq!(primary(vec![target(3, 10), target(4, 90)]), 4);
        assert_eq!(primary(vec![target(5, 50), target(2, 50)]), 2);
    }

    #[test]
    fn a_place_depends_on_the_key_the_model_and_the_alias_and_nothing_else() {
        let key = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let model = ModelName::parse("llama").expect("valid");
        let prod = AliasName::parse("production").expect("valid");
        // Fixed forever: replicas of every build must agree on it.
        assert_eq!(place(key, &model, &prod), place(key, &model, &prod));
        assert_eq!(place(key, &model, &prod), 0x206e_5837_aec2_44c3);
        let canary = AliasName::parse("canary").expect("valid");
        assert_ne!(place(key, &model, &prod), place(key, &model, &canary));
        let other = ModelName::parse("llam").expect("valid");
        assert_ne!(place(key, &model, &prod), place(key, &other, &prod));
    }

    #[test]
    fn ranges_are_laid_out_in_order_and_sized_by_weight() {
        let weights = [weight(90), weight(10)];
        assert_eq!(pick_index(0, &weights), Some(0));
        assert_eq!(pick_index(u64::MAX, &weights), Some(1));
        // The first place at or past 9/10 of 2⁶⁴ is the second range's first.
        let nine_tenths = u64::try_from(((1_u128 << 64) * 9).div_ceil(10)).expect("below 2⁶⁴");
        assert_eq!(pick_index(nine_tenths, &weights), Some(1));
        assert_eq!(pick_index(nine_tenths - 1, &weights), Some(0));
        assert_eq!(pick_index(5, &[]), None);
    }

    #[test]
    fn shares_follow_the_weights_and_only_proportions_matter() {
        let model = ModelName::parse("m").expect("valid");
        let alias = AliasName::parse("production").expect("valid");
        let places: Vec<u64> = (0..20_000_u128)
            .map(|n| place(Uuid::from_u128(n), &model, &alias))
            .collect();
        let count = |weights: &[Weight], index: usize| {
            places
                .iter()
                .filter(|p| pick_index(**p, weights) == Some(index))
                .count()
        };
        let canary = count(&[weight(90), weight(10)], 1);
        assert!(
            (1_700..=2_300).contains(&canary),
            "10 % of 20,000: {canary}"
        );
        for p in &places {
            assert_eq!(
                pick_index(*p, &[weight(9), weight(1)]),
                pick_index(*p, &[weight(90), weight(10)])
            );
        }
    }

    #[test]
    fn between_two_versions_raising_the_canary_only_moves_clients_onto_it() {
        let model = ModelName::parse("m").expect("valid");
        let alias = AliasName::parse("production").expect("valid");
        let steps = [[99, 1], [90, 10], [50, 50], [10, 90], [1, 99]];
        for n in 0..5_000_u128 {
            let p = place(Uuid::from_u128(n), &model, &alias);
            let picks: Vec<_> = steps
                .iter()
                .map(|[a, b]| pick_index(p, &[weight(*a), weight(*b)]))
                .collect();
            // Once on the canary (index 1), a client stays there as its weight grows.
            let first = picks
                .iter()
                .position(|i| *i == Some(1))
                .unwrap_or(picks.len());
            assert!(
                picks[first..].iter().all(|i| *i == Some(1)),
                "client {n}: {picks:?}"
            );
        }
    }
}
