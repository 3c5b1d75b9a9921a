//! Test support (feature `test-util`): a database per test, cloned from a migrated template, and
//! fixtures of domain values (models, versions, users, API keys, usage events).
//!
//! ```no_run
//! # async fn example() {
//! use maas_persistence::PgRegistryRepository;
//! use maas_persistence::test_util::TestDatabase;
//!
//! let db = TestDatabase::new().await; // migrated, empty, this test's alone
//! let repo = PgRegistryRepository::new(db.pool());
//! // … the database is dropped with `db`.
//! # }
//! ```
//!
//! The server is the one in `MAAS_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); that URL must name a database to connect to for
//! administration, and its role must be allowed to create databases. Failures panic with a message
//! saying what to check: this is test code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::pool::{PgPool, build, establish};
use crate::settings::DatabaseSettings;

mod fixtures;

pub use fixtures::*;

/// Where the admin connection goes unless `MAAS_TEST_DATABASE_URL` says otherwise.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Key of the advisory lock that serializes template builds across test processes (held
/// exclusively while a template is built or old ones are pruned, shared while one is cloned).
const TEMPLATE_LOCK_KEY: i64 = 0x6d61_6173_746d_706c; // "maastmpl"
/// Name prefix of the migrated templates; the rest is a hash of the migrations.
const TEMPLATE_PREFIX: &str = "maas_tmpl_";
/// Templates of other migrations kept when a new one is built (the newest ones), so that test
/// runs of a few branches side by side do not rebuild each other's; older ones are dropped.
const OTHER_TEMPLATES_KEPT: usize = 3;
/// Attempts of statements that fail while another session briefly uses a database.
const BUSY_ATTEMPTS: u32 = 20;
/// The migrations the template is built from, read at run time so that editing one builds a new
/// template without recompiling.
const MIGRATIONS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations");

/// The template of this process, built (or found) once.
static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// A database of one test, dropped (with any connections to it) when this value is.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDatabase {
    /// A fresh database with the full schema, cloned from the migrated template.
    pub async fn new() -> Self {
        let template = TEMPLATE.get_or_init(ensure_template).await;
        Self::create(Some(template)).await
    }

    /// A fresh database without any schema, for migration tests.
    pub async fn empty() -> Self {
        Self::create(None).await
    }

    async fn create(template: Option<&str>) -> Self {
        let admin_url = admin_url();
        let name = format!("maas_test_{}", Uuid::new_v4().simple());
        let sql = match template {
            Some(template) => format!(r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#),
            None => format!(r#"CREATE DATABASE "{name}""#),
        };
        let mut admin = admin_connection(&admin_url).await;
        // Shared: no template is pruned while it is being cloned.
        lock(&mut admin, "pg_advisory_lock_shared").await;
        execute_when_not_busy(&mut admin, &sql).await;
        lock(&mut admin, "pg_advisory_unlock_shared").await;
        Self {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// Connection URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Name of this database.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Default settings pointed at this database (through `url`).
    pub fn settings(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: Some(self.url.clone()),
            ..DatabaseSettings::default()
        }
    }

    /// A pool over this database with default settings. Call it inside a Tokio runtime.
    pub fn pool(&self) -> PgPool {
        let settings = self.settings();
        build(settings.connection_url(), &settings)
    }

    /// Runs `sql` (one or more statements) outside the code under test, e.g. to corrupt a row
    /// or install a trigger.
    pub async fn execute(&self, sql: &str) {
        let mut conn = establish(&self.url, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.name));
        conn.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("`{sql}` failed: {e}"));
    }

    /// The one `bigint` that `sql` selects, e.g. `SELECT count(*) FROM models`; for asserting on
    /// what is stored, outside the code under test.
    pub async fn scalar(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Scalar {
            #[diesel(sql_type = BigInt)]
            value: i64,
        }
        let mut conn = establish(&self.url, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.name));
        let wrapped = format!("SELECT ({sql})::bigint AS value");
        let row: Scalar = diesel::sql_query(&wrapped)
            .get_result(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("`{wrapped}` failed: {e}"));
        row.value
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop may run outside any runtime, or inside a current-thread one that must not block on
        // itself: a thread with its own small runtime does the work.
        let admin_url = self.admin_url.clone();
        let sql = format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name);
        let outcome = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut admin = establish(&admin_url, Duration::from_secs(10)).await?;
                diesel::sql_query(sql)
                    .execute(&mut admin)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => "the dropping thread panicked".to_owned(),
        };
        eprintln!("could not drop test database {}: {error}", self.name);
    }
}

fn admin_url() -> String {
    std::env::var("MAAS_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

async fn admin_connection(url: &str) -> AsyncPgConnection {
    establish(url, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to the test database server at {url}: {e} \
                 (is PostgreSQL running? set MAAS_TEST_DATABASE_URL to point elsewhere)"
            )
        })
}

/// Runs `sql`, retrying while the database it touches is briefly in use by another session.
async fn execute_when_not_busy(conn: &mut AsyncPgConnection, sql: &str) {
    for attempt in 1..=BUSY_ATTEMPTS {
        match diesel::sql_query(sql).execute(conn).await {
            Ok(_) => return,
            Err(e) if attempt < BUSY_ATTEMPTS && e.to_string().contains("being accessed by") => {
                tokio::time::sleep(Duration::from_millis(50) * attempt).await;
            }
            Err(e) => panic!("`{sql}` failed: {e}"),
        }
    }
}

/// Finds or builds the migrated template of the current migrations, race-free across processes:
/// under an advisory lock, it is built under a temporary name and renamed when complete, so a
/// template that exists is always whole.
async fn ensure_template() -> String {
    let admin_url = admin_url();
    let template = format!(
        "{TEMPLATE_PREFIX}{:016x}",
        migrations_hash(Path::new(MIGRATIONS_DIR))
    );
    let mut admin = admin_connection(&admin_url).await;
    lock(&mut admin, "pg_advisory_lock").await;
    if !database_exists(&mut admin, &template).await {
        let building = format!("{template}_build");
        // Left over by a process that died mid-build.
        execute_when_not_busy(
            &mut admin,
            &format!(r#"DROP DATABASE IF EXISTS "{building}" WITH (FORCE)"#),
        )
        .await;
        execute_when_not_busy(&mut admin, &format!(r#"CREATE DATABASE "{building}""#)).await;
        if let Err(e) = crate::run_migrations(&with_database(&admin_url, &building)).await {
            panic!("migrating the test template {building} failed: {e}");
        }
        // The migration connection may take a moment to go away after it is closed.
        execute_when_not_busy(
            &mut admin,
            &format!(r#"ALTER DATABASE "{building}" RENAME TO "{template}""#),
        )
        .await;
        execute_when_not_busy(
            &mut admin,
            &format!(r#"ALTER DATABASE "{template}" IS_TEMPLATE true"#),
        )
        .await;
        // The migrations changed: templates of much older ones are no longer needed.
        prune_locked(&mut admin, TEMPLATE_PREFIX, &template, OTHER_TEMPLATES_KEPT).await;
    }
    lock(&mut admin, "pg_advisory_unlock").await;
    template
}

/// Drops the databases named `prefix…` except `current` and the `keep` newest others (by OID,
/// i.e. creation order), under the template lock, and returns the names it dropped.
///
/// The test databases' own templates are pruned this way whenever a new one is built; this is
/// public for that rule's test, which runs it on a prefix of its own. Best effort: a database
/// that cannot be dropped (a session outside the tests is connected to it) is kept and named
/// on stderr.
pub async fn prune_templates(prefix: &str, current: &str, keep: usize) -> Vec<String> {
    let mut admin = admin_connection(&admin_url()).await;
    lock(&mut admin, "pg_advisory_lock").await;
    let dropped = prune_locked(&mut admin, prefix, current, keep).await;
    lock(&mut admin, "pg_advisory_unlock").await;
    dropped
}

async fn prune_locked(
    admin: &mut AsyncPgConnection,
    prefix: &str,
    current: &str,
    keep: usize,
) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        datname: String,
    }
    let stale: Vec<Name> = match diesel::sql_query(
        "SELECT datname FROM pg_database WHERE starts_with(datname, $1) AND datname <> $2 \
         ORDER BY oid DESC OFFSET $3",
    )
    .bind::<Text, _>(prefix)
    .bind::<Text, _>(current)
    .bind::<BigInt, _>(i64::try_from(keep).unwrap_or(i64::MAX))
    .load(admin)
    .await
    {
        Ok(stale) => stale,
        Err(e) => {
            eprintln!("listing old test templates failed: {e}");
            return Vec::new();
        }
    };
    let mut dropped = Vec::new();
    for Name { datname } in stale {
        // A template cannot be dropped; one that is in use goes back to being one.
        let unmark = format!(r#"ALTER DATABASE "{datname}" IS_TEMPLATE false"#);
        let drop = format!(r#"DROP DATABASE IF EXISTS "{datname}""#);
        let outcome = match diesel::sql_query(unmark).execute(admin).await {
            Ok(_) => diesel::sql_query(drop).execute(admin).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(_) => dropped.push(datname),
            Err(e) => {
                eprintln!("could not drop the old test template {datname}: {e}");
                let remark = format!(r#"ALTER DATABASE "{datname}" IS_TEMPLATE true"#);
                let _ = diesel::sql_query(remark).execute(admin).await;
            }
        }
    }
    dropped
}

async fn lock(admin: &mut AsyncPgConnection, function: &str) {
    diesel::sql_query(format!("SELECT {function}($1)"))
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(admin)
        .await
        .unwrap_or_else(|e| panic!("{function} on the test server failed: {e}"));
}

async fn database_exists(admin: &mut AsyncPgConnection, name: &str) -> bool {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let found: Count =
        diesel::sql_query("SELECT count(*) AS count FROM pg_database WHERE datname = $1")
            .bind::<Text, _>(name)
            .get_result(admin)
            .await
            .unwrap_or_else(|e| panic!("looking up database {name} failed: {e}"));
    found.count > 0
}

/// `url` with its database (the path) replaced by `database`; the query string is kept.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    format!("{}/{database}{query}", &base[..path])
}

/// FNV-1a over the relative paths and contents of every file under `dir`, in path order.
fn migrations_hash(dir: &Path) -> u64 {
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes.iter().chain([0xff].iter()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for file in files {
        let relative = file.strip_prefix(dir).unwrap_or(&file);
        feed(relative.to_string_lossy().as_bytes());
        let contents = std::fs::read(&file)
            .unwrap_or_else(|e| panic!("cannot read migration file {}: {e}", file.display()));
        feed(&contents);
    }
    hash
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read migrations directory {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced_and_the_rest_kept() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/admin?sslmode=disable", "t1"),
            "postgres://u:p@h/t1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "t1"),
            "postgres://h:5432/t1"
        );
    }

    #[test]
    fn the_template_hash_follows_the_migration_files() {
        let dir = std::env::temp_dir().join(format!("maas-hash-{}", Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("m1")).expect("temp dir");
        std::fs::write(dir.join("m1/up.sql"), "CREATE TABLE a ();").expect("write");
        let first = migrations_hash(&dir);
        assert_eq!(first, migrations_hash(&dir));
        std::fs::write(dir.join("m1/up.sql"), "CREATE TABLE b ();").expect("write");
        assert_ne!(first, migrations_hash(&dir));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
