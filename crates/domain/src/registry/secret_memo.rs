//! The upstream credentials a replica fetched on the routing path.

use uuid::Uuid;

use crate::model::ModelVersion;
use crate::serving::EndpointSecrets;

/// Upstream credentials fetched on the routing path, held in this process only (never in the
/// shared cache), by version id and `updated_at`: a version whose credentials changed is a
/// version with another `updated_at`, which the version's own invalidation brings to every
/// replica, so an entry is never used after its credentials changed. Bounded: past
/// [`SecretMemo::MAX_ENTRIES`] it starts over.
#[derive(Default)]
pub(super) struct SecretMemo {
    entries: std::sync::Mutex<std::collections::HashMap<VersionStamp, EndpointSecrets>>,
}

/// A version as of one change: its id and `updated_at`.
type VersionStamp = (Uuid, chrono::DateTime<chrono::Utc>);

impl SecretMemo {
    const MAX_ENTRIES: usize = 10_000;

    pub(super) fn get(&self, version: &ModelVersion) -> Option<EndpointSecrets> {
        let entries = self.entries.lock().ok()?;
        entries.get(&(version.id, version.updated_at)).cloned()
    }

    pub(super) fn put(&self, version: &ModelVersion, secrets: EndpointSecrets) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= Self::MAX_ENTRIES {
                entries.clear();
            }
            entries.insert((version.id, version.updated_at), secrets);
        }
    }
}
