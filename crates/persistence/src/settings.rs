//! Typed database settings (the `database` table of the gateway's configuration).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What replaces a password wherever settings are shown.
const REDACTED: &str = "***";

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

/// Hides the password of a connection string, in the URL's user info and in a `password=`
/// parameter (query string or key/value form).
fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@') {
            let userinfo = &out[rest..rest + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest + colon + 1..rest + at, REDACTED);
            }
        }
    }
    redact_password_parameters(&out)
}

fn redact_password_parameters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.find("password=") {
        let starts_parameter = found == 0 || rest[..found].ends_with(['?', '&', ' ']);
        let value_start = found + "password=".len();
        out.push_str(&rest[..value_start]);
        rest = &rest[value_start..];
        if starts_parameter {
            let value_end = rest.find(['&', ' ', '#']).unwrap_or(rest.len());
            out.push_str(REDACTED);
            rest = &rest[value_end..];
        }
    }
    out.push_str(rest);
    out
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
    fn redaction_handles_password_parameters_and_urls_without_one() {
        assert_eq!(
            redact_url("postgres://db/maas?user=u&password=secret&x=1"),
            "postgres://db/maas?user=u&password=***&x=1"
        );
        assert_eq!(
            redact_url("host=db password=secret dbname=maas"),
            "host=db password=*** dbname=maas"
        );
        assert_eq!(redact_url("postgres://u@db/maas"), "postgres://u@db/maas");
        assert_eq!(
            redact_url("postgres://u:p@ss@db/maas"),
            "postgres://u:***@db/maas"
        );
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
