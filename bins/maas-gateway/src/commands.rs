//! The operator commands besides `serve`: migrate, create users and keys, probe health, print
//! the settings.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::sync::Arc;
use std::time::Duration;

use maas_domain::Accounts;
use maas_domain::identity::{KeyName, NewUser, Role};
use maas_domain::ports::NoCache;
use maas_domain::values::Username;
use slog::{Logger, info, warn};

use crate::error::Error;
use crate::settings::Settings;

/// Waits for Postgres (logging each retry), then applies pending migrations under an advisory
/// lock, so replicas starting together are safe.
///
/// # Errors
/// Postgres unreachable for `database.startup_timeout_seconds`, or a migration failed.
pub async fn migrate(log: &Logger, settings: &Settings) -> Result<(), Error> {
    let db = &settings.database;
    maas_persistence::wait_for_database(db, |attempt, delay, err| {
        warn!(log, "database not reachable yet; retrying";
            "attempt" => attempt, "retry_in_ms" => delay.as_millis(), "error" => err);
    })
    .await?;
    let applied = maas_persistence::run_migrations(&db.connection_url()).await?;
    info!(log, "migrations up to date"; "applied" => applied.join(","), "count" => applied.len());
    Ok(())
}

/// Identity use-cases straight on Postgres, for the command line (no cache involved: the
/// commands only create, so no cached lookup can go stale).
async fn operator_accounts(log: &Logger, settings: &Settings) -> Result<Accounts, Error> {
    migrate(log, settings).await?;
    let pg = maas_persistence::connect(&settings.database).await?;
    Ok(Accounts::new(
        Arc::new(maas_persistence::PgIdentityRepository::new(pg)),
        Arc::new(NoCache),
    ))
}

/// `users create`: a user and a first key for it; prints the key (stdout holds only the key).
///
/// # Errors
/// An invalid username or role, a taken name, Postgres unavailable.
pub async fn create_user(
    log: &Logger,
    settings: &Settings,
    username: String,
    role: &str,
) -> Result<(), Error> {
    let new = NewUser {
        username: Username::parse_as("username", username).map_err(domain)?,
        role: Role::parse(role).map_err(domain)?,
        rate_limit_rpm: None,
        tokens: maas_domain::identity::TokenQuotas::default(),
    };
    let accounts = operator_accounts(log, settings).await?;
    let user = accounts.create_user_as_operator(new).await?;
    let key = accounts
        .create_key_as_operator(&user.username, key_name("cli")?)
        .await?;
    info!(log, "user created"; "username" => user.username.as_str(), "role" => user.role.as_str(),
        "key_prefix" => &key.key.prefix);
    print_stdout(key.plaintext.expose())
}

/// `keys create`: another key for a user; prints it.
///
/// # Errors
/// An unknown user, an invalid name, Postgres unavailable.
pub async fn create_key(
    log: &Logger,
    settings: &Settings,
    username: String,
    name: &str,
) -> Result<(), Error> {
    let username = Username::parse_as("username", username).map_err(domain)?;
    let name = key_name(name)?;
    let accounts = operator_accounts(log, settings).await?;
    let key = accounts.create_key_as_operator(&username, name).await?;
    info!(log, "key created"; "username" => username.as_str(), "key_prefix" => &key.key.prefix);
    print_stdout(key.plaintext.expose())
}

fn domain(e: maas_domain::ValidationError) -> Error {
    Error::Domain(e.into())
}

fn key_name(name: &str) -> Result<KeyName, Error> {
    KeyName::parse(name.to_owned()).map_err(domain)
}

/// `secrets rotate`: every stored upstream credential encrypted again under
/// `secrets.encryption_key` (those under `secrets.previous_keys`, and those stored in plain
/// text before encryption existed); prints how many.
///
/// # Errors
/// No `secrets.encryption_key`, a credential under a key that is not configured, Postgres.
pub async fn rotate_secrets(log: &Logger, settings: &Settings) -> Result<(), Error> {
    let keys = settings.secret_keys()?;
    migrate(log, settings).await?;
    let pg = maas_persistence::connect(&settings.database).await?;
    let store = maas_persistence::PgRegistryRepository::new(pg).with_secrets(keys);
    let rewritten = store
        .rotate_secrets()
        .await
        .map_err(|e| Error::Domain(e.into()))?;
    info!(log, "upstream credentials encrypted under the current key"; "rewritten" => rewritten);
    print_stdout(&rewritten.to_string())
}

/// Writes one line to stdout; a closed pipe is an error, not a panic (as `println!` would be).
///
/// # Errors
/// When stdout cannot be written.
pub fn print_stdout(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(Error::Stdout)
}

/// `config`: the effective settings as JSON, passwords redacted.
///
/// # Errors
/// When stdout cannot be written.
pub fn print_config(settings: &Settings) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(&settings.redacted())
        .map_err(|e| Error::Stdout(std::io::Error::other(e)))?;
    print_stdout(&text)
}

/// `healthcheck`: GET /health on the configured port over plain TCP (the runtime image has no
/// shell or curl).
///
/// # Errors
/// [`Error::Unhealthy`] with the reason when it does not answer 200 within 3 s.
pub fn healthcheck(settings: &Settings) -> Result<(), Error> {
    let host = match settings.server.host.as_str() {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" | "[::]" => "::1",
        other => other,
    };
    Ok(probe(host, settings.server.port)?)
}

/// Why `healthcheck` found the server unhealthy.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The host could not be resolved.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// `server.host`, or the loopback address standing for a wildcard.
        host: String,
        /// What the resolver said.
        source: std::io::Error,
    },
    /// The host resolved to no address.
    #[error("{0} does not resolve")]
    NoAddress(String),
    /// No connection within the timeout, or the connection failed while asking or reading.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The server answered, not with 200: the start of its status line.
    #[error("unexpected answer {0:?}")]
    UnexpectedAnswer(String),
}

fn probe(host: &str, port: u16) -> Result<(), ProbeError> {
    let timeout = Duration::from_secs(3);
    let address: SocketAddr = (host, port)
        .to_socket_addrs()
        .map_err(|source| ProbeError::Resolve {
            host: host.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| ProbeError::NoAddress(host.to_owned()))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    match &head {
        b"HTTP/1.1 200" | b"HTTP/1.0 200" => Ok(()),
        other => Err(ProbeError::UnexpectedAnswer(
            String::from_utf8_lossy(other).into_owned(),
        )),
    }
}
