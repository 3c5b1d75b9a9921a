//! Token quotas of keys and users: tokens per minute, and tokens per calendar month (UTC).

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// Tokens per minute allowed to one key, or to all of a user's keys together:
/// 1..=1,000,000,000 (so that every sum the limiter keeps stays an exact Lua number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokensPerMinute(u64);

impl TokensPerMinute {
    /// The highest accepted limit.
    pub const MAX: u64 = 1_000_000_000;

    /// Accepts 1..=[`MAX`](Self::MAX).
    pub fn new(n: i64) -> Result<Self, ValidationError> {
        bounded(n, Self::MAX, "tpm").map(Self)
    }

    /// The limit.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Tokens per calendar month (UTC) allowed to one key, or to all of a user's keys together:
/// 1..=1,000,000,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MonthlyTokens(u64);

impl MonthlyTokens {
    /// The highest accepted quota.
    pub const MAX: u64 = 1_000_000_000_000;

    /// Accepts 1..=[`MAX`](Self::MAX).
    pub fn new(n: i64) -> Result<Self, ValidationError> {
        bounded(n, Self::MAX, "monthly_tokens").map(Self)
    }

    /// The quota.
    pub fn get(self) -> u64 {
        self.0
    }
}

fn bounded(n: i64, max: u64, field: &str) -> Result<u64, ValidationError> {
    u64::try_from(n)
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ValidationError::new(field, format!("must be an integer from 1 to {max}")))
}

/// The token quotas of a key, or of all of a user's keys together; `None`: the default of the
/// settings (`rate_limit.default_tpm` … for keys, `rate_limit.user_tpm` … for users), which is
/// no limit unless an operator sets one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenQuotas {
    /// Tokens per minute.
    pub tpm: Option<TokensPerMinute>,
    /// Tokens per calendar month (UTC).
    pub monthly_tokens: Option<MonthlyTokens>,
}

/// A change of token quotas; `None` leaves one as it is, `Some(None)` puts it back to the
/// default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenQuotasPatch {
    /// New tokens per minute.
    pub tpm: Option<Option<TokensPerMinute>>,
    /// New tokens per month.
    pub monthly_tokens: Option<Option<MonthlyTokens>>,
}

impl TokenQuotasPatch {
    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.tpm.is_none() && self.monthly_tokens.is_none()
    }

    /// `quotas` with the patch applied.
    pub fn applied_to(&self, quotas: TokenQuotas) -> TokenQuotas {
        TokenQuotas {
            tpm: self.tpm.unwrap_or(quotas.tpm),
            monthly_tokens: self.monthly_tokens.unwrap_or(quotas.monthly_tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_are_positive_and_bounded() {
        assert_eq!(TokensPerMinute::new(0).expect_err("zero").field, "tpm");
        assert!(TokensPerMinute::new(-5).is_err());
        assert!(TokensPerMinute::new(1_000_000_001).is_err());
        assert_eq!(
            TokensPerMinute::new(1_000).map(TokensPerMinute::get),
            Ok(1_000)
        );
        assert_eq!(
            MonthlyTokens::new(0).expect_err("zero").field,
            "monthly_tokens"
        );
        assert!(MonthlyTokens::new(1_000_000_000_001).is_err());
        assert_eq!(
            MonthlyTokens::new(1_000_000_000_000).map(MonthlyTokens::get),
            Ok(1_000_000_000_000)
        );
    }

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let tpm = TokensPerMinute::new(10).expect("valid");
        let month = MonthlyTokens::new(100).expect("valid");
        let quotas = TokenQuotas {
            tpm: Some(tpm),
            monthly_tokens: Some(month),
        };
        assert_eq!(TokenQuotasPatch::default().applied_to(quotas), quotas);
        let cleared = TokenQuotasPatch {
            tpm: Some(None),
            ..TokenQuotasPatch::default()
        };
        assert_eq!(
            cleared.applied_to(quotas),
            TokenQuotas {
                tpm: None,
                monthly_tokens: Some(month)
            }
        );
        assert!(TokenQuotasPatch::default().is_empty() && !cleared.is_empty());
    }

    #[test]
    fn a_cached_key_record_from_before_token_quotas_is_not_read_as_having_none() {
        use crate::identity::{ApiKey, KeyName, KeyRecord, Role, User};
        use crate::values::Username;
        let now = chrono::Utc::now();
        let record = KeyRecord {
            key: ApiKey {
                id: uuid::Uuid::nil(),
                user_id: uuid::Uuid::nil(),
                name: KeyName::parse("k".into()).expect("valid"),
                prefix: "maas2_abc".into(),
                created_at: now,
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
                rate_limit_rpm: None,
                models: None,
                tokens: TokenQuotas::default(),
            },
            user: User {
                id: uuid::Uuid::nil(),
                username: Username::parse("alice").expect("valid"),
                role: Role::Member,
                disabled: false,
                created_at: now,
                rate_limit_rpm: None,
                tokens: TokenQuotas::default(),
            },
        };
        let current = serde_json::to_value(&record).expect("serialized");
        assert!(serde_json::from_value::<KeyRecord>(current.clone()).is_ok());
        for part in ["key", "user"] {
            let mut older = current.clone();
            if let Some(fields) = older[part].as_object_mut() {
                fields.remove("tokens");
            }
            assert!(
                serde_json::from_value::<KeyRecord>(older).is_err(),
                "a {part} without tokens is read again from the store"
            );
        }
    }
}
