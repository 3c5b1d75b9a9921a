//! How a version is served: the model server's own name for the model ([`ServedModel`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// The name a version's model server knows the model by (vLLM's `--served-model-name`, an
/// Ollama tag such as `llama3.1:8b`, `meta-llama/Llama-3.1-8B-Instruct`): what the gateway puts
/// in the `model` field of the calls it forwards. 1–256 characters, no control characters, not
/// blank, no whitespace at either end.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ServedModel(String);

impl ServedModel {
    /// Longest accepted name, in characters.
    pub const MAX_LEN: usize = 256;

    /// Parses and validates, naming `served_model` in the error.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        let field = "served_model";
        let len = raw.chars().count();
        if len == 0 || len > Self::MAX_LEN {
            return Err(ValidationError::new(
                field,
                format!("must be 1 to {} characters long", Self::MAX_LEN),
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(ValidationError::new(
                field,
                "must not contain control characters",
            ));
        }
        if raw.trim() != raw {
            return Err(ValidationError::new(
                field,
                "must not start or end with whitespace",
            ));
        }
        Ok(Self(raw))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ServedModel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(raw).map_err(|e| serde::de::Error::custom(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_names_are_what_model_servers_use_and_nothing_unprintable() {
        for ok in [
            "llama3.1:8b",
            "meta-llama/Llama-3.1-8B-Instruct",
            "gpt 4o (eu)",
            "modèle-été",
            &"x".repeat(256),
        ] {
            assert_eq!(ServedModel::parse(ok).expect(ok).as_str(), ok);
        }
        for bad in [
            "",
            " ",
            " lead",
            "trail\u{20}",
            "new\nline",
            "tab\there",
            "nul\u{0}",
            "del\u{7f}",
            "c1\u{85}",
            &"x".repeat(257),
        ] {
            assert_eq!(
                ServedModel::parse(bad).expect_err(bad).field,
                "served_model"
            );
        }
    }
}
