//! Leases: requests Redis granted a busy key several at a time, admitted by this process
//! without asking Redis again, and what is left of them given back when they end (see the
//! [parent module](super#leases)).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[cfg(doc)]
use maas_domain::ports::RateLimiter;
use maas_domain::ports::{RateDecision, RateLimit};
use uuid::Uuid;

use super::{EXPIRY_MARGIN_MS, MAX_CAPACITY_US, RedisRateLimiter, ScriptReply, ceil_seconds};
use crate::call;

/// What one script call granted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Grant {
    pub(super) granted: u32,
    pub(super) reply: ScriptReply,
    pub(super) interval_us: u64,
}

/// Requests Redis granted this process for one key and that it has not admitted yet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lease {
    /// This lease period, among the key's periods in this process.
    generation: u64,
    /// The emission interval its requests were granted at (µs): what each returned one is worth.
    interval_us: u64,
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

/// Keys whose leases are kept before expired ones are swept.
const LEASE_SWEEP_THRESHOLD: usize = 10_000;

impl RedisRateLimiter {
    /// Admits one request from the key's lease, if it has one left.
    pub(super) fn admit_from_lease(&self, key_id: Uuid, now: Instant) -> Option<RateDecision> {
        let mut leases = self.inner.leases.lock().ok()?;
        let lease = leases.get_mut(&key_id)?;
        if lease.left == 0 || lease.expires_at <= now {
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
        })
    }

    /// How many requests to ask Redis for: what the key's last lease was admitting, scaled to a
    /// whole lease period (at most 4 times more than the last lease, at most half the burst).
    pub(super) fn lease_want(
        &self,
        key_id: Uuid,
        limit: RateLimit,
        lease: Duration,
        now: Instant,
    ) -> u32 {
        if lease.is_zero() {
            return 1;
        }
        let cap = (limit.burst / 2).max(1);
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
                    self.give_back_later(*key, l.left, l.interval_us, None);
                }
                keep
            });
        }
        let Grant {
            granted,
            reply: (_granted, remaining, _retry, reset_us),
            interval_us,
        } = grant;
        let left = granted.saturating_sub(1);
        let remaining_at_grant = u32::try_from(remaining.max(0)).unwrap_or(u32::MAX);
        let reset_at = now + Duration::from_micros(u64::try_from(reset_us.max(0)).unwrap_or(0));
        let fresh = |generation| Lease {
            generation,
            interval_us,
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
                if entry.expires_at <= now {
                    if entry.left > 0 {
                        self.give_back_later(key_id, entry.left, entry.interval_us, None);
                    }
                    *entry = fresh(self.generation());
                } else {
                    // Another request of this key was granted at the same time: pool the two,
                    // keeping the earlier expiry (dropping early only wastes allowance, never
                    // exceeds it) and the smaller interval (giving back less is the safe side).
                    entry.left = entry.left.saturating_add(left);
                    entry.used = entry.used.saturating_add(1);
                    entry.remaining_at_grant = remaining_at_grant;
                    entry.reset_at = reset_at;
                    entry.interval_us = entry.interval_us.min(interval_us);
                }
                entry
            }
        };
        if entry.left > 0 && !entry.return_armed {
            entry.return_armed = true;
            self.give_back_later(
                key_id,
                0,
                entry.interval_us,
                Some((entry.generation, entry.expires_at)),
            );
        }
        entry.left
    }

    fn generation(&self) -> u64 {
        self.inner.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Gives back `left` requests of `key_id` in a task of its own; with `at_end`, instead
    /// whatever the key's lease `generation` still holds once it expires. Without a Tokio
    /// runtime (never the case inside [`RateLimiter::check`]) nothing is given back, which only
    /// loses allowance.
    fn give_back_later(
        &self,
        key_id: Uuid,
        left: u32,
        interval_us: u64,
        at_end: Option<(u64, Instant)>,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let limiter = self.clone();
        runtime.spawn(async move {
            let left = match at_end {
                None => left,
                Some((generation, expires_at)) => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(expires_at)).await;
                    limiter.take_leftover(key_id, Some(generation))
                }
            };
            limiter.give_back(key_id, left, interval_us).await;
        });
    }

    /// Takes what the key's lease still holds (of `generation` only, when given), so that it
    /// can be given back.
    fn take_leftover(&self, key_id: Uuid, generation: Option<u64>) -> u32 {
        let Ok(mut leases) = self.inner.leases.lock() else {
            return 0;
        };
        match leases.get_mut(&key_id) {
            Some(lease) if generation.is_none_or(|g| g == lease.generation) => {
                std::mem::take(&mut lease.left)
            }
            _ => 0,
        }
    }

    /// Moves the key's `TAT` back by `left` intervals of `interval_us`. A failure loses that
    /// allowance (the safe side) and is not retried.
    async fn give_back(&self, key_id: Uuid, left: u32, interval_us: u64) {
        if left == 0 {
            return;
        }
        let amount = interval_us
            .saturating_mul(u64::from(left))
            .min(MAX_CAPACITY_US);
        let mut invocation = self.inner.return_script.prepare_invoke();
        invocation
            .key(self.key(key_id))
            .arg(amount)
            .arg(EXPIRY_MARGIN_MS);
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
        let taken: Vec<(Uuid, u32, u64)> = match self.inner.leases.lock() {
            Ok(mut leases) => leases
                .iter_mut()
                .filter(|(_, l)| l.left > 0)
                .map(|(key, l)| (*key, std::mem::take(&mut l.left), l.interval_us))
                .collect(),
            Err(_) => return,
        };
        for (key_id, left, interval_us) in taken {
            self.give_back(key_id, left, interval_us).await;
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
