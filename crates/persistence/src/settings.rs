//! Typed database settings (the `database` table of the gateway's configuration).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What replaces a password wherever settings are shown.
use maas_domain::redact::{ConnectionUrl, REDACTED, UNPARSEABLE};

/// How to reach PostgreSQL and how to pool connections to it.
///
/// Every field has a default (see the [`Default`] impl, the one place they are written down), so
/// a configuration only names what it changes. `url`, when set, overrides `host`, `port`, `user`,
/// `password` and `name`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Server host name or IP address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Password of `user`, if the server asks for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Database name.
    pub name: String,
    /// A full connection URL (`postgres://user:pw@host:port/db`); overrides the parts above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Most connections the pool opens.
    pub pool_max_size: u32,
    /// How long a request waits for a pooled connection (and how long one connection attempt may
    /// take) before the database counts as unavailable.
    pub connect_timeout_seconds: u64,
    /// How long start-up waits for the database to accept connections.
    pub startup_timeout_seconds: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            host: "localhost".to_owned(),
            port: 5432,
            user: "postgres".to_owned(),
            password: None,
            name: "maas".to_owned(),
            url: None,
            pool_max_size: 16,
            connect_timeout_seconds: 5,
            startup_timeout_seconds: 60,
        }
    }
}

impl DatabaseSettings {
    /// The connection URL: `url` if set, else one built from the parts with user, password and
    /// database name percent-encoded.
    pub fn connection_url(&self) -> String {
        if let Some(url) = &self.url {
            return url.clone();
        }
        let credentials = match &self.password {
            Some(password) => format!("{}:{}", encode(&self.user), encode(password)),
            None => encode(&self.user),
        };
        // An IPv6 address must be bracketed to be told apart from the port.
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "postgres://{credentials}@{host}:{}/{}",
            self.port,
            encode(&self.name)
        )
    }

    /// A copy safe to print or log: the password, also inside `url`, becomes `***`.
    pub fn redacted(&self) -> Self {
        Self {
            password: self.password.as_ref().map(|_| REDACTED.to_owned()),
            url: self.url.as_deref().map(redact_url),
            ..self.clone()
        }
    }

    /// [`Self::connect_timeout_seconds`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_seconds)
    }

    /// [`Self::startup_timeout_seconds`] as a duration.
    pub fn startup_timeout(&self) -> Duration {
        Duration::from_secs(self.startup_timeout_seconds)
    }
}

/// Never shows the password, so settings can be logged with `{:?}`.
impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.redacted();
        f.debug_struct("DatabaseSettings")
            .field("host", &shown.host)
            .field("port", &shown.port)
            .field("user", &shown.user)
            .field("password", &shown.password)
            .field("name", &shown.name)
            .field("url", &shown.url)
            .field("pool_max_size", &shown.pool_max_size)
            .field("connect_timeout_seconds", &shown.connect_timeout_seconds)
            .field("startup_timeout_seconds", &shown.startup_timeout_seconds)
            .finish()
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The connection string as tokio-postgres reads it (URL or key/value form), rendered again
/// with its password replaced (see [`maas_domain::redact`]); one it cannot read is not shown.
fn redact_url(raw: &str) -> String {
    let Ok(config) = raw.parse::<tokio_postgres::Config>() else {
        return UNPARSEABLE.to_owned();
    };
    let ports = config.get_ports();
    let hosts = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            // One port for all hosts, or one each; none is the default.
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(name) => ConnectionUrl::host_port(name, port),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => {
                    ConnectionUrl::host_port(&path.display().to_string(), port)
                }
            }
        })
        .collect();
    let mut params = Vec::new();
    if let Some(name) = config.get_application_name() {
        params.push(("application_name".to_owned(), name.to_owned()));
    }
    if let Some(options) = config.get_options() {
        params.push(("options".to_owned(), options.to_owned()));
    }
    if let Some(timeout) = config.get_connect_timeout() {
        params.push(("connect_timeout".to_owned(), timeout.as_secs().to_string()));
    }
    let ssl = match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => Some("disable"),
        tokio_postgres::config::SslMode::Require => Some("require"),
        _ => None,
    };
    if let Some(mode) = ssl {
        params.push(("sslmode".to_owned(), mode.to_owned()));
    }
    ConnectionUrl {
        scheme: "postgres",
        user: config.get_user().map(str::to_owned),
        has_password: config.get_password().is_some(),
        hosts,
        path: config.get_dbname().map(str::to_owned),
        params,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = DatabaseSettings::default();
        assert_eq!(
            (s.host.as_str(), s.port, s.user.as_str(), s.name.as_str()),
            ("localhost", 5432, "postgres", "maas")
        );
        assert_eq!((s.password, s.url), (None, None));
        assert_eq!(
            (
                s.pool_max_size,
                s.connect_timeout_seconds,
                s.startup_timeout_seconds
            ),
            (16, 5, 60)
        );
    }

    #[test]
    fn the_url_is_built_from_parts_with_credentials_percent_encoded() {
        let s = DatabaseSettings {
            host: "db".into(),
            port: 6543,
            user: "maas user".into(),
            password: Some("p@ss:w/rd%".into()),
            name: "registry".into(),
            ..DatabaseSettings::default()
        };
        assert_eq!(
            s.connection_url(),
            "postgres://maas%20user:p%40ss%3Aw%2Frd%25@db:6543/registry"
        );
        let no_password = DatabaseSettings::default();
        assert_eq!(
            no_password.connection_url(),
            "postgres://postgres@localhost:5432/maas"
        );
        let v6 = DatabaseSettings {
            host: "::1".into(),
            ..DatabaseSettings::default()
        };
        assert_eq!(v6.connection_url(), "postgres://postgres@[::1]:5432/maas");
    }

    #[test]
    fn an_explicit_url_overrides_the_parts() {
        let s = DatabaseSettings {
            host: "ignored".into(),
            url: Some("postgres://u@elsewhere/db".into()),
            ..DatabaseSettings::default()
        };
        assert_eq!(s.connection_url(), "postgres://u@elsewhere/db");
    }

    #[test]
    fn redaction_hides_the_password_everywhere_and_keeps_the_rest() {
        let s = DatabaseSettings {
            password: Some("hunter2".into()),
            url: Some("postgres://maas:hunter2@db:5432/maas?sslmode=disable".into()),
            ..DatabaseSettings::default()
        };
        let r = s.redacted();
        assert_eq!(r.password.as_deref(), Some("***"));
        assert_eq!(
            r.url.as_deref(),
            Some("postgres://maas:***@db:5432/maas?sslmode=disable")
        );
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(r.host, s.host);
    }

    #[test]
    fn redaction_reads_the_string_as_the_client_does_and_hides_only_the_password() {
        for (raw, shown) in [
            (
                "postgres://db/maas?user=u&password=secret&application_name=x",
                "postgres://u:***@db:5432/maas?application_name=x",
            ),
            // A `/` in the password: the user info ends at the `@`, as the client reads it.
            (
                "postgres://u:hun/ter2@db/maas",
                "postgres://u:***@db:5432/maas",
            ),
            // The client reads the first `@` as the end of the user info, so does the display.
            (
                "postgres://u:p@ss@db/maas",
                "postgres://u:***@ss%40db:5432/maas",
            ),
            ("postgres://u@db/maas", "postgres://u@db:5432/maas"),
            // Key/value form, with spaces around `=` and quoted values.
            (
                "host=db password = x dbname=maas",
                "postgres://:***@db:5432/maas",
            ),
            (
                "host=db user=u password='a b' dbname=maas sslmode=disable",
                "postgres://u:***@db:5432/maas?sslmode=disable",
            ),
            ("host=a,b port=1,2 user=u", "postgres://u@a:1,b:2"),
        ] {
            let redacted = redact_url(raw);
            assert_eq!(redacted, shown, "{raw}");
            for secret in ["secret", "hun", "ter2", "a b", " x"] {
                assert!(!redacted.contains(secret), "{raw} -> {redacted}");
            }
        }
        assert_eq!(redact_url("postgres://u:pw@db:notaport/x"), UNPARSEABLE);
    }

    #[test]
    fn unknown_keys_are_rejected_and_missing_ones_defaulted() {
        let parsed: DatabaseSettings =
            serde_json::from_str(r#"{"port": 6000}"#).expect("valid settings");
        assert_eq!(parsed.port, 6000);
        assert_eq!(parsed.host, "localhost");
        let err =
            serde_json::from_str::<DatabaseSettings>(r#"{"hots": "x"}"#).expect_err("unknown key");
        assert!(err.to_string().contains("hots"), "{err}");
    }
}
