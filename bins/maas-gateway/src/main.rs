//! maas-gateway: the binary. CLI, settings and wiring of the `maas-*` crates; nothing else.

mod settings;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use maas_api::{AppState, Dependency};
use maas_domain::Registry;
use maas_domain::ports::{Cache, NoCache};
use slog::{Logger, error, info, warn};

use crate::settings::Settings;

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
    }
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
    match serde_json::to_string_pretty(&settings.redacted()) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
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
    let cache: Arc<dyn Cache> = if settings.cache.enabled {
        Arc::new(maas_cache::RedisCache::new(
            redis.clone(),
            settings.redis.key_prefix.clone(),
            Duration::from_secs(settings.cache.ttl_seconds),
            Duration::from_millis(settings.redis.command_timeout_ms),
        ))
    } else {
        Arc::new(NoCache)
    };
    let registry = Registry::new(
        Arc::new(maas_persistence::PgRegistryRepository::new(pg.clone())),
        cache,
    );
    let dependencies: Arc<[Dependency]> = Arc::new([
        Dependency {
            check: Arc::new(maas_persistence::PgHealth::new(pg)),
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
    let state = AppState {
        registry,
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

    let address = format!("{}:{}", settings.server.host, settings.server.port);
    let listener =
        TcpListener::bind(&address).map_err(|e| format!("cannot bind {address}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    info!(log, "listening"; "address" => local.to_string(), "port" => local.port());
    let server = maas_api::run(listener, state, &settings.server).map_err(|e| e.to_string())?;
    let result = server.await.map_err(|e| e.to_string());
    upkeep.abort();
    info!(log, "stopped");
    result
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
