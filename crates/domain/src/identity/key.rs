//! API keys as a client holds them ([`PlaintextKey`]) and as the database does ([`KeyHash`]).
//!
//! # Formats
//! - **Checked** (every key the gateway creates): `maas2_`, 43 characters of base62 drawn
//!   uniformly from the operating system's CSPRNG (256 bits), and 6 characters of base62: the
//!   CRC32 of those 43, as GitHub's tokens carry one. A key in this format whose checksum does not
//!   match is refused by [`PlaintextKey::read`] itself, so a made-up key costs no lookup at all.
//!   The checksum is no secret (anyone can compute one): it keeps typos, truncated keys and
//!   random sprays off the database; a deliberate attacker is held by the per-address limit of
//!   failed authentications ([`crate::accounts::FailedAuthLimit`]).
//! - **Legacy**: `maas_` and at least 32 characters of base64url. Keys created before checked
//!   keys existed, and bootstrap admin keys an operator wrote in this shape, still work; they
//!   are looked up as before. The two prefixes differ at their fifth character, so a key is never
//!   read in the wrong format.

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::AuthFailure;
use crate::error::ValidationError;

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

/// The 62 characters of base62, in order of value.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The CRC-32 of `bytes` (IEEE 802.3, reflected, as zlib's `crc32`), bit by bit: a key's 43
/// characters take well under a microsecond, so no table.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let low_bit_mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & low_bit_mask);
        }
    }
    !crc
}

/// `n` in base62, most significant digit first, in exactly 6 digits (62⁶ > 2³²).
fn base62_checksum(mut n: u32) -> [u8; PlaintextKey::CHECKSUM_LEN] {
    let mut digits = [BASE62[0]; PlaintextKey::CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(n % 62) as usize];
        n /= 62;
    }
    digits
}

/// A plaintext API key in either format (see the [module documentation](self)). It exists only
/// while a key is created (shown once) or a request is authenticated; it is never stored or
/// logged.
#[derive(Clone, PartialEq, Eq)]
pub struct PlaintextKey(String);

impl PlaintextKey {
    /// Every key the gateway creates starts with this.
    pub const PREFIX: &'static str = "maas2_";
    /// Keys from before checked keys start with this (and bootstrap keys may).
    pub const LEGACY_PREFIX: &'static str = "maas_";
    /// Random base62 characters of a checked key (43 × log2(62) ≈ 256 bits).
    pub const RANDOM_LEN: usize = 43;
    /// Base62 characters of a checked key's checksum.
    pub const CHECKSUM_LEN: usize = 6;
    /// Characters of a key shown in listings to recognise it.
    pub const DISPLAY_LEN: usize = 14;
    const LEGACY_MIN_SECRET_LEN: usize = 32;
    const MAX_LEN: usize = 256;

    /// A new checked key: 43 base62 characters from the operating system's CSPRNG (bytes of 248
    /// and above are drawn again, so every character is equally likely), then their checksum.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut key = String::with_capacity(Self::PREFIX.len() + Self::RANDOM_LEN + 6);
        key.push_str(Self::PREFIX);
        let mut drawn = 0;
        let mut bytes = [0u8; 64];
        while drawn < Self::RANDOM_LEN {
            getrandom::fill(&mut bytes)?;
            for byte in bytes.iter().filter(|b| **b < 248) {
                if drawn == Self::RANDOM_LEN {
                    break;
                }
                key.push(char::from(BASE62[usize::from(byte % 62)]));
                drawn += 1;
            }
        }
        let checksum = base62_checksum(crc32(&key.as_bytes()[Self::PREFIX.len()..]));
        key.extend(checksum.iter().copied().map(char::from));
        Ok(Self(key))
    }

    /// Reads a key a client sent: a checked key whose checksum matches, or a legacy key.
    /// Nothing but the string is looked at.
    ///
    /// # Errors
    /// [`AuthFailure::BadChecksum`] for a key in the checked format whose checksum does not
    /// match; [`AuthFailure::Malformed`] for anything else that is not a key.
    pub fn read(raw: &str) -> Result<Self, AuthFailure> {
        if let Some(body) = raw.strip_prefix(Self::PREFIX) {
            let bytes = body.as_bytes();
            if bytes.len() != Self::RANDOM_LEN + Self::CHECKSUM_LEN
                || !bytes.iter().all(u8::is_ascii_alphanumeric)
            {
                return Err(AuthFailure::Malformed);
            }
            let (random, checksum) = bytes.split_at(Self::RANDOM_LEN);
            if base62_checksum(crc32(random)) != checksum {
                return Err(AuthFailure::BadChecksum);
            }
            return Ok(Self(raw.to_owned()));
        }
        let secret = raw
            .strip_prefix(Self::LEGACY_PREFIX)
            .ok_or(AuthFailure::Malformed)?;
        if secret.len() < Self::LEGACY_MIN_SECRET_LEN
            || raw.len() > Self::MAX_LEN
            || !secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AuthFailure::Malformed);
        }
        Ok(Self(raw.to_owned()))
    }

    /// Checks a key an operator configured (or a test wrote), as [`read`](Self::read) does.
    ///
    /// # Errors
    /// A validation error naming `key` that says what shape a key has.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        Self::read(raw).map_err(|failure| {
            let message = match failure {
                AuthFailure::BadChecksum => format!(
                    "starts with '{}' but its last {} characters are not its checksum",
                    Self::PREFIX,
                    Self::CHECKSUM_LEN
                ),
                _ => format!(
                    "must be a key the gateway created ('{}' and {} base62 characters), or \
                     '{}' and {} to {} characters of A-Z, a-z, 0-9, '-' and '_'",
                    Self::PREFIX,
                    Self::RANDOM_LEN + Self::CHECKSUM_LEN,
                    Self::LEGACY_PREFIX,
                    Self::LEGACY_MIN_SECRET_LEN,
                    Self::MAX_LEN - Self::LEGACY_PREFIX.len()
                ),
            };
            ValidationError::new("key", message)
        })
    }

    /// Whether the key is in the checked format (else legacy).
    pub fn is_checked(&self) -> bool {
        self.0.starts_with(Self::PREFIX)
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

    /// A legacy key made of 32 random bytes (base64url), as the gateway created before checked
    /// keys: for tests of keys from then.
    #[cfg(any(test, feature = "test-util"))]
    pub fn generate_legacy() -> Result<Self, getrandom::Error> {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Self(format!(
            "{}{}",
            Self::LEGACY_PREFIX,
            URL_SAFE_NO_PAD.encode(bytes)
        )))
    }
}

impl fmt::Debug for PlaintextKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlaintextKey({}…)", self.display_prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_zlibs() {
        // The standard check value of CRC-32/ISO-HDLC, and zlib.crc32 of two more strings.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn the_checksum_is_six_base62_digits_most_significant_first() {
        assert_eq!(&base62_checksum(0), b"000000");
        assert_eq!(&base62_checksum(61), b"00000z");
        assert_eq!(&base62_checksum(62), b"000010");
        // 2^32 - 1 in base62, computed independently (Python).
        assert_eq!(&base62_checksum(u32::MAX), b"4gfFC3");
    }

    #[test]
    fn generated_keys_are_checked_random_and_read_back() {
        let a = PlaintextKey::generate().expect("csprng");
        let b = PlaintextKey::generate().expect("csprng");
        assert_ne!(a, b);
        assert!(a.is_checked());
        assert!(a.expose().starts_with("maas2_"));
        assert_eq!(a.expose().len(), 6 + 43 + 6);
        assert!(a.expose()[6..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(PlaintextKey::read(a.expose()), Ok(a.clone()));
        assert_eq!(PlaintextKey::parse(a.expose()), Ok(a.clone()));
        assert_eq!(a.display_prefix().len(), PlaintextKey::DISPLAY_LEN);
        assert!(a.expose().starts_with(&a.display_prefix()));
    }

    #[test]
    fn every_base62_character_is_drawn() {
        let mut seen = [false; 62];
        for _ in 0..200 {
            let key = PlaintextKey::generate().expect("csprng");
            for c in key.expose()[6..6 + 43].bytes() {
                if let Some(i) = BASE62.iter().position(|b| *b == c) {
                    seen[i] = true;
                }
            }
        }
        // 8,600 draws: the chance that any character is missing is below 62·(61/62)^8600.
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn a_checked_key_with_any_character_changed_fails_its_checksum() {
        let key = PlaintextKey::generate().expect("csprng");
        let raw = key.expose().as_bytes().to_vec();
        for i in PlaintextKey::PREFIX.len()..raw.len() {
            let mut forged = raw.clone();
            forged[i] = if forged[i] == b'a' { b'b' } else { b'a' };
            let forged = String::from_utf8(forged).expect("ascii");
            assert_eq!(
                PlaintextKey::read(&forged),
                Err(AuthFailure::BadChecksum),
                "position {i}"
            );
        }
    }

    #[test]
    fn a_checked_key_of_the_wrong_length_or_alphabet_is_malformed() {
        let key = PlaintextKey::generate().expect("csprng");
        let raw = key.expose();
        for bad in [
            raw[..raw.len() - 1].to_owned(),
            format!("{raw}0"),
            format!("{}-{}", &raw[..10], &raw[11..]),
            PlaintextKey::PREFIX.to_owned(),
        ] {
            assert_eq!(
                PlaintextKey::read(&bad),
                Err(AuthFailure::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            PlaintextKey::parse(&raw[..20]).expect_err("short").field,
            "key"
        );
    }

    #[test]
    fn legacy_keys_still_read() {
        let legacy = PlaintextKey::generate_legacy().expect("csprng");
        assert!(!legacy.is_checked());
        assert_eq!(legacy.expose().len(), 5 + 43, "32 bytes in base64url");
        assert_eq!(PlaintextKey::read(legacy.expose()), Ok(legacy.clone()));
        // An operator's bootstrap key: `maas_` and 48 hex digits.
        let bootstrap = format!("maas_{}", "0123456789abcdef".repeat(3));
        assert!(PlaintextKey::read(&bootstrap).is_ok());
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
            assert_eq!(
                PlaintextKey::read(bad),
                Err(AuthFailure::Malformed),
                "{bad}"
            );
            assert_eq!(PlaintextKey::parse(bad).expect_err(bad).field, "key");
        }
    }

    #[test]
    fn debug_output_never_shows_a_key() {
        let key = PlaintextKey::generate().expect("csprng");
        assert!(!format!("{key:?}").contains(key.expose()));
        assert!(!format!("{:?}", key.hash()).contains(&key.hash().to_hex()));
    }
}
