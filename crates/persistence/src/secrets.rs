//! Secrets at rest: the upstream credentials of versions are stored encrypted with AES-256-GCM
//! under `secrets.encryption_key`, never in plain text and never in the cache.
//!
//! A stored value is `enc:v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`: a fresh random
//! 96-bit nonce per value, and the key's id (the first 4 bytes of its SHA-256, in hex), so that
//! a value written under a key that has since become one of `secrets.previous_keys` is still
//! read. `maas-gateway secrets rotate` ([`crate::rotate_secrets`]) writes every value again
//! under the current key; a value without the `enc:v1:` prefix is one written before
//! encryption existed, read as it is until it is rotated.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use maas_domain::RepoError;
use maas_domain::inference::UpstreamSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What every encrypted value starts with.
pub(crate) const PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 12;

/// The `secrets` section: the keys upstream credentials are encrypted with.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsSettings {
    /// The key new values are encrypted with: 32 bytes, base64. Unset: upstream credentials
    /// cannot be stored (422), and stored ones written before encryption are still read.
    pub encryption_key: Option<String>,
    /// Keys values may still be encrypted with (after a key change, until `secrets rotate`).
    /// In the environment, comma-separated.
    #[serde(deserialize_with = "comma_separated")]
    pub previous_keys: Vec<String>,
}

fn comma_separated<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }
    let items = match Raw::deserialize(d)? {
        Raw::List(items) => items,
        Raw::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    Ok(items
        .into_iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect())
}

impl SecretsSettings {
    /// A copy that is safe to print: every key becomes `***`.
    pub fn redacted(&self) -> Self {
        Self {
            encryption_key: self.encryption_key.as_ref().map(|_| "***".to_owned()),
            previous_keys: self
                .previous_keys
                .iter()
                .map(|_| "***".to_owned())
                .collect(),
        }
    }

    /// The keys, checked.
    ///
    /// # Errors
    /// A message naming the setting whose value is not 32 bytes of base64.
    pub fn keys(&self) -> Result<SecretKeys, String> {
        let current = self
            .encryption_key
            .as_deref()
            .filter(|k| !k.trim().is_empty())
            .map(|k| Key::parse(k).map_err(|e| format!("secrets.encryption_key {e}")))
            .transpose()?;
        let previous = self
            .previous_keys
            .iter()
            .enumerate()
            .map(|(i, k)| Key::parse(k).map_err(|e| format!("secrets.previous_keys[{i}] {e}")))
            .collect::<Result<_, _>>()?;
        Ok(SecretKeys { current, previous })
    }
}

/// Never shows a key.
impl fmt::Debug for SecretsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.redacted();
        f.debug_struct("SecretsSettings")
            .field("encryption_key", &shown.encryption_key)
            .field("previous_keys", &shown.previous_keys)
            .finish()
    }
}

/// One AES-256 key and its id.
#[derive(Clone)]
struct Key {
    id: String,
    cipher: Aes256Gcm,
}

impl Key {
    fn parse(base64: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(base64.trim())
            .map_err(|_| "must be base64 (e.g. `openssl rand -base64 32`)".to_owned())?;
        if bytes.len() != 32 {
            return Err(format!("must be 32 bytes, not {}", bytes.len()));
        }
        let digest = Sha256::digest(&bytes);
        let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        let cipher =
            Aes256Gcm::new_from_slice(&bytes).map_err(|_| "must be 32 bytes".to_owned())?;
        Ok(Self { id, cipher })
    }
}

/// The current key and the previous ones.
#[derive(Clone, Default)]
pub struct SecretKeys {
    current: Option<Key>,
    previous: Vec<Key>,
}

impl fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKeys")
            .field("current", &self.current.as_ref().map(|k| &k.id))
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SecretKeys {
    /// Whether new secrets can be stored (a current key is configured).
    pub fn can_store(&self) -> bool {
        self.current.is_some()
    }

    /// `secret` as it is stored: encrypted under the current key.
    ///
    /// # Errors
    /// [`RepoError::Internal`] without a current key (the use-cases refuse before that), or
    /// when the system's random source fails.
    pub(crate) fn seal(&self, secret: &UpstreamSecret) -> Result<String, RepoError> {
        let key = self.current.as_ref().ok_or_else(|| {
            RepoError::Internal("no secrets.encryption_key to store the credential".to_owned())
        })?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| RepoError::Internal(format!("no random nonce: {e}")))?;
        let sealed = key
            .cipher
            .encrypt(Nonce::from_slice(&nonce), secret.expose().as_bytes())
            .map_err(|_| RepoError::Internal("encryption failed".to_owned()))?;
        let mut payload = nonce.to_vec();
        payload.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}:{}", key.id, STANDARD.encode(payload)))
    }

    /// The secret a stored value holds.
    ///
    /// # Errors
    /// [`RepoError::Internal`] (naming no part of the value) when it was encrypted under a key
    /// that is not configured, or does not decrypt.
    pub(crate) fn open(&self, stored: &str) -> Result<UpstreamSecret, RepoError> {
        let broken =
            |why: &str| RepoError::Internal(format!("model_versions.upstream_api_key: {why}"));
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            // Written before encryption existed.
            return UpstreamSecret::parse(stored.to_owned())
                .map_err(|_| broken("not a credential"));
        };
        let (id, payload) = rest.split_once(':').ok_or_else(|| broken("malformed"))?;
        let key = self
            .current
            .iter()
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| {
                broken(&format!(
                    "encrypted under key {id}, which is neither secrets.encryption_key nor one of secrets.previous_keys"
                ))
            })?;
        let payload = STANDARD.decode(payload).map_err(|_| broken("malformed"))?;
        if payload.len() <= NONCE_LEN {
            return Err(broken("malformed"));
        }
        let (nonce, sealed) = payload.split_at(NONCE_LEN);
        let plain = key
            .cipher
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| broken("does not decrypt"))?;
        let plain = String::from_utf8(plain).map_err(|_| broken("not a credential"))?;
        UpstreamSecret::parse(plain).map_err(|_| broken("not a credential"))
    }

    /// Whether `stored` is already encrypted under the current key.
    pub(crate) fn is_current(&self, stored: &str) -> bool {
        self.current.as_ref().is_some_and(|key| {
            stored
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(id, _)| id == key.id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    fn keys(current: Option<&str>, previous: &[&str]) -> SecretKeys {
        SecretsSettings {
            encryption_key: current.map(str::to_owned),
            previous_keys: previous.iter().map(|k| (*k).to_owned()).collect(),
        }
        .keys()
        .expect("valid keys")
    }

    fn secret(raw: &str) -> UpstreamSecret {
        UpstreamSecret::parse(raw.to_owned()).expect("a credential")
    }

    #[test]
    fn a_sealed_secret_hides_its_text_differs_each_time_and_opens_again() {
        let keys = keys(Some(KEY_A), &[]);
        let one = keys.seal(&secret("sk-secret-1")).expect("sealed");
        let two = keys.seal(&secret("sk-secret-1")).expect("sealed");
        assert!(
            one.starts_with("enc:v1:") && !one.contains("sk-secret"),
            "{one}"
        );
        assert_ne!(one, two, "a fresh nonce each time");
        assert_eq!(keys.open(&one).expect("opens").expose(), "sk-secret-1");
        assert!(keys.is_current(&one));
    }

    #[test]
    fn a_previous_key_still_opens_and_an_unknown_or_tampered_value_does_not() {
        let old = keys(Some(KEY_A), &[])
            .seal(&secret("sk-old"))
            .expect("sealed");
        let rotated = keys(Some(KEY_B), &[KEY_A]);
        assert_eq!(rotated.open(&old).expect("opens").expose(), "sk-old");
        assert!(!rotated.is_current(&old));
        let forgotten = keys(Some(KEY_B), &[]);
        let err = forgotten.open(&old).expect_err("key gone").to_string();
        assert!(!err.contains("sk-old"));
        let mut tampered = old.clone();
        tampered.pop();
        tampered.push(if old.ends_with('A') { 'B' } else { 'A' });
        assert!(keys(Some(KEY_A), &[]).open(&tampered).is_err());
    }

    #[test]
    fn a_value_from_before_encryption_is_read_as_it_is() {
        assert_eq!(
            keys(None, &[]).open("sk-plain").expect("read").expose(),
            "sk-plain"
        );
    }

    #[test]
    fn without_a_key_nothing_is_sealed_and_bad_keys_name_their_setting() {
        assert!(!keys(None, &[]).can_store());
        assert!(keys(None, &[]).seal(&secret("x")).is_err());
        let short = SecretsSettings {
            encryption_key: Some("c2hvcnQ=".to_owned()),
            ..SecretsSettings::default()
        };
        assert!(
            short
                .keys()
                .expect_err("too short")
                .contains("secrets.encryption_key")
        );
        let bad = SecretsSettings {
            previous_keys: vec!["not base64!".to_owned()],
            ..SecretsSettings::default()
        };
        assert!(
            bad.keys()
                .expect_err("bad")
                .contains("secrets.previous_keys[0]")
        );
        assert!(!format!("{:?}", keys(Some(KEY_A), &[])).contains(KEY_A));
    }
}
