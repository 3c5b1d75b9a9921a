//! maas-gateway: the binary. CLI, settings and wiring of the `maas-*` crates; nothing else.

mod settings;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use maas_api::{AppState, Dependency};
use maas_domain::identity::{KeyName, NewUser, PlaintextKey, Role};
use maas_domain::ports::{Cache, NoCache};
use maas_domain::values::Username;
use maas_domain::{Accounts, Registry, Usage};
use slog::{Logger, error, info, warn};

use crate::settings::Settings;

/// mimalloc instead of glibc's malloc: a proxied call allocates and frees a few hundred small
/// buffers across threads, and glibc's arenas were about a tenth of the gateway's CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The API gateway of a Model-as-a-Service platform.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Wait for Postgres, apply pending migrations, then serve (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// GET /health on the configured port; exit 0 when it answers 200 (for container health checks).
    Healthcheck,
    /// Print the effective settings as JSON, passwords redacted.
    Config,
    /// Manage users (for operators without HTTP access).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Manage API keys (for operators without HTTP access).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Create a user and print a first API key for it.
    Create {
        /// Same rules as model names.
        #[arg(long)]
        username: String,
        /// `admin` or `member`.
        #[arg(long, default_value = "member")]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create an API key for a user and print it (shown this once).
    Create {
        /// The user.
        #[arg(long)]
        username: String,
        /// A label for the key.
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

/// Exit status of a configuration error (as BSD's EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => print_config(&settings),
        Command::Healthcheck => healthcheck(&settings),
        Command::Migrate => {
            let (log, _guard) = maas_telemetry::logging::init_process_logger(&settings.log);
            exit(&log, migrate(&log, &settings).await)
        }
        Command::Serve => {
            let (log, _guard) = maas_telemetry::logging::init_process_logger(&settings.log);
            exit(&log, serve(&log, settings).await)
        }
        // Their stdout is the new key alone; logs go to stderr.
        Command::Users { command } => {
            let (log, _guard) =
                maas_telemetry::logging::init_process_logger_on(&settings.log, std::io::stderr());
            exit(&log, users(&log, &settings, command).await)
        }
        Command::Keys { command } => {
            let (log, _guard) =
                maas_telemetry::logging::init_process_logger_on(&settings.log, std::io::stderr());
            exit(&log, keys(&log, &settings, command).await)
        }
    }
}

/// Identity use-cases straight on Postgres, for the command line (no cache involved: the
/// commands only create, so no cached lookup can go stale).
async fn operator_accounts(log: &Logger, settings: &Settings) -> Result<Accounts, String> {
    migrate(log, settings).await?;
    let pg = maas_persistence::connect(&settings.database)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Accounts::new(
        Arc::new(maas_persistence::PgIdentityRepository::new(pg)),
        Arc::new(NoCache),
    ))
}

async fn users(log: &Logger, settings: &Settings, command: UsersCommand) -> Result<(), String> {
    let UsersCommand::Create { username, role } = command;
    let new = NewUser {
        username: Username::parse_as("username", username).map_err(|e| e.to_string())?,
        role: Role::parse(&role).map_err(|e| e.to_string())?,
    };
    let accounts = operator_accounts(log, settings).await?;
    let user = accounts
        .create_user_as_operator(new)
        .await
        .map_err(|e| e.to_string())?;
    let key = accounts
        .create_key_as_operator(&user.username, cli_key_name("cli")?)
        .await
        .map_err(|e| e.to_string())?;
    info!(log, "user created"; "username" => user.username.as_str(), "role" => user.role.as_str(),
        "key_prefix" => &key.key.prefix);
    print_stdout(key.plaintext.expose())
}

async fn keys(log: &Logger, settings: &Settings, command: KeysCommand) -> Result<(), String> {
    let KeysCommand::Create { username, name } = command;
    let username = Username::parse_as("username", username).map_err(|e| e.to_string())?;
    let name = cli_key_name(&name)?;
    let accounts = operator_accounts(log, settings).await?;
    let key = accounts
        .create_key_as_operator(&username, name)
        .await
        .map_err(|e| e.to_string())?;
    info!(log, "key created"; "username" => username.as_str(), "key_prefix" => &key.key.prefix);
    print_stdout(key.plaintext.expose())
}

/// Writes one line to stdout; a closed pipe is an error, not a panic (as `println!` would be).
fn print_stdout(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

fn cli_key_name(name: &str) -> Result<KeyName, String> {
    KeyName::parse(name.to_owned()).map_err(|e| e.to_string())
}

fn exit(log: &Logger, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(log, "exiting on error"; "error" => e);
            ExitCode::FAILURE
        }
    }
}

fn print_config(settings: &Settings) -> ExitCode {
    let printed = serde_json::to_string_pretty(&settings.redacted())
        .map_err(|e| e.to_string())
        .and_then(|text| print_stdout(&text));
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("could not print the settings: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Waits for Postgres (logging each retry), then applies pending migrations under an advisory
/// lock, so replicas starting together are safe.
async fn migrate(log: &Logger, settings: &Settings) -> Result<(), String> {
    let db = &settings.database;
    maas_persistence::wait_for_database(db, |attempt, delay, err| {
        warn!(log, "database not reachable yet; retrying";
            "attempt" => attempt, "retry_in_ms" => delay.as_millis(), "error" => err);
    })
    .await
    .map_err(|e| e.to_string())?;
    let applied = maas_persistence::run_migrations(&db.connection_url())
        .await
        .map_err(|e| e.to_string())?;
    info!(log, "migrations up to date"; "applied" => applied.join(","), "count" => applied.len());
    Ok(())
}

async fn serve(log: &Logger, settings: Settings) -> Result<(), String> {
    let metrics = maas_telemetry::metrics::install_recorder(env!("CARGO_PKG_VERSION"))
        .map_err(|e| e.to_string())?;
    migrate(log, &settings).await?;

    let pg = maas_persistence::connect(&settings.database)
        .await
        .map_err(|e| e.to_string())?;
    let redis = maas_cache::connect(&settings.redis)
        .await
        .map_err(|e| e.to_string())?;
    // Registry reads and key lookups: Redis, behind an in-process tier that Redis pub/sub keeps
    // coherent across replicas (see maas_cache::near).
    let local_tier = settings.cache.local_enabled().then(|| {
        maas_cache::LocalStore::new(settings.cache.local_ttl(), settings.cache.local_max_entries)
    });
    let cache_with_ttl = |ttl: Duration| -> Arc<dyn Cache> {
        if !settings.cache.enabled {
            return Arc::new(NoCache);
        }
        let shared: Arc<dyn Cache> = Arc::new(maas_cache::RedisCache::new(
            redis.clone(),
            settings.redis.key_prefix.clone(),
            ttl,
            settings.redis.command_timeout(),
        ));
        match &local_tier {
            Some(local) => Arc::new(maas_cache::NearCache::new(Arc::clone(local), shared)),
            None => shared,
        }
    };
    let registry = Registry::new(
        Arc::new(maas_persistence::PgRegistryRepository::new(pg.clone())),
        cache_with_ttl(Duration::from_secs(settings.cache.ttl_seconds)),
    );
    let key_cache = cache_with_ttl(Duration::from_secs(settings.auth.key_cache_ttl_seconds));
    let invalidation_listener = match &local_tier {
        Some(local) => Some(tokio::spawn(
            maas_cache::listen_for_invalidations(
                &settings.redis,
                Arc::clone(local),
                // Generous: a slow ping only makes the tier step aside, which costs round trips.
                settings.redis.command_timeout().max(Duration::from_secs(1)),
            )
            .map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    let accounts = Accounts::new(
        Arc::new(maas_persistence::PgIdentityRepository::new(pg.clone())),
        key_cache,
    );
    if let Some(raw) = &settings.auth.bootstrap_admin_key {
        // The settings loader already checked the key's shape.
        let key = PlaintextKey::parse(raw).map_err(|e| e.to_string())?;
        match accounts.bootstrap_admin(&key).await {
            Ok(Some(user)) => {
                info!(log, "bootstrap admin created"; "username" => user.username.as_str(),
                "key_prefix" => key.display_prefix())
            }
            Ok(None) => info!(log, "an admin exists; bootstrap key not used"),
            Err(e) => return Err(format!("creating the bootstrap admin failed: {e}")),
        }
    }
    let limiter = maas_cache::RedisRateLimiter::new(
        redis.clone(),
        settings.redis.key_prefix.clone(),
        Duration::from_millis(settings.redis.command_timeout_ms),
    )
    .with_leases(Duration::from_millis(settings.rate_limit.lease_ms));
    let rate_limiter = Arc::new(limiter.clone());
    let dependencies: Arc<[Dependency]> = Arc::new([
        Dependency {
            check: Arc::new(maas_persistence::PgHealth::new(pg.clone())),
            required: true,
        },
        Dependency {
            check: Arc::new(maas_cache::RedisHealth::new(
                redis,
                Duration::from_millis(settings.redis.command_timeout_ms),
            )),
            required: false,
        },
    ]);
    let upstream = maas_api::proxy::Upstream::new(&settings.upstream)
        .map_err(|e| format!("cannot build the upstream HTTP client: {e}"))?;
    let (usage_queue, usage_receiver) =
        maas_api::usage::UsageQueue::new(settings.usage.queue_capacity);
    let usage = Usage::new(Arc::new(maas_persistence::PgUsageRepository::new(
        pg.clone(),
    )));
    let usage_writer = tokio::spawn(maas_api::usage::write_usage(
        usage_receiver,
        usage.clone(),
        settings.usage.batch_size,
        log.clone(),
    ));
    let state = AppState {
        registry,
        upstream,
        upstream_settings: settings.upstream,
        usage_queue,
        usage,
        accounts: accounts.clone(),
        rate_limiter,
        rate_limit: settings.rate_limit,
        dependencies,
        metrics: metrics.clone(),
        logger: log.clone(),
    };

    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(maas_telemetry::metrics::UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            metrics.run_upkeep();
        }
    });
    let usage_flush = {
        let accounts = accounts.clone();
        let log = log.clone();
        let every = Duration::from_secs(settings.auth.usage_flush_seconds);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                flush_key_usage(&log, &accounts).await;
            }
        })
    };

    let address = format!("{}:{}", settings.server.host, settings.server.port);
    let listener =
        TcpListener::bind(&address).map_err(|e| format!("cannot bind {address}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    info!(log, "listening"; "address" => local.to_string(), "port" => local.port());
    let server = maas_api::run(listener, state, &settings.server).map_err(|e| e.to_string())?;
    let result = server.await.map_err(|e| e.to_string());
    info!(
        log,
        "server stopped: in-flight requests drained; writing the queued usage events"
    );
    // Every queue sender went with the server: the writer drains what is left, then ends.
    match tokio::time::timeout(Duration::from_secs(10), usage_writer).await {
        Ok(_) => info!(log, "usage events flushed"),
        Err(_) => warn!(log, "usage events still queued after 10 s were not written"),
    }
    // What this replica's rate-limit leases did not use goes back to the other replicas.
    limiter.release_leases().await;
    upkeep.abort();
    usage_flush.abort();
    if let Some(listener) = invalidation_listener {
        listener.abort();
    }
    flush_key_usage(log, &accounts).await;
    info!(log, "stopped");
    result
}

async fn flush_key_usage(log: &Logger, accounts: &Accounts) {
    if let Err(e) = accounts.flush_key_usage().await {
        warn!(log, "writing last_used_at of API keys failed; will retry"; "error" => e.to_string());
    }
}

/// GET /health over plain TCP: the runtime image has no shell or curl.
fn healthcheck(settings: &Settings) -> ExitCode {
    let host = match settings.server.host.as_str() {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" | "[::]" => "::1",
        other => other,
    };
    match probe(host, settings.server.port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(host: &str, port: u16) -> Result<(), String> {
    let timeout = Duration::from_secs(3);
    let address: SocketAddr = (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("{host} does not resolve"))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    match &head {
        b"HTTP/1.1 200" | b"HTTP/1.0 200" => Ok(()),
        other => Err(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(other)
        )),
    }
}
