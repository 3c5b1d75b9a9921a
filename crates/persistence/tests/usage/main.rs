//! [`PgUsageRepository`] against a real PostgreSQL, one fresh database per test.

mod insert;
mod quotas;
mod report;

use chrono::{DateTime, TimeZone as _, Utc};
use maas_persistence::PgUsageRepository;
use maas_persistence::test_util::TestDatabase;

/// A repository over a database of its own; keep the database alive as long as the repository.
async fn repository() -> (TestDatabase, PgUsageRepository) {
    let db = TestDatabase::new().await;
    let repo = PgUsageRepository::new(db.pool());
    (db, repo)
}

/// A time in UTC, to the second.
fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .expect("valid time")
}
