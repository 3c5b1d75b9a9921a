//! Settings: built-in defaults (each crate's `Default`), then an optional TOML file, then
//! `MAAS_` environment variables with `__` between levels (`MAAS_DATABASE__HOST=postgres`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};
use maas_api::ServerSettings;
use maas_cache::{CacheSettings, RedisSettings};
use maas_persistence::DatabaseSettings;
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
        // Only settings variables: MAAS_CONFIG and the test suite's MAAS_TEST_* are not settings.
        let settings_env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.starts_with("MAAS_") && k != CONFIG_PATH_VAR && !k.starts_with("MAAS_TEST_")
            })
            .collect();
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
        source
            .try_deserialize()
            .map_err(|e| SettingsError(one_line(&e.to_string())))
    }

    /// A copy safe to print: passwords (also inside URLs) are replaced.
    pub fn redacted(&self) -> Self {
        Self {
            database: self.database.redacted(),
            redis: self.redis.redacted(),
            ..self.clone()
        }
    }
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

        let err = Settings::load_from(env(&[(CONFIG_PATH_VAR, "/nonexistent/maas.toml")]))
            .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/maas.toml"), "{err}");
    }

    #[test]
    fn redaction_hides_passwords_everywhere() {
        let s = Settings::load_from(env(&[
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
