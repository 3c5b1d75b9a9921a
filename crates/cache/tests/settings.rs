//! Redis and cache settings: defaults, URL building, redaction, pool validation.

use maas_cache::{CacheError, CacheSettings, RedisSettings, connect};

#[test]
fn defaults_match_the_documented_ones() {
    let redis = RedisSettings::default();
    assert_eq!(redis.host, "localhost");
    assert_eq!(redis.port, 6379);
    assert_eq!(redis.db, 0);
    assert_eq!(redis.password, None);
    assert_eq!(redis.url, None);
    assert_eq!(redis.pool_max_size, 16);
    assert_eq!(redis.command_timeout_ms, 100);
    assert_eq!(redis.key_prefix, "maas:");
    assert_eq!(
        CacheSettings::default(),
        CacheSettings {
            enabled: true,
            ttl_seconds: 300,
            local_ttl_ms: 5_000,
            local_max_entries: 10_000,
        }
    );
}

#[test]
fn missing_keys_take_their_defaults() {
    let redis: RedisSettings =
        serde_json::from_str(r#"{"host":"redis","port":6380}"#).expect("valid settings");
    assert_eq!(redis.host, "redis");
    assert_eq!(redis.port, 6380);
    assert_eq!(redis.pool_max_size, 16);
    let cache: CacheSettings = serde_json::from_str("{}").expect("valid settings");
    assert_eq!(cache, CacheSettings::default());
}

#[test]
fn unknown_keys_are_rejected() {
    assert!(serde_json::from_str::<RedisSettings>(r#"{"hots":"redis"}"#).is_err());
    assert!(serde_json::from_str::<CacheSettings>(r#"{"ttl":5}"#).is_err());
}

#[test]
fn the_url_is_built_from_the_parts_with_the_password_encoded() {
    let redis = RedisSettings {
        host: "redis".to_owned(),
        port: 6380,
        db: 2,
        password: Some("p@ss word".to_owned()),
        ..RedisSettings::default()
    };
    assert_eq!(
        redis.connection_url(),
        "redis://:p%40ss%20word@redis:6380/2"
    );
    assert_eq!(
        RedisSettings::default().connection_url(),
        "redis://localhost:6379/0"
    );
}

#[test]
fn an_explicit_url_overrides_the_parts() {
    let redis = RedisSettings {
        host: "ignored".to_owned(),
        url: Some("redis://cache.internal:7000/3".to_owned()),
        ..RedisSettings::default()
    };
    assert_eq!(redis.connection_url(), "redis://cache.internal:7000/3");
}

#[test]
fn redacted_settings_hide_every_password() {
    let redis = RedisSettings {
        password: Some("hunter2".to_owned()),
        url: Some("redis://user:hunter2@cache.internal:7000/3".to_owned()),
        ..RedisSettings::default()
    };
    let redacted = redis.redacted();
    assert_eq!(redacted.password.as_deref(), Some("***"));
    assert_eq!(
        redacted.url.as_deref(),
        Some("redis://user:***@cache.internal:7000/3")
    );
    let unix = RedisSettings {
        url: Some("redis+unix:///run/redis.sock?db=1&pass=hunter2".to_owned()),
        ..RedisSettings::default()
    };
    assert_eq!(
        unix.redacted().url.as_deref(),
        Some("redis+unix:///run/redis.sock?db=1&pass=***")
    );
    for shown in [
        format!("{redis:?}"),
        format!("{unix:?}"),
        serde_json::to_string(&redacted).expect("serializable"),
    ] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

#[test]
fn an_unparsable_url_is_redacted_whole() {
    for url in ["not a url with hunter2", "redis://u:hun/ter2@host/0"] {
        let redis = RedisSettings {
            url: Some(url.to_owned()),
            ..RedisSettings::default()
        };
        assert_eq!(
            redis.redacted().url.as_deref(),
            Some(maas_domain::redact::UNPARSEABLE),
            "{url}"
        );
    }
}

#[tokio::test]
async fn connecting_rejects_an_invalid_url_without_showing_its_password() {
    let redis = RedisSettings {
        url: Some("http://user:hunter2@example.invalid".to_owned()),
        ..RedisSettings::default()
    };
    let error = connect(&redis).await.expect_err("not a Redis URL");
    assert!(matches!(error, CacheError::InvalidUrl { .. }), "{error:?}");
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

#[tokio::test]
async fn connecting_rejects_a_zero_pool_size_or_timeout() {
    for (redis, key) in [
        (
            RedisSettings {
                pool_max_size: 0,
                ..RedisSettings::default()
            },
            "redis.pool_max_size",
        ),
        (
            RedisSettings {
                command_timeout_ms: 0,
                ..RedisSettings::default()
            },
            "redis.command_timeout_ms",
        ),
    ] {
        let error = connect(&redis).await.expect_err("invalid setting");
        assert!(error.to_string().starts_with(key), "{error}");
    }
}

#[tokio::test]
async fn connecting_does_not_need_redis_to_be_up() {
    let redis = RedisSettings {
        url: Some(maas_cache::test_util::UNREACHABLE_REDIS_URL.to_owned()),
        ..RedisSettings::default()
    };
    assert!(connect(&redis).await.is_ok());
}
