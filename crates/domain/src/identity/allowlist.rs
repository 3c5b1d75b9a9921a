//! [`ModelAllowlist`]: the models an API key may be used with.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::values::ModelName;

/// The models one API key may be used with, by name: 1 to [`MAX`](Self::MAX) distinct names,
/// kept sorted. A key without one may be used with every model its user may use; a key with
/// one, only with those of them that are on it.
///
/// Names are not checked against the registry when a key is created: a name that does not
/// exist, or that the user may not use, allows nothing (what is usable is decided on every call
/// by the registry's own rules). Cheap to clone: a principal carries it on every request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<ModelName>", into = "Vec<ModelName>")]
pub struct ModelAllowlist(Arc<[ModelName]>);

impl ModelAllowlist {
    /// Most names on one key: the list travels with every authenticated request.
    pub const MAX: usize = 100;
    const FIELD: &'static str = "models";

    /// Validates each name (`models[i]` in the error), the count (`models`) and drops repeats.
    ///
    /// # Errors
    /// A validation error naming `models` (or `models[i]`) for an empty list, more than
    /// [`MAX`](Self::MAX) names, or an invalid name.
    pub fn parse(raw: Vec<String>) -> Result<Self, ValidationError> {
        if raw.len() > Self::MAX {
            return Err(Self::too_many());
        }
        let names = raw
            .into_iter()
            .enumerate()
            .map(|(i, name)| ModelName::parse_as(&format!("{}[{i}]", Self::FIELD), name))
            .collect::<Result<Vec<_>, _>>()?;
        Self::try_from(names)
    }

    fn too_many() -> ValidationError {
        ValidationError::new(
            Self::FIELD,
            format!(
                "must name 1 to {} models (leave it out for every model)",
                Self::MAX
            ),
        )
    }

    /// Whether `model` is on the list.
    pub fn allows(&self, model: &ModelName) -> bool {
        self.0.binary_search(model).is_ok()
    }

    /// Whether every name on this list is on `other` too.
    pub fn is_within(&self, other: &Self) -> bool {
        self.0.iter().all(|name| other.allows(name))
    }

    /// The names, sorted.
    pub fn names(&self) -> &[ModelName] {
        &self.0
    }
}

impl TryFrom<Vec<ModelName>> for ModelAllowlist {
    type Error = ValidationError;

    fn try_from(mut names: Vec<ModelName>) -> Result<Self, ValidationError> {
        names.sort_unstable();
        names.dedup();
        if names.is_empty() || names.len() > Self::MAX {
            return Err(Self::too_many());
        }
        Ok(Self(names.into()))
    }
}

impl From<ModelAllowlist> for Vec<ModelName> {
    fn from(list: ModelAllowlist) -> Self {
        list.0.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Result<ModelAllowlist, ValidationError> {
        ModelAllowlist::parse(names.iter().map(|n| (*n).to_owned()).collect())
    }

    fn name(raw: &str) -> ModelName {
        ModelName::parse(raw).expect("valid")
    }

    #[test]
    fn a_list_allows_exactly_its_names_sorted_and_without_repeats() {
        let allowed = list(&["b", "a", "b"]).expect("valid");
        assert_eq!(allowed.names(), [name("a"), name("b")]);
        assert!(allowed.allows(&name("a")) && allowed.allows(&name("b")));
        assert!(!allowed.allows(&name("c")));
        assert!(list(&["a"]).expect("valid").is_within(&allowed));
        assert!(!allowed.is_within(&list(&["a"]).expect("valid")));
    }

    #[test]
    fn a_list_is_one_to_a_hundred_valid_names() {
        assert_eq!(list(&[]).expect_err("empty").field, "models");
        let many: Vec<String> = (0..=ModelAllowlist::MAX).map(|i| format!("m{i}")).collect();
        assert_eq!(
            ModelAllowlist::parse(many.clone()).expect_err("101").field,
            "models"
        );
        assert!(ModelAllowlist::parse(many[..ModelAllowlist::MAX].to_vec()).is_ok());
        assert_eq!(list(&["ok", "Not OK"]).expect_err("bad").field, "models[1]");
    }

    #[test]
    fn it_serializes_as_a_list_of_names_and_reads_back_only_a_valid_one() {
        let allowed = list(&["b", "a"]).expect("valid");
        let json = serde_json::to_string(&allowed).expect("json");
        assert_eq!(json, r#"["a","b"]"#);
        assert_eq!(
            serde_json::from_str::<ModelAllowlist>(&json).expect("back"),
            allowed
        );
        assert!(serde_json::from_str::<ModelAllowlist>("[]").is_err());
    }
}
