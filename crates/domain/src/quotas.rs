//! Token quotas of inference calls: tokens per minute (`tpm`) and per calendar month
//! (`monthly_tokens`), of a key and of all of a user's keys together.
//!
//! # A call's life
//! 1. Before it is sent, [`Quotas::reserve`] decides it in one step of the [`TokenLimiter`]: one
//!    request of the request-rate limits and an estimate of its tokens ([`estimate`]) in each
//!    token limit of its key and user. It is admitted only if all admit it; a refused call
//!    spends nothing.
//! 2. Its usage event carries the [`Reservation`](crate::ports::Reservation). Once the answer is over the event is queued;
//!    the usage writer, off the response path, calls [`Quotas::settle`], which charges each call
//!    what [`charge`] says (its real usage, nothing, or the reservation) and adjusts the
//!    counters by the difference. The event is stored with that charge (`quota_tokens`).
//!
//! # A month that survives losing Redis
//! The limiter keeps a counter per key (and user) and month. A counter it does not have (never
//! set, or lost with Redis) is not taken as zero: the limiter says so
//! ([`TokenDecision::Unseeded`]), the counter is seeded with what the durable record holds for
//! the month ([`UsageRepository::tokens_used`]: every call's `quota_tokens`, else its reported
//! tokens), and the call is decided again. Seeding keeps a counter another replica seeded
//! meanwhile; on one replica, calls that find the same counters missing at once share one
//! seeding (`seeding.rs`), so losing Redis under load costs one query per key, not per call.
//! What the record cannot hold yet: calls still in flight or queued for the writer when the
//! counter was lost (each counted at its charge minus its reservation once settled).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::DomainError;
use crate::identity::{KeyName, Principal};
use crate::inference::UsageEvent;
use crate::limits::{RateLimits, TokenPolicy};
use crate::ports::{
    Allowance, IdentityRepository, Month, MonthSeed, QuotaSubject, Settlement, TokenDecision,
    TokenLimiter, TokenLimits, TokenRefusal, TokenRequest, UsageRepository,
};

mod estimate;
mod seeding;

pub use estimate::{CallKind, Estimate, charge, estimate};

/// A subject's use of its token quotas in a month, with its limits (its own or the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaUse {
    /// Tokens counted this month, as recorded (settled calls).
    pub tokens_used: u64,
    /// Its tokens per minute; `None`: none.
    pub tpm: Option<u64>,
    /// Its tokens per month; `None`: none.
    pub monthly_tokens: Option<u64>,
}

/// One key's use of its quotas in a month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyQuotaUse {
    /// The key.
    pub key_id: Uuid,
    /// Its label.
    pub name: KeyName,
    /// Its use and limits.
    pub quota: QuotaUse,
}

/// A user's and its keys' use of their quotas in a month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthReport {
    /// The month.
    pub month: Month,
    /// The user.
    pub user_id: Uuid,
    /// All its keys together.
    pub user: QuotaUse,
    /// Each of its keys (revoked ones included), newest first.
    pub keys: Vec<KeyQuotaUse>,
}

/// Token quota use-cases.
#[derive(Clone)]
pub struct Quotas {
    limiter: Arc<dyn TokenLimiter>,
    usage: Arc<dyn UsageRepository>,
    identity: Arc<dyn IdentityRepository>,
    rates: RateLimits,
    policy: TokenPolicy,
    seeding: Arc<seeding::Seeding>,
}

impl Quotas {
    /// Quotas decided by `limiter` under `rates` and `policy`, months seeded from `usage`, keys
    /// and users read from `identity` for reports.
    pub fn new(
        limiter: Arc<dyn TokenLimiter>,
        usage: Arc<dyn UsageRepository>,
        identity: Arc<dyn IdentityRepository>,
        rates: RateLimits,
        policy: TokenPolicy,
    ) -> Self {
        Self {
            limiter,
            usage,
            identity,
            rates,
            policy,
            seeding: Arc::default(),
        }
    }

    /// The token policy.
    pub fn policy(&self) -> &TokenPolicy {
        &self.policy
    }

    /// Whether `principal`'s inference calls reserve tokens (its key or user has a token
    /// limit): cheap, asked on every call.
    pub fn applies_to(&self, principal: &Principal) -> bool {
        self.policy.applies_to(principal)
    }

    /// What a call of `principal` reserving `tokens` is decided against.
    pub fn request_for(&self, principal: &Principal, tokens: u64) -> TokenRequest {
        let (key, user) = self.policy.limits_for(principal);
        TokenRequest {
            rate: self.rates.request_for(principal),
            user_id: principal.user_id,
            key,
            user,
            tokens: tokens.max(1),
        }
    }

    /// Decides a call of `principal` that reserves `tokens` (see the
    /// [module documentation](self)). Never answers [`TokenDecision::Unseeded`]: a missing
    /// month's counter is seeded from the usage record and the call decided again; if the
    /// record or the limiter fails meanwhile, [`TokenDecision::Unavailable`].
    ///
    /// A call whose `required` tokens (what the client chose) exceed its key's or user's `tpm`
    /// is refused at once ([`TokenRefusal::TooLarge`]); one that exceeds it only by the gateway's
    /// default completion reserves at most the tightest `tpm` (it is admitted when the window is
    /// empty, and settled with its real usage).
    pub async fn reserve(
        &self,
        principal: &Principal,
        estimate: impl Into<Estimate>,
    ) -> TokenDecision {
        let estimate = estimate.into();
        let (key, user) = self.policy.limits_for(principal);
        if let Some(refusal) = too_large(estimate.required, &key, &user) {
            return TokenDecision::Refused(refusal);
        }
        let tokens = [key.tpm, user.tpm]
            .into_iter()
            .flatten()
            .fold(estimate.tokens, u64::min)
            .max(estimate.required);
        let request = self.request_for(principal, tokens);
        // Twice at most: a counter seeded a moment ago does not vanish again but with Redis.
        for _ in 0..2 {
            match self.limiter.reserve(&request).await {
                TokenDecision::Unseeded { month, key, user } => {
                    let id = (request.rate.key_id, request.user_id, month, key, user);
                    let seed = || async { self.seed(&request, month, key, user).await.is_ok() };
                    if !self.seeding.once(id, seed).await {
                        return TokenDecision::Unavailable;
                    }
                }
                decided => return decided,
            }
        }
        TokenDecision::Unavailable
    }

    async fn seed(
        &self,
        request: &TokenRequest,
        month: Month,
        key: bool,
        user: bool,
    ) -> Result<(), DomainError> {
        let (from, to) = (month.start(), month.end());
        let used = |subject| self.usage.tokens_used(subject, from, to);
        let key_id = request.rate.key_id;
        let seed = MonthSeed {
            month,
            key: match key {
                true => Some((key_id, used(QuotaSubject::Key(key_id)).await?)),
                false => None,
            },
            user: match user {
                true => Some((
                    request.user_id,
                    used(QuotaSubject::User(request.user_id)).await?,
                )),
                false => None,
            },
        };
        self.limiter
            .seed_month(&seed)
            .await
            .map_err(|e| DomainError::Unavailable(e.to_string()))
    }

    /// Settles the reservations of `events` (those that have one and whose charge differs from
    /// it) in one call of the limiter; returns how many were settled. When the limiter fails,
    /// the reservations stay as they were (the safe side) and the error says so.
    pub async fn settle(&self, events: &[UsageEvent]) -> Result<usize, DomainError> {
        let settlements: Vec<Settlement> = events
            .iter()
            .filter_map(|event| {
                let reservation = event.reservation?;
                let settlement = Settlement {
                    reservation,
                    tokens: charge(event),
                };
                (settlement.delta() != 0).then_some(settlement)
            })
            .collect();
        if settlements.is_empty() {
            return Ok(0);
        }
        self.limiter
            .settle(&settlements)
            .await
            .map_err(|e| DomainError::Unavailable(e.to_string()))?;
        Ok(settlements.len())
    }

    /// This month's use of the quotas of `user_id`'s keys and of the user (members: their own
    /// only; admins: any user's, their own by default), as recorded.
    pub async fn month_report(
        &self,
        actor: &Principal,
        user_id: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<MonthReport, DomainError> {
        let user_id = user_id.unwrap_or(actor.user_id);
        if user_id != actor.user_id && !actor.is_admin() {
            return Err(DomainError::Forbidden(
                "only admins may see other users' usage".to_owned(),
            ));
        }
        let month = Month::of(now);
        let (from, to) = (month.start(), month.end());
        let user = self.identity.get_user_by_id(user_id).await?;
        let keys = self.identity.list_keys(user_id).await?;
        let by_key: HashMap<Uuid, u64> = self
            .usage
            .tokens_used_by_key(user_id, from, to)
            .await?
            .into_iter()
            .collect();
        let user_used = self
            .usage
            .tokens_used(QuotaSubject::User(user_id), from, to)
            .await?;
        let used_by = |key_id: Uuid| by_key.get(&key_id).copied().unwrap_or(0);
        let quota = |tokens_used, limits: TokenLimits| QuotaUse {
            tokens_used,
            tpm: limits.tpm,
            monthly_tokens: limits.monthly,
        };
        Ok(MonthReport {
            month,
            user_id,
            user: quota(
                user_used,
                self.policy.limits_of(Default::default(), user.tokens).1,
            ),
            keys: keys
                .into_iter()
                .map(|key| KeyQuotaUse {
                    key_id: key.id,
                    quota: quota(
                        used_by(key.id),
                        self.policy.limits_of(key.tokens, user.tokens).0,
                    ),
                    name: key.name,
                })
                .collect(),
        })
    }
}

/// The refusal of a call whose client asked for more than its key's or its user's `tpm` (the
/// key's named first): it would never be admitted, however long it waited.
fn too_large(required: u64, key: &TokenLimits, user: &TokenLimits) -> Option<TokenRefusal> {
    [(key.tpm, Allowance::Key), (user.tpm, Allowance::User)]
        .into_iter()
        .find_map(|(tpm, allowance)| match tpm {
            Some(limit) if required > limit => Some(TokenRefusal::TooLarge {
                limit,
                requested: required,
                allowance,
            }),
            _ => None,
        })
}
