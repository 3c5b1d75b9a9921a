//! [`SecretMemo`]: upstream credentials held in this process only.

use uuid::Uuid;

use crate::inference::UpstreamSecret;
use crate::model::ModelVersion;

/// Upstream credentials fetched on the routing path, held in this process only (never in the
/// shared cache), by version id and `updated_at`: a version whose credential changed is a
/// version with another `updated_at`, which the version's own invalidation brings to every
/// replica, so an entry is never used after its credential changed. Bounded: past
/// [`SecretMemo::MAX_ENTRIES`] it starts over.
#[derive(Default)]
pub(super) struct SecretMemo {
    entries: std::sync::Mutex<std::collections::HashMap<VersionStamp, Option<UpstreamSecret>>>,
}

/// A version as of one change: its id and `updated_at`.
type VersionStamp = (Uuid, chrono::DateTime<chrono::Utc>);

impl SecretMemo {
    const MAX_ENTRIES: usize = 10_000;

    pub(super) fn get(&self, version: &ModelVersion) -> Option<Option<UpstreamSecret>> {
        let entries = self.entries.lock().ok()?;
        entries.get(&(version.id, version.updated_at)).cloned()
    }

    pub(super) fn put(&self, version: &ModelVersion, secret: Option<UpstreamSecret>) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= Self::MAX_ENTRIES {
                entries.clear();
            }
            entries.insert((version.id, version.updated_at), secret);
        }
    }
}
