//! Opaque keyset-pagination cursors. Clients must treat them as opaque; the server can change
//! their encoding without breaking anyone who does.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::ValidationError;
use crate::values::{ModelName, VersionNumber};

pub(crate) fn bad_cursor() -> ValidationError {
    ValidationError::new("cursor", "is not a cursor this server issued")
}

pub(crate) fn encode_tagged(tag: &str, value: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{tag}{value}"))
}

pub(crate) fn decode_tagged(raw: &str, tag: &str) -> Result<String, ValidationError> {
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad_cursor())?;
    let text = String::from_utf8(bytes).map_err(|_| bad_cursor())?;
    text.strip_prefix(tag)
        .map(str::to_owned)
        .ok_or_else(bad_cursor)
}

/// Cursor of the model list: the last name of the previous page.
pub fn encode_model_cursor(last: &ModelName) -> String {
    encode_tagged("m:", last.as_str())
}

/// Reverses [`encode_model_cursor`]; a cursor from elsewhere is a `cursor` validation error.
pub fn decode_model_cursor(raw: &str) -> Result<ModelName, ValidationError> {
    ModelName::parse(decode_tagged(raw, "m:")?).map_err(|_| bad_cursor())
}

/// Cursor of a version list: the last (lowest) version number of the previous page.
pub fn encode_version_cursor(last: VersionNumber) -> String {
    encode_tagged("v:", &last.to_string())
}

/// Reverses [`encode_version_cursor`].
pub fn decode_version_cursor(raw: &str) -> Result<VersionNumber, ValidationError> {
    VersionNumber::parse(&decode_tagged(raw, "v:")?).map_err(|_| bad_cursor())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_foreign_input() {
        let name = ModelName::parse("llama").expect("valid");
        assert_eq!(decode_model_cursor(&encode_model_cursor(&name)), Ok(name));
        let v = VersionNumber::new(7).expect("valid");
        assert_eq!(decode_version_cursor(&encode_version_cursor(v)), Ok(v));
        for bad in ["", "!!!", "bTpVUFBFUg", &encode_version_cursor(v)] {
            assert_eq!(decode_model_cursor(bad).expect_err(bad).field, "cursor");
        }
    }
}
