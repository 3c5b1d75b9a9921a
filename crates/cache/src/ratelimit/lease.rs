//! Leases: requests Redis granted a busy key several at a time, admitted by this process
//! without asking Redis again, and what is left of them given back when they end, to the key's
//! allowance and its user's (see the [parent module](super#leases)).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[cfg(doc)]
use maas_domain::ports::RateLimiter;
use maas_domain::ports::{Allowance, RateDecision, RateRequest};
use uuid::Uuid;

use super::{EXPIRY_MARGIN_MS, MAX_CAPACITY_US, RedisRateLimiter, ScriptReply, ceil_seconds};
use crate::call;

/// What one script call granted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Grant {
    pub(super) granted: u32,
    pub(super) reply: ScriptReply,
    pub(super) interval_us: u64,
    /// The user whose allowance the grant spent too, and its emission interval (µs).
    pub(super) user: Option<(Uuid, u64)>,
}

/// The limits a request was decided under: its key's emission interval, and its user with the
/// user's interval. A lease admits only requests under the terms it was granted under, so a
/// limit set or changed (a user's new limit, a key's) applies to the key's next request, not
/// after the lease.
pub(super) type Terms = (u64, Option<(Uuid, u64)>);

/// The terms of `request`.
pub(super) fn terms_of(request: &RateRequest) -> Terms {
    (
        super::emission_interval_us(request.key.rpm),
        request
            .user
            .map(|user| (user.user_id, super::emission_interval_us(user.limit.rpm))),
    )
}

/// What the unused requests of a lease are given back to: the key's allowance and, when the
/// grants spent it too, the user's, each at its own interval.
#[derive(Debug, Clone, Copy)]
struct GiveBack {
    key_id: Uuid,
    interval_us: u64,
    user: Option<(Uuid, u64)>,
}

/// Requests Redis granted this process for one key and that it has not admitted yet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lease {
    /// This lease period, among the key's periods in this process.
    generation: u64,
    /// Whose figures `remaining_at_grant` and `reset_at` are.
    allowance: Allowance,
    /// The terms its requests were granted under (pooled grants share them): the key's
    /// interval, what each returned request is worth, and the user whose allowance they were
    /// taken from too, with its interval.
    terms: Terms,
    /// Whether a task gives back what is left when the period ends.
    return_armed: bool,
    /// Still to admit.
    left: u32,
    /// Admitted from this lease.
    used: u32,
    /// When Redis granted it.
    granted_at: Instant,
    /// When what is left is dropped.
    expires_at: Instant,
    /// What Redis said was still available, and when its allowance is full again.
    remaining_at_grant: u32,
    reset_at: Instant,
}

impl Lease {
    fn give_back(&self, key_id: Uuid) -> GiveBack {
        GiveBack {
            key_id,
            interval_us: self.terms.0,
            user: self.terms.1,
        }
    }
}

/// Keys whose leases are kept before expired ones are swept.
const LEASE_SWEEP_THRESHOLD: usize = 10_000;

impl RedisRateLimiter {
    /// Admits one request from the key's lease, if it has one left that was granted under the
    /// request's terms.
    pub(super) fn admit_from_lease(
        &self,
        request: &RateRequest,
        now: Instant,
    ) -> Option<RateDecision> {
        let mut leases = self.inner.leases.lock().ok()?;
        let lease = leases.get_mut(&request.key_id)?;
        if lease.left == 0 || lease.expires_at <= now || lease.terms != terms_of(request) {
            return None;
        }
        lease.left -= 1;
        lease.used = lease.used.saturating_add(1);
        Some(RateDecision::Allowed {
            remaining: lease.remaining_at_grant.saturating_add(lease.left),
            reset_seconds: ceil_seconds(
                i64::try_from(lease.reset_at.saturating_duration_since(now).as_micros())
                    .unwrap_or(i64::MAX),
            ),
            allowance: lease.allowance,
        })
    }

    /// How many requests to ask Redis for: what the key's last lease was admitting, scaled to a
    /// whole lease period (at most 4 times more than the last lease, at most half the smaller of
    /// the key's and the user's bursts).
    pub(super) fn lease_want(&self, request: &RateRequest, lease: Duration, now: Instant) -> u32 {
        if lease.is_zero() {
            return 1;
        }
        let key_id = request.key_id;
        let burst = request.user.map_or(request.key.burst, |user| {
            user.limit.burst.min(request.key.burst)
        });
        let cap = (burst / 2).max(1);
        let Some(last) = self
            .inner
            .leases
            .lock()
            .ok()
            .and_then(|l| l.get(&key_id).copied())
        else {
            return 1;
        };
        let lived = now
            .min(last.expires_at)
            .saturating_duration_since(last.granted_at)
            .max(Duration::from_millis(1));
        let used = u128::from(last.used.max(1));
        let scaled = used * lease.as_micros() / lived.as_micros().max(1);
        let grown = scaled.min(used * 4);
        u32::try_from(grown).unwrap_or(u32::MAX).clamp(1, cap)
    }

    /// Keeps what Redis granted beyond the request that asked; returns what the key's lease now
    /// holds. A lease whose period ended with requests left is given back first, and a lease
    /// with requests left gets a task that gives them back when its period ends.
    pub(super) fn store_lease(
        &self,
        key_id: Uuid,
        grant: Grant,
        lease: Duration,
        now: Instant,
    ) -> u32 {
        let Ok(mut leases) = self.inner.leases.lock() else {
            return 0;
        };
        if leases.len() >= LEASE_SWEEP_THRESHOLD {
            leases.retain(|key, l| {
                let keep = l.expires_at > now;
                if !keep && l.left > 0 {
                    self.give_back_later(l.give_back(*key), l.left, None);
                }
                keep
            });
        }
        let Grant {
            granted,
            reply: (_granted, remaining, _retry, reset_us, whose),
            interval_us,
            user,
        } = grant;
        let left = granted.saturating_sub(1);
        let remaining_at_grant = u32::try_from(remaining.max(0)).unwrap_or(u32::MAX);
        let reset_at = now + Duration::from_micros(u64::try_from(reset_us.max(0)).unwrap_or(0));
        let fresh = |generation| Lease {
            generation,
            allowance: super::allowance(whose),
            terms: (interval_us, user),
            return_armed: false,
            left,
            used: 1,
            granted_at: now,
            expires_at: now + lease,
            remaining_at_grant,
            reset_at,
        };
        let entry = match leases.entry(key_id) {
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(fresh(self.generation()))
            }
            std::collections::hash_map::Entry::Occupied(occupied) => {
                let entry = occupied.into_mut();
                if entry.expires_at <= now || entry.terms != (interval_us, user) {
                    // Over, or granted under other limits (which this grant's requests must
                    // not be admitted under): what it holds goes back, and this grant starts
                    // a lease of its own.
                    if entry.left > 0 {
                        self.give_back_later(entry.give_back(key_id), entry.left, None);
                    }
                    *entry = fresh(self.generation());
                } else {
                    // Another request of this key was granted at the same time, under the same
                    // limits: pool the two, keeping the earlier expiry (dropping early only
                    // wastes allowance, never exceeds it).
                    entry.left = entry.left.saturating_add(left);
                    entry.used = entry.used.saturating_add(1);
                    entry.remaining_at_grant = remaining_at_grant;
                    entry.reset_at = reset_at;
                    entry.allowance = super::allowance(whose);
                }
                entry
            }
        };
        if entry.left > 0 && !entry.return_armed {
            entry.return_armed = true;
            self.give_back_later(
                entry.give_back(key_id),
                0,
                Some((entry.generation, entry.expires_at)),
            );
        }
        entry.left
    }

    fn generation(&self) -> u64 {
        self.inner.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Gives back `left` requests in a task of its own; with `at_end`, instead whatever the
    /// key's lease `generation` still holds once it expires. Without a Tokio runtime (never the
    /// case inside [`RateLimiter::decide`]) nothing is given back, which only loses allowance.
    fn give_back_later(&self, to: GiveBack, left: u32, at_end: Option<(u64, Instant)>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let limiter = self.clone();
        runtime.spawn(async move {
            let (to, left) = match at_end {
                None => (to, left),
                Some((generation, expires_at)) => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(expires_at)).await;
                    match limiter.take_leftover(to.key_id, Some(generation)) {
                        Some(leftover) => leftover,
                        None => return,
                    }
                }
            };
            limiter.give_back(to, left).await;
        });
    }

    /// Takes what the key's lease still holds (of `generation` only, when given), so that it
    /// can be given back.
    /// Also returns where to give them back, as the lease says now (pooling may have changed
    /// it since the task was armed).
    fn take_leftover(&self, key_id: Uuid, generation: Option<u64>) -> Option<(GiveBack, u32)> {
        let mut leases = self.inner.leases.lock().ok()?;
        match leases.get_mut(&key_id) {
            Some(lease) if generation.is_none_or(|g| g == lease.generation) => {
                Some((lease.give_back(key_id), std::mem::take(&mut lease.left)))
            }
            _ => None,
        }
    }

    /// Moves the key's `TAT` (and its user's, when the lease spent it) back by `left` intervals.
    /// A failure loses that allowance (the safe side) and is not retried.
    async fn give_back(&self, to: GiveBack, left: u32) {
        if left == 0 {
            return;
        }
        let amount = |interval_us: u64| {
            interval_us
                .saturating_mul(u64::from(left))
                .min(MAX_CAPACITY_US)
        };
        let key_id = to.key_id;
        let mut invocation = self.inner.return_script.prepare_invoke();
        invocation
            .key(self.key(key_id))
            .arg(EXPIRY_MARGIN_MS)
            .arg(amount(to.interval_us));
        if let Some((user_id, interval_us)) = to.user {
            invocation
                .key(self.user_key(user_id))
                .arg(amount(interval_us));
        }
        let invocation = &invocation;
        let returned = call::run(
            &self.inner.pool,
            self.inner.command_timeout,
            |mut conn| async move { invocation.invoke_async::<i64>(&mut conn).await },
        )
        .await;
        if let Err(failure) = returned {
            slog::debug!(self.inner.logger.get(), "giving back unused leased requests failed";
                "key_id" => %key_id, "requests" => left, "error" => %failure);
        }
    }

    /// Gives back, now, every request this process holds in leases and has not admitted: for a
    /// replica that stops, so that the others can use them at once. Later checks of those keys
    /// ask Redis again.
    pub async fn release_leases(&self) {
        let taken: Vec<(GiveBack, u32)> = match self.inner.leases.lock() {
            Ok(mut leases) => leases
                .iter_mut()
                .filter(|(_, l)| l.left > 0)
                .map(|(key, l)| (l.give_back(*key), std::mem::take(&mut l.left)))
                .collect(),
            Err(_) => return,
        };
        for (to, left) in taken {
            self.give_back(to, left).await;
        }
    }

    /// Requests of `key_id` this process holds in a current lease and has not admitted yet.
    pub fn held(&self, key_id: Uuid) -> u32 {
        let now = Instant::now();
        self.inner
            .leases
            .lock()
            .ok()
            .and_then(|leases| leases.get(&key_id).copied())
            .filter(|l| l.expires_at > now)
            .map_or(0, |l| l.left)
    }
}
