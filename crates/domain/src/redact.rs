//! Connection strings shown without their secrets: one renderer for every store's URL, so that
//! settings printed by `maas-gateway config` or written in a log line never show a password.
//!
//! Each adapter parses its own connection string with its client's own parser (what it will
//! really connect with) and hands the parts to [`ConnectionUrl`], which renders them again with
//! the password replaced. A string the parser refuses is not shown at all ([`UNPARSEABLE`]):
//! where its password starts and ends is exactly what is not known.

use std::fmt;

/// What replaces a password.
pub const REDACTED: &str = "***";

/// What a connection string its parser refuses is shown as.
pub const UNPARSEABLE: &str = "(not a valid connection string; hidden)";

/// The parts of a connection string, rendered as `scheme://user:***@host:port,…/path?k=v&…`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionUrl {
    /// `postgres`, `redis`, …
    pub scheme: &'static str,
    /// The user name, if any.
    pub user: Option<String>,
    /// Whether a password was given (it is shown as [`REDACTED`]).
    pub has_password: bool,
    /// `host:port` of each host, in order (already bracketed for IPv6).
    pub hosts: Vec<String>,
    /// The database (Postgres's name, Redis's number), or a socket's path; `/` in it is kept.
    pub path: Option<String>,
    /// Further parameters worth showing. A parameter named like a secret (`password`, `pass`,
    /// `passfile`, `sslpassword`) is shown as [`REDACTED`] whatever its value.
    pub params: Vec<(String, String)>,
}

impl ConnectionUrl {
    /// `host:port`, with an IPv6 address in brackets.
    pub fn host_port(host: &str, port: u16) -> String {
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }
}

impl fmt::Display for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        if let Some(user) = &self.user {
            write!(f, "{}", Encoded(user))?;
            if self.has_password {
                write!(f, ":{REDACTED}")?;
            }
            f.write_str("@")?;
        } else if self.has_password {
            write!(f, ":{REDACTED}@")?;
        }
        for (i, host) in self.hosts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", Encoded(host))?;
        }
        if let Some(path) = &self.path {
            f.write_str("/")?;
            for segment_or_slash in path.split_inclusive('/') {
                let (segment, slash) = segment_or_slash
                    .strip_suffix('/')
                    .map_or((segment_or_slash, ""), |s| (s, "/"));
                write!(f, "{}{slash}", Encoded(segment))?;
            }
        }
        for (i, (key, value)) in self.params.iter().enumerate() {
            f.write_str(if i == 0 { "?" } else { "&" })?;
            let secret = ["password", "pass", "passfile", "sslpassword"].contains(&key.as_str());
            let value = if secret { REDACTED } else { value };
            write!(f, "{}={}", Encoded(key), Encoded(value))?;
        }
        Ok(())
    }
}

/// Percent-encodes what could be read as part of the URL's structure (and any control
/// character), keeping `:` `[` `]` of hosts readable.
struct Encoded<'a>(&'a str);

impl fmt::Display for Encoded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '@' | '/' | '?' | '#' | '&' | '=' | '%' | ',' | ' ' => {
                    write!(f, "%{:02X}", u32::from(c))?;
                }
                c if c.is_control() => {
                    let mut bytes = [0; 4];
                    for byte in c.encode_utf8(&mut bytes).bytes() {
                        write!(f, "%{byte:02X}")?;
                    }
                }
                c => write!(f, "{c}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_replaced_and_the_rest_kept() {
        let url = ConnectionUrl {
            scheme: "postgres",
            user: Some("u".into()),
            has_password: true,
            hosts: vec![
                ConnectionUrl::host_port("db", 5432),
                ConnectionUrl::host_port("::1", 6),
            ],
            path: Some("maas".into()),
            params: vec![
                ("application_name".into(), "gw".into()),
                ("sslpassword".into(), "hunter2".into()),
            ],
        };
        assert_eq!(
            url.to_string(),
            "postgres://u:***@db:5432,[::1]:6/maas?application_name=gw&sslpassword=***"
        );
    }

    #[test]
    fn structure_characters_in_parts_are_encoded() {
        let url = ConnectionUrl {
            scheme: "redis",
            user: Some("a@b/c".into()),
            has_password: false,
            hosts: vec!["h:1".into()],
            path: Some("0".into()),
            params: vec![],
        };
        assert_eq!(url.to_string(), "redis://a%40b%2Fc@h:1/0");
        let no_user = ConnectionUrl {
            scheme: "redis",
            has_password: true,
            hosts: vec!["h:1".into()],
            ..ConnectionUrl::default()
        };
        assert_eq!(no_user.to_string(), "redis://:***@h:1");
    }
}
