//! The composition root: [`Application::build`] wires every adapter into the api's `AppState`
//! and binds the listener; [`Application::run_until_stopped`] serves until the server stops,
//! then writes what is still queued. The binary and the full-stack tests start the gateway
//! through it, so there is exactly one wiring.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use maas_api::{AppState, Dependency};
use maas_cache::{LocalStore, RedisPool, RedisRateLimiter};
use maas_domain::accounts::FailedAuthLimit;
use maas_domain::identity::PlaintextKey;
use maas_domain::ports::{Cache, NoCache};
use maas_domain::{Accounts, Quotas, Registry, Usage};
use maas_persistence::PgPool;
use metrics_exporter_prometheus::PrometheusHandle;
use slog::{Logger, info, warn};
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::settings::Settings;

/// How long the usage writer gets, after the server stopped, to write what is still queued.
const USAGE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway that is wired and listening, not yet serving: [`port`](Self::port) is bound (use
/// port 0 for a free one), and [`run_until_stopped`](Self::run_until_stopped) serves.
pub struct Application {
    address: SocketAddr,
    server: Server,
    /// `server.admin_port`'s listener (`/metrics`), when configured.
    admin: Option<(SocketAddr, Server)>,
    log: Logger,
    accounts: Accounts,
    limiter: RedisRateLimiter,
    local_tier: Option<Arc<LocalStore>>,
    tasks: BackgroundTasks,
}

/// What runs beside the server: written or flushed at the end, or just stopped.
struct BackgroundTasks {
    /// Writes usage events; ends by itself once the server (every queue sender) is gone.
    usage_writer: JoinHandle<()>,
    /// `run_upkeep` of the Prometheus recorder.
    upkeep: JoinHandle<()>,
    /// Writes `last_used_at` of used keys every `auth.usage_flush_seconds`.
    key_usage_flush: JoinHandle<()>,
    /// The in-process cache tier's invalidation subscription.
    invalidation_listener: Option<JoinHandle<()>>,
    /// Drops the upstream balancer's idle fleets.
    fleet_sweep: JoinHandle<()>,
}

impl BackgroundTasks {
    fn abort_periodic(&self) {
        self.upkeep.abort();
        self.key_usage_flush.abort();
        self.fleet_sweep.abort();
        if let Some(listener) = &self.invalidation_listener {
            listener.abort();
        }
    }
}

/// Stops a running [`Application`] from elsewhere (a test, an embedding service).
#[derive(Clone)]
pub struct ShutdownHandle(ServerHandle);

impl ShutdownHandle {
    /// Stops the server: with `graceful`, in-flight requests first finish (within
    /// `server.shutdown_timeout_seconds`). `run_until_stopped` then flushes and returns.
    pub async fn stop(&self, graceful: bool) {
        self.0.stop(graceful).await;
    }
}

impl Application {
    /// Waits for Postgres, migrates, connects Redis, wires the use-cases and adapters, starts
    /// the background tasks, bootstraps the first admin (`auth.bootstrap_admin_key`) and binds
    /// `server.host:server.port`.
    ///
    /// # Errors
    /// Postgres unreachable for `database.startup_timeout_seconds`, a failed migration, an
    /// unusable Redis URL, no usable CA certificates, a port that cannot be bound.
    pub async fn build(settings: Settings, log: &Logger) -> Result<Self, Error> {
        let metrics = maas_telemetry::metrics::install_recorder(env!("CARGO_PKG_VERSION"))?;
        crate::commands::migrate(log, &settings).await?;
        let pg = maas_persistence::connect(&settings.database).await?;
        let redis = maas_cache::connect(&settings.redis).await?;

        let local_tier = settings
            .cache
            .local_enabled()
            .then(|| LocalStore::new(settings.cache.local_ttl(), settings.cache.local_max_entries));
        let caches = Caches {
            settings: &settings,
            redis: &redis,
            local_tier: local_tier.as_ref(),
            log,
        };
        let secrets = settings.secret_keys()?;
        let registry_store =
            maas_persistence::PgRegistryRepository::new(pg.clone()).with_secrets(secrets.clone());
        warn_about_secrets(log, &registry_store, secrets.can_store()).await;
        let registry = Registry::new(
            Arc::new(registry_store),
            caches.with_ttl(Duration::from_secs(settings.cache.ttl_seconds)),
        )
        .with_reserved_names(settings.reserved_names()?)
        .with_secret_storage(secrets.can_store());
        let accounts = accounts(&settings, &pg, &caches);
        let invalidation_listener = match &local_tier {
            Some(local) => Some(tokio::spawn(
                maas_cache::listen_for_invalidations_with_logger(
                    &settings.redis,
                    Arc::clone(local),
                    // Generous: a slow ping only makes the tier step aside, which costs round
                    // trips.
                    settings.redis.command_timeout().max(Duration::from_secs(1)),
                    log.clone(),
                )?,
            )),
            None => None,
        };
        bootstrap_admin(log, &settings, &accounts).await?;

        let limiter = RedisRateLimiter::from_settings(redis.clone(), &settings.redis)
            .with_leases(Duration::from_millis(settings.rate_limit.lease_ms))
            .with_logger(log.clone());
        let upstream = maas_api::proxy::Upstream::new(&settings.upstream)?
            .with_max_tokens_per_call(settings.usage.max_tokens_per_call);
        maas_api::meters::limit_models(settings.metrics.max_models);
        let (usage_queue, usage_receiver) =
            maas_api::usage::UsageQueue::new(settings.usage.queue_capacity);
        let usage_store = Arc::new(maas_persistence::PgUsageRepository::new(pg.clone()));
        let usage = Usage::new(usage_store.clone());
        let quotas = Quotas::new(
            Arc::new(limiter.clone()),
            usage_store,
            Arc::new(maas_persistence::PgIdentityRepository::new(pg.clone())),
            settings.rate_limit.limits(),
            settings
                .rate_limit
                .token_policy(settings.usage.max_tokens_per_call),
        );
        let tasks = BackgroundTasks {
            usage_writer: tokio::spawn(maas_api::usage::write_usage(
                usage_receiver,
                usage.clone(),
                Some(quotas.clone()),
                settings.usage.batch_size,
                log.clone(),
            )),
            upkeep: tokio::spawn(upkeep(metrics.clone())),
            key_usage_flush: tokio::spawn(flush_key_usage_every(
                Duration::from_secs(settings.auth.usage_flush_seconds),
                accounts.clone(),
                log.clone(),
            )),
            invalidation_listener,
            fleet_sweep: tokio::spawn(upstream.sweep_fleets()),
        };
        let state = AppState {
            registry,
            upstream,
            upstream_settings: settings.upstream.clone(),
            usage_queue,
            usage,
            accounts: accounts.clone(),
            rate_limiter: Arc::new(limiter.clone()),
            rate_limit: settings.rate_limit,
            quotas,
            client_address: maas_api::client_address::ClientAddress::new(
                &settings.auth.trusted_proxies,
            ),
            dependencies: dependencies(&settings, pg, redis),
            metrics,
            logger: log.clone(),
        };

        let admin = match settings.server.admin_port {
            Some(port) => {
                let listener = bind(&settings.server.host, port)?;
                let address = listener.local_addr().map_err(Error::Server)?;
                let server = maas_api::run_admin(listener, state.clone()).map_err(Error::Server)?;
                info!(log, "admin listener (metrics) up"; "address" => address.to_string(),
                    "port" => address.port());
                Some((address, server))
            }
            None => None,
        };
        let listener = bind(&settings.server.host, settings.server.port)?;
        let address = listener.local_addr().map_err(Error::Server)?;
        let server = maas_api::run(listener, state, &settings.server).map_err(Error::Server)?;
        info!(log, "listening"; "address" => address.to_string(), "port" => address.port());
        Ok(Self {
            address,
            server,
            admin,
            log: log.clone(),
            accounts,
            limiter,
            local_tier,
            tasks,
        })
    }

    /// The port the server is bound to.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The address the server is bound to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The port of the admin listener (`server.admin_port`), when there is one.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin.as_ref().map(|(address, _)| address.port())
    }

    /// Stops the server from elsewhere; see [`ShutdownHandle::stop`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.server.handle())
    }

    /// The identity use-cases the app serves with (to flush key usage when a test needs it now
    /// rather than after `auth.usage_flush_seconds`).
    pub fn accounts(&self) -> Accounts {
        self.accounts.clone()
    }

    /// Whether the in-process cache tier is in use: configured, and its invalidation
    /// subscription up (it stays aside until then).
    pub fn local_cache_live(&self) -> bool {
        self.local_tier
            .as_ref()
            .is_some_and(|local| local.is_live())
    }

    /// Serves until SIGTERM/SIGINT (see `maas_api::run`) or a [`ShutdownHandle`], drains, then
    /// writes the queued usage events (for up to 10 s), gives this replica's unused rate-limit
    /// leases back and writes the keys' `last_used_at`.
    ///
    /// # Errors
    /// When the HTTP server fails.
    pub async fn run_until_stopped(self) -> Result<(), Error> {
        let Self {
            server,
            admin,
            log,
            accounts,
            limiter,
            mut tasks,
            ..
        } = self;
        let admin = admin.map(|(_, admin)| {
            let handle = admin.handle();
            (tokio::spawn(admin), handle)
        });
        let served = server.await.map_err(Error::Server);
        if let Some((admin, handle)) = admin {
            handle.stop(true).await;
            let _ = admin.await;
        }
        info!(
            log,
            "server stopped: in-flight requests drained; writing the queued usage events"
        );
        // Every queue sender went with the server: the writer drains what is left, then ends.
        match tokio::time::timeout(USAGE_FLUSH_TIMEOUT, &mut tasks.usage_writer).await {
            Ok(_) => info!(log, "usage events flushed"),
            Err(_) => warn!(log, "usage events still queued after 10 s were not written"),
        }
        tasks.abort_periodic();
        limiter.release_leases().await;
        flush_key_usage(&log, &accounts).await;
        info!(log, "stopped");
        served
    }
}

/// Says what an operator should do about secrets at rest: set a key, or rotate what is still
/// stored in plain text.
async fn warn_about_secrets(
    log: &Logger,
    store: &maas_persistence::PgRegistryRepository,
    can_store: bool,
) {
    if !can_store {
        warn!(
            log,
            "secrets.encryption_key is not set: versions with an upstream_api_key are \
            refused (422) until it is"
        );
    }
    match store.plaintext_secrets().await {
        Ok(0) => {}
        Ok(count) => warn!(log, "upstream credentials are stored in plain text; \
            run `maas-gateway secrets rotate` to encrypt them"; "count" => count),
        Err(e) => warn!(log, "could not count plain-text upstream credentials";
            "error" => e.to_string()),
    }
}

fn bind(host: &str, port: u16) -> Result<TcpListener, Error> {
    let address = format!("{host}:{port}");
    TcpListener::bind(&address).map_err(|source| Error::Bind { address, source })
}

/// Registry reads and key lookups: Redis, behind an in-process tier that Redis pub/sub keeps
/// coherent across replicas (see `maas_cache::near`); [`NoCache`] with `cache.enabled = false`.
struct Caches<'a> {
    settings: &'a Settings,
    redis: &'a RedisPool,
    local_tier: Option<&'a Arc<LocalStore>>,
    log: &'a Logger,
}

impl Caches<'_> {
    fn with_ttl(&self, ttl: Duration) -> Arc<dyn Cache> {
        if !self.settings.cache.enabled {
            return Arc::new(NoCache);
        }
        let shared: Arc<dyn Cache> = Arc::new(
            maas_cache::RedisCache::new(
                self.redis.clone(),
                self.settings.redis.key_prefix.clone(),
                ttl,
                self.settings.redis.command_timeout(),
            )
            .with_logger(self.log.clone()),
        );
        match self.local_tier {
            Some(local) => Arc::new(maas_cache::NearCache::new(Arc::clone(local), shared)),
            None => shared,
        }
    }
}

/// The identity use-cases: key lookups cached for `auth.key_cache_ttl_seconds` (and keys the
/// store does not know remembered in process as long, at most `cache.local_max_entries` of
/// them, when the cache is on), `auth.failed_per_ip_per_minute`, `auth.max_keys_per_user`.
fn accounts(settings: &Settings, pg: &PgPool, caches: &Caches<'_>) -> Accounts {
    let key_ttl = Duration::from_secs(settings.auth.key_cache_ttl_seconds);
    let (unknown_ttl, unknown_entries) = if settings.cache.enabled {
        (key_ttl, settings.cache.local_max_entries)
    } else {
        (Duration::ZERO, 0)
    };
    Accounts::new(
        Arc::new(maas_persistence::PgIdentityRepository::new(pg.clone())),
        caches.with_ttl(key_ttl),
    )
    .with_unknown_keys(unknown_ttl, unknown_entries)
    .with_failed_auth_limit(FailedAuthLimit::per_minute(
        settings.auth.failed_per_ip_per_minute,
    ))
    .with_max_keys_per_user(settings.auth.max_keys_per_user)
}

/// Creates user `admin` with `auth.bootstrap_admin_key` unless an admin exists.
async fn bootstrap_admin(
    log: &Logger,
    settings: &Settings,
    accounts: &Accounts,
) -> Result<(), Error> {
    let Some(raw) = &settings.auth.bootstrap_admin_key else {
        return Ok(());
    };
    // The settings loader already checked the key's shape.
    let key = PlaintextKey::parse(raw).map_err(|e| Error::Domain(e.into()))?;
    match accounts.bootstrap_admin(&key).await {
        Ok(Some(user)) => info!(log, "bootstrap admin created";
            "username" => user.username.as_str(), "key_prefix" => key.display_prefix()),
        Ok(None) => info!(log, "an admin exists; bootstrap key not used"),
        Err(e) => return Err(Error::Bootstrap(e)),
    }
    Ok(())
}

/// What `/health/ready` checks: Postgres (required) and Redis (optional: without it the gateway
/// serves from Postgres, `degraded`).
fn dependencies(settings: &Settings, pg: PgPool, redis: RedisPool) -> Arc<[Dependency]> {
    Arc::new([
        Dependency {
            check: Arc::new(maas_persistence::PgHealth::new(pg)),
            required: true,
        },
        Dependency {
            check: Arc::new(maas_cache::RedisHealth::new(
                redis,
                settings.redis.command_timeout(),
            )),
            required: false,
        },
    ])
}

async fn upkeep(metrics: PrometheusHandle) {
    let mut tick = tokio::time::interval(maas_telemetry::metrics::UPKEEP_INTERVAL);
    loop {
        tick.tick().await;
        metrics.run_upkeep();
    }
}

async fn flush_key_usage_every(every: Duration, accounts: Accounts, log: Logger) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        flush_key_usage(&log, &accounts).await;
    }
}

async fn flush_key_usage(log: &Logger, accounts: &Accounts) {
    if let Err(e) = accounts.flush_key_usage().await {
        warn!(log, "writing last_used_at of API keys failed; will retry"; "error" => e.to_string());
    }
}
