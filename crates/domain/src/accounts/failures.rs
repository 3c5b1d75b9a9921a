//! [`FailedAuthLimit`]: failed authentications per client address, in process.

use std::hash::BuildHasher as _;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};

/// Sets of the table (a power of two); each holds [`WAYS`] addresses.
const SETS: usize = 2048;
/// Addresses per set: a new one takes the place of the one whose allowance is fullest.
const WAYS: usize = 4;
const MINUTE_US: i64 = 60_000_000;
const MICROS_PER_SECOND: i64 = 1_000_000;

/// At most `per_minute` failed authentications a minute per client address, in this process,
/// checked before anything is looked up: past it every request from that address is answered
/// "too many" (429 with `Retry-After`) with no lookup, until its allowance refills.
///
/// The allowance is a GCRA, as the rate limiter's: `per_minute` failures may come at once, then
/// one more every `60 s / per_minute`; a refused request records nothing. A failure is a refusal
/// of a key (malformed, bad checksum, unknown, expired, revoked, disabled user); a request with
/// no key at all costs nothing to answer and is not counted.
///
/// Addresses: an IPv4 address (also written as IPv4-mapped IPv6) is one source; an IPv6 address
/// counts as its /64, which one host or customer usually holds whole (so cycling through a
/// /64's addresses buys nothing).
///
/// Memory is fixed: a table of 2,048 sets of 4 sources (8,192 sources, 256 KiB), allocated at
/// the first failure. A source goes to the set its keyed hash picks (the key is random per
/// process, so no one can aim at another's set); a new source takes the place of the one in
/// that set whose allowance is fullest, which loses the least. A flood from more sources than
/// the table holds only makes their own entries short-lived.
#[derive(Debug)]
pub struct FailedAuthLimit {
    per_minute: u32,
    interval_us: i64,
    capacity_us: i64,
    hasher: std::hash::RandomState,
    table: Mutex<Vec<[Slot; WAYS]>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The source plus one (0: empty).
    source: u128,
    /// When its allowance is full again (µs since the epoch).
    tat_us: i64,
}

impl FailedAuthLimit {
    /// At most `per_minute` failures a minute per address; 0 turns the limit off.
    pub fn per_minute(per_minute: u32) -> Self {
        let interval_us = MINUTE_US / i64::from(per_minute.max(1));
        Self {
            per_minute,
            interval_us,
            capacity_us: interval_us * i64::from(per_minute.max(1)),
            hasher: std::hash::RandomState::new(),
            table: Mutex::new(Vec::new()),
        }
    }

    /// No limit.
    pub fn off() -> Self {
        Self::per_minute(0)
    }

    /// Whether the limit is on.
    pub fn is_on(&self) -> bool {
        self.per_minute > 0
    }

    /// The source `address` counts as: an IPv4 address, or an IPv6 /64, plus one (0 is "empty").
    fn source(address: IpAddr) -> u128 {
        let address = address.to_canonical();
        let bits = match address {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            // The /64, and a bit no IPv4 address has, so the two never meet.
            IpAddr::V6(v6) => (u128::from(v6) & !u128::from(u64::MAX)) | (1 << 32),
        };
        bits.wrapping_add(1)
    }

    fn set_of(&self, source: u128) -> usize {
        usize::try_from(self.hasher.hash_one(source)).unwrap_or(0) % SETS
    }

    fn micros(now: DateTime<Utc>) -> i64 {
        now.timestamp_micros()
    }

    /// `Err(seconds to wait)` when `address` used up its failures; `Ok` otherwise (and always
    /// when the limit is off).
    pub fn check(&self, address: IpAddr, now: DateTime<Utc>) -> Result<(), u64> {
        if !self.is_on() {
            return Ok(());
        }
        let source = Self::source(address);
        let now = Self::micros(now);
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(set) = table.get(self.set_of(source)) else {
            return Ok(());
        };
        let Some(slot) = set.iter().find(|s| s.source == source) else {
            return Ok(());
        };
        let owed = slot.tat_us.max(now) - now + self.interval_us;
        if owed <= self.capacity_us {
            return Ok(());
        }
        let wait_us = owed - self.capacity_us;
        Err(
            u64::try_from((wait_us + MICROS_PER_SECOND - 1) / MICROS_PER_SECOND)
                .unwrap_or(1)
                .max(1),
        )
    }

    /// Counts one failed authentication of `address`.
    pub fn record(&self, address: IpAddr, now: DateTime<Utc>) {
        if self.is_on() {
            let _ = self.spend(address, now, false);
        }
    }

    /// Takes one failure of the allowance of `address`, when it failed recently (it is in the
    /// table), ahead of a lookup that may fail, so that lookups in flight at once count as what
    /// they may turn out to be: an address that has failed gets no more concurrent lookups than
    /// its allowance, however many connections it opens. An address with no recent failure (every
    /// well-behaved client) takes nothing, so a burst of its requests whose key is not cached is
    /// never held back. `Ok(true)`: taken, give it back ([`give_back`](Self::give_back)) if the
    /// lookup finds no fault; `Ok(false)`: nothing taken; `Err(seconds to wait)`, taking
    /// nothing, when none is left.
    pub fn take(&self, address: IpAddr, now: DateTime<Utc>) -> Result<bool, u64> {
        if !self.is_on() {
            return Ok(false);
        }
        self.spend(address, now, true)
    }

    /// Gives back what [`take`](Self::take) took, when the lookup found no fault.
    pub fn give_back(&self, address: IpAddr) {
        if !self.is_on() {
            return;
        }
        let source = Self::source(address);
        let index = self.set_of(source);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = table
            .get_mut(index)
            .and_then(|set| set.iter_mut().find(|s| s.source == source))
        {
            slot.tat_us = slot.tat_us.saturating_sub(self.interval_us);
        }
    }

    /// Spends one failure of `address` under one lock (`Ok(true)`). When `checked`, only if it
    /// is in the table with a failure not yet refilled (else `Ok(false)`, spending nothing) and
    /// its allowance has one left (else `Err(seconds to wait)`, spending nothing).
    fn spend(&self, address: IpAddr, now: DateTime<Utc>, checked: bool) -> Result<bool, u64> {
        let source = Self::source(address);
        let now = Self::micros(now);
        let index = self.set_of(source);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if checked {
            let failed_recently = table
                .get(index)
                .and_then(|set| set.iter().find(|s| s.source == source))
                .is_some_and(|slot| slot.tat_us > now);
            if !failed_recently {
                return Ok(false);
            }
        }
        if table.is_empty() {
            table.resize(SETS, [Slot::default(); WAYS]);
        }
        let Some(set) = table.get_mut(index) else {
            return Ok(false);
        };
        let position = set
            .iter()
            .position(|s| s.source == source)
            .unwrap_or_else(|| {
                // Not tracked: the empty slot or the one whose allowance is fullest (its TAT the
                // earliest; an empty slot's is 0) makes room.
                set.iter()
                    .enumerate()
                    .min_by_key(|(_, s)| if s.source == 0 { i64::MIN } else { s.tat_us })
                    .map_or(0, |(i, _)| i)
            });
        let slot = &mut set[position];
        if slot.source != source {
            *slot = Slot {
                source,
                tat_us: now,
            };
        }
        let owed = slot.tat_us.max(now) - now + self.interval_us;
        if checked && owed > self.capacity_us {
            let wait_us = owed - self.capacity_us;
            return Err(
                u64::try_from((wait_us + MICROS_PER_SECOND - 1) / MICROS_PER_SECOND)
                    .unwrap_or(1)
                    .max(1),
            );
        }
        slot.tat_us = slot.tat_us.max(now).saturating_add(self.interval_us);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_ms(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_000_000_000_000 + ms).expect("valid")
    }

    fn ip(raw: &str) -> IpAddr {
        raw.parse().expect("an address")
    }

    #[test]
    fn an_address_gets_its_failures_then_waits_for_one_to_refill() {
        let limit = FailedAuthLimit::per_minute(3);
        let attacker = ip("203.0.113.7");
        for _ in 0..3 {
            assert_eq!(limit.check(attacker, at_ms(0)), Ok(()));
            limit.record(attacker, at_ms(0));
        }
        assert_eq!(limit.check(attacker, at_ms(0)), Err(20), "one more in 20 s");
        assert_eq!(limit.check(attacker, at_ms(19_999)), Err(1));
        assert_eq!(limit.check(attacker, at_ms(20_000)), Ok(()));
        assert_eq!(
            limit.check(ip("203.0.113.8"), at_ms(0)),
            Ok(()),
            "others unaffected"
        );
    }

    #[test]
    fn what_is_taken_ahead_counts_until_given_back_and_only_after_a_failure() {
        let limit = FailedAuthLimit::per_minute(3);
        let client = ip("203.0.113.7");
        for _ in 0..5 {
            assert_eq!(
                limit.take(client, at_ms(0)),
                Ok(false),
                "no failure yet: free"
            );
        }
        limit.record(client, at_ms(0));
        assert_eq!(limit.take(client, at_ms(0)), Ok(true));
        assert_eq!(limit.take(client, at_ms(0)), Ok(true));
        assert_eq!(
            limit.take(client, at_ms(0)),
            Err(20),
            "a failure and two lookups in flight: a fourth waits"
        );
        assert_eq!(limit.check(client, at_ms(0)), Err(20));
        limit.give_back(client);
        assert_eq!(limit.check(client, at_ms(0)), Ok(()), "one came back");
        assert_eq!(limit.take(client, at_ms(0)), Ok(true));
        assert!(limit.take(client, at_ms(0)).is_err());
        assert_eq!(
            limit.take(client, at_ms(60_000)),
            Ok(false),
            "refilled: no recent failure"
        );
    }

    #[test]
    fn off_never_refuses_and_keeps_nothing() {
        let limit = FailedAuthLimit::off();
        for _ in 0..100 {
            limit.record(ip("192.0.2.1"), at_ms(0));
        }
        assert_eq!(limit.check(ip("192.0.2.1"), at_ms(0)), Ok(()));
        assert!(limit.table.lock().expect("lock").is_empty());
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source_and_mapped_ipv4_is_ipv4() {
        let limit = FailedAuthLimit::per_minute(2);
        limit.record(ip("2001:db8:1:2::1"), at_ms(0));
        limit.record(ip("2001:db8:1:2:ffff::9"), at_ms(0));
        assert!(limit.check(ip("2001:db8:1:2::abcd"), at_ms(0)).is_err());
        assert_eq!(limit.check(ip("2001:db8:1:3::1"), at_ms(0)), Ok(()));
        limit.record(ip("::ffff:198.51.100.1"), at_ms(0));
        limit.record(ip("198.51.100.1"), at_ms(0));
        assert!(limit.check(ip("198.51.100.1"), at_ms(0)).is_err());
    }

    #[test]
    fn memory_stays_fixed_however_many_addresses_fail() {
        let limit = FailedAuthLimit::per_minute(1);
        for i in 0..50_000u32 {
            limit.record(IpAddr::from(i.to_be_bytes()), at_ms(0));
        }
        assert_eq!(limit.table.lock().expect("lock").len(), SETS);
        // The latest address of a set is still held to its limit.
        assert!(
            limit
                .check(IpAddr::from(49_999u32.to_be_bytes()), at_ms(0))
                .is_err()
        );
    }
}
