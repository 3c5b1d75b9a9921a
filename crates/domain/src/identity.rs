//! Identity: users, API keys and the principal a request acts as.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::error::ValidationError;
use crate::values::Username;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including user management.
    Admin,
    /// Reads everything; changes only what it owns.
    Member,
}

impl Role {
    /// Parses `admin` or `member`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "admin" => Ok(Self::Admin),
            "member" => Ok(Self::Member),
            _ => Err(ValidationError::new("role", "must be 'admin' or 'member'")),
        }
    }

    /// `admin` or `member`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }
}

/// A user of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Stable id.
    pub id: Uuid,
    /// Unique name (same rules as model names).
    pub username: Username,
    /// What the user may do.
    pub role: Role,
    /// A disabled user's keys are refused.
    pub disabled: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// What is needed to create a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// Unique name.
    pub username: Username,
    /// Role.
    pub role: Role,
}

/// A change of a user's role or disabled flag; `None` leaves it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserPatch {
    /// New role.
    pub role: Option<Role>,
    /// Disable or enable.
    pub disabled: Option<bool>,
}

/// Requests per minute allowed to one key: 1..=1,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RateLimitRpm(u32);

impl RateLimitRpm {
    /// The highest accepted limit.
    pub const MAX: u32 = 1_000_000;

    /// Accepts 1..=1,000,000.
    pub fn new(n: i64) -> Result<Self, ValidationError> {
        u32::try_from(n)
            .ok()
            .filter(|n| (1..=Self::MAX).contains(n))
            .map(Self)
            .ok_or_else(|| {
                ValidationError::new(
                    "rate_limit_rpm",
                    format!("must be an integer from 1 to {}", Self::MAX),
                )
            })
    }

    /// The limit.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A key's label: 1–128 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyName(String);

impl KeyName {
    /// Validates length and characters.
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        let len = raw.chars().count();
        if len == 0 || len > 128 || raw.trim().is_empty() {
            return Err(ValidationError::new(
                "name",
                "must be 1 to 128 characters long",
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "name",
                "must not contain control characters",
            ));
        }
        Ok(Self(raw))
    }

    /// The label.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An API key as stored and listed: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Stable id (used to revoke it).
    pub id: Uuid,
    /// Whose key it is.
    pub user_id: Uuid,
    /// Label.
    pub name: KeyName,
    /// The first characters of the key, to recognise it (`maas_AbCdEfGh`).
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// After this it is refused.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked; a revoked key is refused.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Roughly when it was last used (updated in batches).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Its own requests-per-minute limit, else the default.
    pub rate_limit_rpm: Option<RateLimitRpm>,
}

/// What is needed to store a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    /// Whose key it is.
    pub user_id: Uuid,
    /// Label.
    pub name: KeyName,
    /// SHA-256 of the key.
    pub hash: KeyHash,
    /// Display prefix.
    pub prefix: String,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Own limit.
    pub rate_limit_rpm: Option<RateLimitRpm>,
}

/// The SHA-256 of an API key: all the database ever holds of it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Wraps stored bytes; anything but 32 bytes is refused.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, for cache keys. Runs on every authenticated request, so no `format!` per
    /// byte (32 of them were a sixteenth of a proxied call's instructions).
    pub fn to_hex(&self) -> String {
        let digits = self.hex_digits();
        // The digits are ASCII, so this never fails; the fallback only keeps the type honest.
        std::str::from_utf8(&digits).map_or_else(|_| String::new(), str::to_owned)
    }

    /// Writes the lower-case hex of the hash into `out` without allocating.
    pub(crate) fn write_hex(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let digits = self.hex_digits();
        out.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
    }

    /// Reverses [`to_hex`](Self::to_hex): exactly 64 lower-case hex digits, else `None`.
    pub fn from_hex(hex: &str) -> Option<Self> {
        fn nibble(digit: u8) -> Option<u8> {
            match digit {
                b'0'..=b'9' => Some(digit - b'0'),
                b'a'..=b'f' => Some(digit - b'a' + 10),
                _ => None,
            }
        }
        let digits = hex.as_bytes();
        if digits.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Self(bytes))
    }

    fn hex_digits(&self) -> [u8; 64] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 64];
        for (pair, byte) in hex.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0x0f)];
        }
        hex
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

/// A plaintext API key: `maas_` and at least 32 characters of base64url. It exists only while
/// a key is created (shown once) or a request is authenticated; it is never stored or logged.
#[derive(Clone, PartialEq, Eq)]
pub struct PlaintextKey(String);

impl PlaintextKey {
    /// Every key starts with this.
    pub const PREFIX: &'static str = "maas_";
    /// Characters of a key shown in listings to recognise it.
    pub const DISPLAY_LEN: usize = 13;
    const MIN_SECRET_LEN: usize = 32;
    const MAX_LEN: usize = 256;

    /// A new key: 32 bytes from the operating system's CSPRNG, base64url-encoded.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Self(format!(
            "{}{}",
            Self::PREFIX,
            URL_SAFE_NO_PAD.encode(bytes)
        )))
    }

    /// Checks the shape of a key a client sent (or an operator configured).
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let secret = raw.strip_prefix(Self::PREFIX).ok_or_else(|| {
            ValidationError::new("key", format!("must start with '{}'", Self::PREFIX))
        })?;
        if secret.len() < Self::MIN_SECRET_LEN || raw.len() > Self::MAX_LEN {
            return Err(ValidationError::new(
                "key",
                format!(
                    "must have {} to {} characters after '{}'",
                    Self::MIN_SECRET_LEN,
                    Self::MAX_LEN - Self::PREFIX.len(),
                    Self::PREFIX
                ),
            ));
        }
        if !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ValidationError::new(
                "key",
                "may contain only A-Z, a-z, 0-9, '-' and '_'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// Its SHA-256.
    pub fn hash(&self) -> KeyHash {
        KeyHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The first characters, safe to show in listings.
    pub fn display_prefix(&self) -> String {
        self.0.chars().take(Self::DISPLAY_LEN).collect()
    }

    /// The key itself, to hand to its owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PlaintextKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlaintextKey({}…)", self.display_prefix())
    }
}

/// A key and its user, as the authentication lookup returns (and the cache holds) them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key.
    pub key: ApiKey,
    /// Its user.
    pub user: User,
}

/// Who a request acts as: an authenticated key of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The user.
    pub user_id: Uuid,
    /// The user's name.
    pub username: Username,
    /// The user's role.
    pub role: Role,
    /// The key used.
    pub key_id: Uuid,
    /// The key's own limit, if any.
    pub rate_limit_rpm: Option<RateLimitRpm>,
}

impl Principal {
    /// True for admins.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Admins may change anything; members only what they own.
    pub fn may_change(&self, owner: Option<Uuid>) -> bool {
        self.is_admin() || owner == Some(self.user_id)
    }
}

impl From<&KeyRecord> for Principal {
    fn from(r: &KeyRecord) -> Self {
        Self {
            user_id: r.user.id,
            username: r.user.username.clone(),
            role: r.user.role,
            key_id: r.key.id,
            rate_limit_rpm: r.key.rate_limit_rpm,
        }
    }
}

/// Why a request was not authenticated. Kept off the HTTP response (which is always the same
/// 401) and used as the `reason` label of `maas_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No key in the request.
    Missing,
    /// Not shaped like a key.
    Malformed,
    /// No such key.
    Unknown,
    /// Past `expires_at`.
    Expired,
    /// Revoked.
    Revoked,
    /// The user is disabled.
    Disabled,
}

impl AuthFailure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Disabled => "disabled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_prefixed_random_and_parse_back() {
        let a = PlaintextKey::generate().expect("csprng");
        let b = PlaintextKey::generate().expect("csprng");
        assert_ne!(a, b);
        assert!(a.expose().starts_with("maas_"));
        assert_eq!(a.expose().len(), 5 + 43, "32 bytes in base64url");
        assert_eq!(PlaintextKey::parse(a.expose()).expect("valid"), a);
        assert_eq!(a.display_prefix().len(), PlaintextKey::DISPLAY_LEN);
        assert!(a.expose().starts_with(&a.display_prefix()));
    }

    #[test]
    fn the_hash_is_sha256_of_the_whole_key() {
        let key = PlaintextKey::parse(&format!("maas_{}", "a".repeat(32))).expect("valid");
        // sha256("maas_" + 32 × "a"), computed independently (Python's hashlib).
        assert_eq!(
            key.hash().to_hex(),
            "abd20b37f4b47cbf7b810279dd2c6f0983fb96ce26a2c956ef30f550bcf217b3"
        );
        assert_ne!(key.hash().to_hex(), key.expose());
        let other = PlaintextKey::parse(&format!("maas_{}", "b".repeat(32))).expect("valid");
        assert_ne!(key.hash(), other.hash());
    }

    #[test]
    fn hex_is_two_lower_case_digits_per_byte_in_order() {
        let bytes: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        let hash = KeyHash::from_bytes(&bytes).expect("32 bytes");
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hash.to_hex(), expected);
        let edges = KeyHash::from_bytes(&[[0x00, 0x0f, 0xf0, 0xff]; 8].concat()).expect("32 bytes");
        assert_eq!(edges.to_hex(), "000ff0ff".repeat(8));
    }

    #[test]
    fn hex_parses_back_to_the_same_hash_and_nothing_else_does() {
        let hash = PlaintextKey::generate().expect("csprng").hash();
        assert_eq!(KeyHash::from_hex(&hash.to_hex()), Some(hash));
        let letters = KeyHash::from_bytes(&[0xab; 32]).expect("32 bytes");
        for bad in [
            String::new(),
            "0".repeat(63),
            "0".repeat(65),
            letters.to_hex().to_uppercase(),
            format!("{}g", "0".repeat(63)),
            format!("{}é", "0".repeat(62)),
        ] {
            assert_eq!(KeyHash::from_hex(&bad), None, "{bad}");
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "maas_",
            "maas_short",
            &format!("sk_{}", "a".repeat(40)),
            &format!("maas_{}!", "a".repeat(40)),
            &format!("maas_{}", "a".repeat(300)),
        ] {
            assert_eq!(PlaintextKey::parse(bad).expect_err(bad).field, "key");
        }
    }

    #[test]
    fn debug_output_never_shows_a_key() {
        let key = PlaintextKey::generate().expect("csprng");
        assert!(!format!("{key:?}").contains(key.expose()));
        assert!(!format!("{:?}", key.hash()).contains(&key.hash().to_hex()));
    }

    #[test]
    fn members_change_only_what_they_own_and_admins_everything() {
        let me = Uuid::new_v4();
        let member = Principal {
            user_id: me,
            username: Username::parse("m").expect("valid"),
            role: Role::Member,
            key_id: Uuid::new_v4(),
            rate_limit_rpm: None,
        };
        assert!(member.may_change(Some(me)));
        assert!(!member.may_change(Some(Uuid::new_v4())));
        assert!(!member.may_change(None));
        let admin = Principal {
            role: Role::Admin,
            ..member
        };
        assert!(admin.may_change(Some(Uuid::new_v4())) && admin.may_change(None));
    }

    #[test]
    fn limits_and_names_are_bounded() {
        assert!(RateLimitRpm::new(0).is_err());
        assert!(RateLimitRpm::new(1_000_001).is_err());
        assert_eq!(RateLimitRpm::new(60).expect("valid").get(), 60);
        assert!(KeyName::parse(String::new()).is_err());
        assert!(KeyName::parse("ci key".into()).is_ok());
        assert_eq!(Role::parse("root").expect_err("bad").field, "role");
    }
}
