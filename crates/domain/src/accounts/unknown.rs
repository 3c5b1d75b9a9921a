//! [`UnknownKeys`]: keys the store does not know, remembered in this process only.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};

use crate::identity::KeyHash;

/// Hashes of keys the store said it does not know, each for `ttl`, at most `max_entries` of
/// them: a repeated made-up key is refused without a lookup. Kept in process memory only (a
/// shared cache would let anyone add an entry per made-up key to it).
///
/// Creating a key forgets its hash here; another replica may go on refusing that hash for up
/// to `ttl`, which only matters for a key presented before it existed: never for a key the
/// gateway generated (it cannot have been presented before), only for a bootstrap key an
/// operator wrote.
///
/// When full, expired entries go; if that frees less than half, everything goes (an attacker
/// who fills it pays a lookup per key for it, and the per-address limit of failures bounds
/// that). So an insertion costs amortised O(1).
#[derive(Debug)]
pub(crate) struct UnknownKeys {
    ttl: TimeDelta,
    max_entries: usize,
    entries: Mutex<HashMap<KeyHash, DateTime<Utc>>>,
}

impl UnknownKeys {
    pub(crate) fn new(ttl: std::time::Duration, max_entries: usize) -> Self {
        Self {
            ttl: TimeDelta::from_std(ttl).unwrap_or(TimeDelta::MAX),
            max_entries,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn is_on(&self) -> bool {
        self.max_entries > 0 && self.ttl > TimeDelta::zero()
    }

    /// Whether `hash` is known to be unknown at `now`.
    pub(crate) fn contains(&self, hash: &KeyHash, now: DateTime<Utc>) -> bool {
        if !self.is_on() {
            return false;
        }
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(hash).is_some_and(|until| *until > now)
    }

    /// Remembers that the store does not know `hash`.
    pub(crate) fn insert(&self, hash: KeyHash, now: DateTime<Utc>) {
        if !self.is_on() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.max_entries {
            entries.retain(|_, until| *until > now);
            if entries.len() >= self.max_entries / 2 {
                entries.clear();
            }
        }
        entries.insert(hash, now.checked_add_signed(self.ttl).unwrap_or(now));
    }

    /// Forgets `hash` (a key with it was just created).
    pub(crate) fn forget(&self, hash: &KeyHash) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(hash);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn hash(n: u32) -> KeyHash {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        KeyHash::from_bytes(&bytes).expect("32 bytes")
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("valid")
    }

    #[test]
    fn an_unknown_key_is_remembered_for_its_ttl_and_forgotten_when_created() {
        let unknown = UnknownKeys::new(Duration::from_secs(60), 10);
        unknown.insert(hash(1), at(0));
        assert!(unknown.contains(&hash(1), at(59)));
        assert!(!unknown.contains(&hash(1), at(60)));
        assert!(!unknown.contains(&hash(2), at(0)));
        unknown.forget(&hash(1));
        assert!(!unknown.contains(&hash(1), at(0)));
    }

    #[test]
    fn it_never_holds_more_than_its_bound() {
        let unknown = UnknownKeys::new(Duration::from_secs(60), 100);
        for n in 0..10_000 {
            unknown.insert(hash(n), at(0));
            assert!(unknown.len() <= 100);
        }
        assert!(unknown.contains(&hash(9_999), at(0)), "the latest is kept");
    }

    #[test]
    fn zero_entries_or_ttl_keeps_nothing() {
        for unknown in [
            UnknownKeys::new(Duration::ZERO, 10),
            UnknownKeys::new(Duration::from_secs(60), 0),
        ] {
            unknown.insert(hash(1), at(0));
            assert!(!unknown.contains(&hash(1), at(0)));
        }
    }
}
