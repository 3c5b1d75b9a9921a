//! Settings: built-in defaults (each crate's `Default`), then an optional TOML file, then
//! `MAAS_` environment variables with `__` between levels (`MAAS_DATABASE__HOST=postgres`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};
use maas_api::{
    AuthSettings, MetricsSettings, RateLimitSettings, RegistrySettings, ServerSettings,
    UpstreamSettings, UsageSettings,
};
use maas_cache::{CacheSettings, RedisSettings};
use maas_domain::identity::{MonthlyTokens, PlaintextKey, TokensPerMinute};
use maas_domain::model::ReservedNames;
use maas_persistence::DatabaseSettings;
use maas_persistence::secrets::{SecretKeys, SecretsSettings};
use maas_telemetry::logging::LogSettings;
use serde::{Deserialize, Serialize};

/// The file read when `MAAS_CONFIG` is not set (skipped when it does not exist).
pub const DEFAULT_CONFIG_FILE: &str = "config/default.toml";
/// The variable naming another settings file (which must then exist).
pub const CONFIG_PATH_VAR: &str = "MAAS_CONFIG";
const ENV_PREFIX: &str = "MAAS";

/// Every setting of the gateway, one section per crate that owns it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// HTTP server.
    pub server: ServerSettings,
    /// PostgreSQL.
    pub database: DatabaseSettings,
    /// Redis.
    pub redis: RedisSettings,
    /// Cache-aside of registry reads.
    pub cache: CacheSettings,
    /// Logging.
    pub log: LogSettings,
    /// API keys.
    pub auth: AuthSettings,
    /// Per-key rate limits.
    pub rate_limit: RateLimitSettings,
    /// Calls to model servers.
    pub upstream: UpstreamSettings,
    /// The usage-event queue.
    pub usage: UsageSettings,
    /// Rules of the model registry.
    pub registry: RegistrySettings,
    /// Keys of the secrets stored at rest.
    pub secrets: SecretsSettings,
    /// Bounds on metric series.
    pub metrics: MetricsSettings,
}

/// Settings could not be loaded; the message names the key or file.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct SettingsError(String);

impl Settings {
    /// Loads from the process environment (and the file it points to).
    pub fn load() -> Result<Self, SettingsError> {
        Self::load_from(std::env::vars().collect())
    }

    /// Loads from the given environment variables, for tests and embedders.
    pub fn load_from(env: HashMap<String, String>) -> Result<Self, SettingsError> {
        let (file, required): (PathBuf, bool) = match env.get(CONFIG_PATH_VAR) {
            Some(path) => (PathBuf::from(path), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        if required && !Path::new(&file).is_file() {
            return Err(SettingsError(format!(
                "{CONFIG_PATH_VAR} names {}, which is not a readable file",
                file.display()
            )));
        }
        let settings_env = settings_variables(env)?;
        let source = Config::builder()
            .add_source(
                File::from(file.as_path())
                    .format(FileFormat::Toml)
                    .required(required),
            )
            .add_source(
                Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("_")
                    .separator("__")
                    .source(Some(settings_env)),
            )
            .build()
            .map_err(|e| SettingsError(one_line(&e.to_string())))?;
        let mut settings: Self = source
            .try_deserialize()
            .map_err(|e| SettingsError(one_line(&e.to_string())))?;
        // Compose passes `${MAAS_ADMIN_KEY:-}`: an empty value means "not set".
        if settings
            .auth
            .bootstrap_admin_key
            .as_deref()
            .is_some_and(|k| k.trim().is_empty())
        {
            settings.auth.bootstrap_admin_key = None;
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Rules that serde cannot express, each naming its key.
    fn validate(&self) -> Result<(), SettingsError> {
        if let Some(key) = &self.auth.bootstrap_admin_key {
            PlaintextKey::parse(key)
                .map_err(|e| SettingsError(format!("auth.bootstrap_admin_key {}", e.message)))?;
        }
        self.reserved_names()?;
        self.secret_keys()?;
        let positive = [
            (
                "rate_limit.default_rpm",
                u64::from(self.rate_limit.default_rpm),
            ),
            ("rate_limit.burst", u64::from(self.rate_limit.burst)),
            (
                "rate_limit.user_rpm",
                self.rate_limit.user_rpm.map_or(1, u64::from),
            ),
            (
                "auth.max_keys_per_user",
                u64::from(self.auth.max_keys_per_user),
            ),
            (
                "auth.key_cache_ttl_seconds",
                self.auth.key_cache_ttl_seconds,
            ),
            ("auth.usage_flush_seconds", self.auth.usage_flush_seconds),
            ("cache.ttl_seconds", self.cache.ttl_seconds),
            ("upstream.timeout_seconds", self.upstream.timeout_seconds),
            (
                "upstream.connect_timeout_seconds",
                self.upstream.connect_timeout_seconds,
            ),
            (
                "upstream.max_body_bytes",
                self.upstream.max_body_bytes as u64,
            ),
            (
                "server.body_read_timeout_seconds",
                self.server.body_read_timeout_seconds,
            ),
            ("usage.queue_capacity", self.usage.queue_capacity as u64),
            ("usage.batch_size", self.usage.batch_size as u64),
            ("usage.max_tokens_per_call", self.usage.max_tokens_per_call),
            (
                "upstream.max_concurrent_calls",
                self.upstream.max_concurrent_calls as u64,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(SettingsError(format!("{key} must be at least 1")));
            }
        }
        let limits = &self.rate_limit;
        let token_limits = [
            (
                "rate_limit.default_tpm",
                limits.default_tpm,
                TokensPerMinute::MAX,
            ),
            ("rate_limit.user_tpm", limits.user_tpm, TokensPerMinute::MAX),
            (
                "rate_limit.default_monthly_tokens",
                limits.default_monthly_tokens,
                MonthlyTokens::MAX,
            ),
            (
                "rate_limit.user_monthly_tokens",
                limits.user_monthly_tokens,
                MonthlyTokens::MAX,
            ),
            (
                "rate_limit.default_max_tokens",
                Some(limits.default_max_tokens.max(1)),
                MonthlyTokens::MAX,
            ),
        ];
        for (key, value, max) in token_limits {
            if value.is_some_and(|n| !(1..=max).contains(&n)) {
                return Err(SettingsError(format!("{key} must be from 1 to {max}")));
            }
        }
        if self
            .server
            .admin_port
            .is_some_and(|p| p != 0 && p == self.server.port)
        {
            return Err(SettingsError(
                "server.admin_port must differ from server.port".to_owned(),
            ));
        }
        if self.upstream.retry_budget_percent > 100 {
            return Err(SettingsError(
                "upstream.retry_budget_percent must be at most 100".to_owned(),
            ));
        }
        // A batch is taken from the queue, so it never holds more than the queue; a larger
        // setting would only reserve memory that is never used.
        let most = self.usage.queue_capacity;
        if self.usage.batch_size > most {
            return Err(SettingsError(format!(
                "usage.batch_size must be at most usage.queue_capacity ({most})"
            )));
        }
        Ok(())
    }

    /// `registry.reserved_names`, checked.
    ///
    /// # Errors
    /// An entry that is neither a model name nor a name start followed by `*`.
    pub fn reserved_names(&self) -> Result<ReservedNames, SettingsError> {
        ReservedNames::parse(&self.registry.reserved_names)
            .map_err(|e| SettingsError(format!("{} {}", e.field, e.message)))
    }

    /// `secrets.*`, checked.
    ///
    /// # Errors
    /// A key that is not 32 bytes of base64, naming its setting.
    pub fn secret_keys(&self) -> Result<SecretKeys, SettingsError> {
        self.secrets.keys().map_err(SettingsError)
    }

    /// A copy safe to print: passwords (also inside URLs) are replaced.
    pub fn redacted(&self) -> Self {
        Self {
            database: self.database.redacted(),
            redis: self.redis.redacted(),
            auth: self.auth.redacted(),
            secrets: self.secrets.redacted(),
            ..self.clone()
        }
    }
}

/// The sections of [`Settings`], for telling a mistyped variable from an unrelated one.
const SECTIONS: &[&str] = &[
    "server",
    "database",
    "redis",
    "cache",
    "log",
    "auth",
    "rate_limit",
    "upstream",
    "usage",
    "metrics",
];

/// The `MAAS_<SECTION>__<KEY>` variables. Every setting sits in a section, so a `MAAS_` variable
/// without `__` is not a setting (`MAAS_CONFIG`, the tests' `MAAS_TEST_*`, a shell's
/// `MAAS_ADMIN_KEY`) and is left alone, unless it starts like one with a single underscore
/// (`MAAS_DATABASE_HOST`): that is a typo that would otherwise be silently ignored.
fn settings_variables(
    env: HashMap<String, String>,
) -> Result<config::Map<String, String>, SettingsError> {
    let mut out = config::Map::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("MAAS_") else {
            continue;
        };
        if rest.contains("__") {
            out.insert(name, value);
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        if let Some(section) = SECTIONS
            .iter()
            .find(|s| lower.starts_with(&format!("{s}_")) && !lower.starts_with("test_"))
        {
            let key = &rest[section.len() + 1..];
            return Err(SettingsError(format!(
                "{name} is not read: settings need two underscores between section and key \
                 (MAAS_{}__{key})",
                section.to_ascii_uppercase()
            )));
        }
    }
    Ok(out)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        // Never pick up a developer's config/default.toml from the working directory.
        map.entry(CONFIG_PATH_VAR.to_owned())
            .or_insert_with(|| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/empty.toml").to_owned());
        map
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = Settings::load_from(env(&[])).expect("defaults load");
        assert_eq!(s.server.port, 8000);
        assert_eq!(s.server.host, "0.0.0.0");
        assert_eq!(s.database.host, "localhost");
        assert_eq!(s.redis.port, 6379);
        assert!(s.cache.enabled);
        assert_eq!(s.cache.ttl_seconds, 300);
    }

    #[test]
    fn nested_environment_variables_override_with_double_underscores() {
        let s = Settings::load_from(env(&[
            ("MAAS_DATABASE__HOST", "postgres"),
            ("MAAS_SERVER__PORT", "9000"),
            ("MAAS_REDIS__HOST", "redis"),
            ("MAAS_CACHE__ENABLED", "false"),
            ("MAAS_DATABASE__PASSWORD", "12345"),
            ("MAAS_LOG__FORMAT", "pretty"),
            ("MAAS_SERVER__WORKERS", "3"),
            ("MAAS_TEST_DATABASE_URL", "postgres://ignored"),
        ]))
        .expect("loads");
        assert_eq!(s.database.host, "postgres");
        assert_eq!(s.server.port, 9000);
        assert_eq!(s.redis.host, "redis");
        assert!(!s.cache.enabled);
        assert_eq!(s.database.password.as_deref(), Some("12345"));
        assert_eq!(s.server.workers, Some(3));
        assert_eq!(s.log.format, maas_telemetry::logging::LogFormat::Pretty);
    }

    #[test]
    fn a_usage_batch_is_at_most_the_queue() {
        let ok = Settings::load_from(env(&[
            ("MAAS_USAGE__QUEUE_CAPACITY", "20000"),
            ("MAAS_USAGE__BATCH_SIZE", "20000"),
        ]))
        .expect("a batch as large as the queue");
        assert_eq!(ok.usage.batch_size, 20_000);
        let e = Settings::load_from(env(&[
            ("MAAS_USAGE__QUEUE_CAPACITY", "100"),
            ("MAAS_USAGE__BATCH_SIZE", "101"),
        ]))
        .expect_err("larger than the queue");
        assert!(e.to_string().contains("usage.batch_size"), "{e}");
    }

    #[test]
    fn upstream_networks_are_lists_in_toml_and_comma_separated_in_the_environment() {
        let net = |s: &str| maas_api::proxy::IpNetwork::parse(s).expect(s);
        let defaults = Settings::load_from(env(&[])).expect("defaults");
        assert!(defaults.upstream.allowed_networks.is_empty());
        assert!(
            defaults
                .upstream
                .denied_networks
                .contains(&net("127.0.0.0/8"))
        );
        assert!(
            defaults
                .upstream
                .denied_networks
                .contains(&net("169.254.0.0/16"))
        );
        assert!(defaults.upstream.denied_networks.contains(&net("::1/128")));

        let s = Settings::load_from(env(&[
            (
                "MAAS_UPSTREAM__ALLOWED_NETWORKS",
                "127.0.0.1/32, 10.0.0.0/8,::1/128",
            ),
            ("MAAS_UPSTREAM__DENIED_NETWORKS", ""),
        ]))
        .expect("loads");
        assert_eq!(
            s.upstream.allowed_networks,
            vec![net("127.0.0.1/32"), net("10.0.0.0/8"), net("::1")]
        );
        assert!(s.upstream.denied_networks.is_empty(), "empty means none");
        let one = Settings::load_from(env(&[("MAAS_UPSTREAM__ALLOWED_NETWORKS", "10.1.2.3")]))
            .expect("one address");
        assert_eq!(one.upstream.allowed_networks, vec![net("10.1.2.3/32")]);

        let dir = std::env::temp_dir().join(format!("maas-networks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("gw.toml");
        std::fs::write(
            &file,
            "[upstream]\nallowed_networks = [\"192.168.0.0/16\", \"fd00::/8\"]\n\
             denied_networks = [\"127.0.0.0/8\"]\n",
        )
        .expect("write file");
        let path = file.to_string_lossy().into_owned();
        let s = Settings::load_from(env(&[(CONFIG_PATH_VAR, path.as_str())])).expect("loads");
        assert_eq!(
            s.upstream.allowed_networks,
            vec![net("192.168.0.0/16"), net("fd00::/8")]
        );
        assert_eq!(s.upstream.denied_networks, vec![net("127.0.0.0/8")]);
        std::fs::remove_dir_all(&dir).ok();

        for (key, value) in [
            ("MAAS_UPSTREAM__ALLOWED_NETWORKS", "127.0.0.1/33"),
            ("MAAS_UPSTREAM__DENIED_NETWORKS", "10.0.0.0/8,localhost"),
        ] {
            let err = Settings::load_from(env(&[(key, value)])).expect_err(value);
            let named = key
                .trim_start_matches("MAAS_")
                .replace("__", ".")
                .to_lowercase();
            assert!(err.to_string().contains(&named), "{err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    #[test]
    fn the_shipped_config_file_holds_the_built_in_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/default.toml");
        let s = Settings::load_from(env(&[(CONFIG_PATH_VAR, path)])).expect("loads");
        assert_eq!(s, Settings::load_from(env(&[])).expect("defaults"));
    }

    #[test]
    fn the_limits_on_calls_tokens_and_model_series_load_and_are_checked() {
        let defaults = Settings::load_from(env(&[])).expect("defaults");
        assert_eq!(defaults.upstream.max_concurrent_calls, 1024);
        assert_eq!(defaults.usage.max_tokens_per_call, 10_000_000);
        assert_eq!(defaults.metrics.max_models, 1000);
        let s = Settings::load_from(env(&[
            ("MAAS_UPSTREAM__MAX_CONCURRENT_CALLS", "8"),
            ("MAAS_USAGE__MAX_TOKENS_PER_CALL", "5000"),
            ("MAAS_METRICS__MAX_MODELS", "0"),
        ]))
        .expect("loads");
        assert_eq!(s.upstream.max_concurrent_calls, 8);
        assert_eq!(s.usage.max_tokens_per_call, 5000);
        assert_eq!(s.metrics.max_models, 0, "every model under `other`");
        for key in [
            "MAAS_UPSTREAM__MAX_CONCURRENT_CALLS",
            "MAAS_USAGE__MAX_TOKENS_PER_CALL",
        ] {
            let err = Settings::load_from(env(&[(key, "0")])).expect_err(key);
            let named = key
                .trim_start_matches("MAAS_")
                .replace("__", ".")
                .to_lowercase();
            assert!(err.to_string().contains(&named), "{err}");
        }
        let err = Settings::load_from(env(&[("MAAS_METRICS_MAX_MODELS", "3")])).expect_err("one _");
        assert!(
            err.to_string().contains("MAAS_METRICS__MAX_MODELS"),
            "{err}"
        );
    }

    #[test]
    fn log_levels_take_both_spellings_of_warning() {
        use maas_telemetry::logging::LogLevel;
        for (spelled, level) in [
            ("warning", LogLevel::Warning),
            ("warn", LogLevel::Warning),
            ("error", LogLevel::Error),
            ("debug", LogLevel::Debug),
        ] {
            let s = Settings::load_from(env(&[("MAAS_LOG__LEVEL", spelled)])).expect(spelled);
            assert_eq!(s.log.level, level, "{spelled}");
        }
        let e = Settings::load_from(env(&[("MAAS_LOG__LEVEL", "loud")])).expect_err("not a level");
        assert!(e.to_string().contains("log.level"), "{e}");
    }

    #[test]
    fn maas_variables_that_are_not_settings_are_left_alone() {
        let s = Settings::load_from(env(&[
            ("MAAS_ADMIN_KEY", "maas_whatever"),
            ("MAAS_TEST_DATABASE_URL", "postgres://x"),
            ("MAAS_SOMETHING_ELSE", "1"),
            ("OTHER__VAR", "1"),
        ]))
        .expect("loads");
        assert_eq!(s, Settings::load_from(env(&[])).expect("defaults"));
    }

    #[test]
    fn the_file_layer_sits_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("maas-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("gw.toml");
        std::fs::write(
            &file,
            "[server]\nport = 7000\n[database]\nname = \"fromfile\"\n",
        )
        .expect("write file");
        let path = file.to_string_lossy().into_owned();
        let s = Settings::load_from(env(&[
            (CONFIG_PATH_VAR, path.as_str()),
            ("MAAS_SERVER__PORT", "7001"),
        ]))
        .expect("loads");
        assert_eq!(s.server.port, 7001, "environment beats the file");
        assert_eq!(s.database.name, "fromfile", "the file beats the defaults");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_values_are_one_line_errors_naming_the_key() {
        let err = Settings::load_from(env(&[("MAAS_SERVER__PORT", "abc")])).expect_err("abc");
        let text = err.to_string();
        assert!(text.contains("server.port"), "{text}");
        assert!(!text.contains('\n'));

        let err = Settings::load_from(env(&[("MAAS_LOG__FORMAT", "xml")])).expect_err("xml");
        assert!(
            err.to_string().contains("log.format") || err.to_string().contains("xml"),
            "{err}"
        );

        let err = Settings::load_from(env(&[("MAAS_DATABSE__HOST", "x")])).expect_err("typo");
        assert!(err.to_string().contains("databse"), "{err}");

        let err = Settings::load_from(env(&[("MAAS_DATABASE_HOST", "x")])).expect_err("one _");
        assert!(err.to_string().contains("MAAS_DATABASE__HOST"), "{err}");

        let err = Settings::load_from(env(&[(CONFIG_PATH_VAR, "/nonexistent/maas.toml")]))
            .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/maas.toml"), "{err}");
    }

    #[test]
    fn auth_and_rate_limit_settings_load_and_are_checked() {
        let key = format!("maas_{}", "k".repeat(40));
        let s = Settings::load_from(env(&[
            ("MAAS_AUTH__BOOTSTRAP_ADMIN_KEY", key.as_str()),
            ("MAAS_RATE_LIMIT__DEFAULT_RPM", "120"),
            ("MAAS_RATE_LIMIT__BURST", "5"),
            ("MAAS_RATE_LIMIT__FAIL_OPEN", "false"),
        ]))
        .expect("loads");
        assert_eq!(s.auth.bootstrap_admin_key.as_deref(), Some(key.as_str()));
        assert_eq!(s.rate_limit.default_rpm, 120);
        assert_eq!(s.rate_limit.burst, 5);
        assert!(!s.rate_limit.fail_open);

        let unset =
            Settings::load_from(env(&[("MAAS_AUTH__BOOTSTRAP_ADMIN_KEY", "")])).expect("empty");
        assert_eq!(unset.auth.bootstrap_admin_key, None);
        let err = Settings::load_from(env(&[("MAAS_AUTH__BOOTSTRAP_ADMIN_KEY", "short")]))
            .expect_err("bad key");
        assert!(
            err.to_string().contains("auth.bootstrap_admin_key"),
            "{err}"
        );
        let err = Settings::load_from(env(&[("MAAS_RATE_LIMIT__BURST", "0")])).expect_err("0");
        assert!(err.to_string().contains("rate_limit.burst"), "{err}");
        let tpm = Settings::load_from(env(&[("MAAS_RATE_LIMIT__USER_TPM", "5000")])).expect("ok");
        assert_eq!(tpm.rate_limit.user_tpm, Some(5_000));
        let err =
            Settings::load_from(env(&[("MAAS_RATE_LIMIT__DEFAULT_TPM", "0")])).expect_err("0");
        assert!(err.to_string().contains("rate_limit.default_tpm"), "{err}");
    }

    #[test]
    fn redaction_hides_passwords_everywhere() {
        let s = Settings::load_from(env(&[
            (
                "MAAS_AUTH__BOOTSTRAP_ADMIN_KEY",
                "maas_0123456789abcdef0123456789abcdef",
            ),
            ("MAAS_DATABASE__PASSWORD", "hunter2"),
            ("MAAS_REDIS__URL", "redis://:sekrit@redis:6379/0"),
        ]))
        .expect("loads");
        let printed = serde_json::to_string(&s.redacted()).expect("serializes");
        assert!(
            !printed.contains("hunter2") && !printed.contains("sekrit"),
            "{printed}"
        );
    }
}
