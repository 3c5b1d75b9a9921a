//! The api's handlers and middleware over the domain's in-memory ports: what the HTTP face does
//! with each answer of the use-cases, with no Postgres, Redis or network. (The same routes
//! against the real adapters are the full-stack tests of `bins/maas-gateway`.)

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use maas_api::{AppState, Dependency, RateLimitSettings, ServerSettings, UpstreamSettings};
use maas_domain::identity::Role;
use maas_domain::ports::HealthError;
use maas_domain::test_util::{InMemory, InMemoryHealth, InMemoryRateLimiter};
use serde_json::{Value, json};

/// The use-cases over in-memory adapters, and the adapters the tests steer.
struct World {
    ports: InMemory,
    limiter: Arc<InMemoryRateLimiter>,
    postgres: Arc<InMemoryHealth>,
    redis: Arc<InMemoryHealth>,
}

impl World {
    fn new() -> Self {
        Self {
            ports: InMemory::new(),
            limiter: Arc::new(InMemoryRateLimiter::new()),
            postgres: Arc::new(InMemoryHealth::new("postgres")),
            redis: Arc::new(InMemoryHealth::new("redis")),
        }
    }

    fn state(&self, rate_limit: RateLimitSettings) -> AppState {
        let (usage_queue, _receiver) = maas_api::usage::UsageQueue::new(100);
        AppState {
            registry: self.ports.registry.clone(),
            accounts: self.ports.accounts.clone(),
            rate_limiter: self.limiter.clone(),
            rate_limit,
            quotas: self.ports.quotas(
                self.limiter.clone(),
                rate_limit.limits(),
                rate_limit.token_policy(10_000_000),
            ),
            client_address: maas_api::client_address::ClientAddress::default(),
            upstream: maas_api::proxy::Upstream::new(&UpstreamSettings::default())
                .expect("an upstream client"),
            upstream_settings: UpstreamSettings::default(),
            usage_queue,
            usage: self.ports.usage.clone(),
            dependencies: Arc::new([
                Dependency {
                    check: self.postgres.clone(),
                    required: true,
                },
                Dependency {
                    check: self.redis.clone(),
                    required: false,
                },
            ]),
            metrics: maas_telemetry::metrics::install_recorder("test").expect("a recorder"),
            logger: maas_telemetry::logging::discard_logger(),
        }
    }

    /// A key of a new user `name` with `role`.
    async fn key(&self, name: &str, role: Role) -> String {
        let user = self.ports.user(name, role).await;
        self.ports.key_of(&user).await.expose().to_owned()
    }
}

fn generous() -> RateLimitSettings {
    RateLimitSettings {
        default_rpm: 1_000_000,
        burst: 1_000,
        ..RateLimitSettings::default()
    }
}

async fn service(
    world: &World,
    rate_limit: RateLimitSettings,
) -> impl Service<
    actix_http::Request,
    Response = ServiceResponse<impl MessageBody>,
    Error = actix_web::Error,
> {
    test::init_service(maas_api::app(
        world.state(rate_limit),
        ServerSettings::default(),
    ))
    .await
}

fn as_key(req: TestRequest, key: &str) -> TestRequest {
    req.insert_header(("authorization", format!("Bearer {key}")))
}

fn header(res: &ServiceResponse<impl MessageBody>, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The status, content type and JSON body of a response.
async fn answer(res: ServiceResponse<impl MessageBody>) -> (StatusCode, String, Value) {
    let status = res.status();
    let content_type = header(&res, "content-type").unwrap_or_default();
    let body = test::read_body(res).await;
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, content_type, json)
}

#[actix_web::test]
async fn a_request_without_a_usable_key_is_401_with_a_bearer_challenge() {
    let world = World::new();
    let app = service(&world, generous()).await;
    for req in [
        TestRequest::get().uri("/api/v1/models"),
        as_key(
            TestRequest::get().uri("/api/v1/models"),
            "maas_not-a-key-of-anyone-0123456789abcdef",
        ),
        as_key(TestRequest::get().uri("/api/v1/models"), "malformed"),
    ] {
        let res = test::call_service(&app, req.to_request()).await;
        assert_eq!(
            header(&res, "www-authenticate").as_deref(),
            Some("Bearer realm=\"maas-gateway\"")
        );
        let (status, content_type, body) = answer(res).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(body["status"], 401);
    }
}

#[actix_web::test]
async fn a_member_creates_and_reads_a_model_and_another_member_cannot_change_it() {
    let world = World::new();
    let app = service(&world, generous()).await;
    let owner_user = world.ports.user("owner", Role::Member).await;
    let owner = world.ports.key_of(&owner_user).await.expose().to_owned();
    let other = world.key("other", Role::Member).await;
    let admin = world.key("root", Role::Admin).await;

    let created = test::call_service(
        &app,
        as_key(TestRequest::post().uri("/api/v1/models"), &owner)
            .set_json(json!({"name": "llama", "tags": ["llm"], "visibility": "public"}))
            .to_request(),
    )
    .await;
    assert_eq!(
        header(&created, "location").as_deref(),
        Some("/api/v1/models/llama")
    );
    let (status, _, body) = answer(created).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["owner_id"], owner_user.id.to_string());

    let patch = |key: &str| {
        as_key(TestRequest::patch().uri("/api/v1/models/llama"), key)
            .set_json(json!({"description": "changed"}))
            .to_request()
    };
    let (status, _, body) = answer(test::call_service(&app, patch(&other)).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, _) = answer(test::call_service(&app, patch(&admin)).await).await;
    assert_eq!(status, StatusCode::OK);
    let read = as_key(TestRequest::get().uri("/api/v1/models/llama"), &other).to_request();
    let (status, _, body) = answer(test::call_service(&app, read).await).await;
    assert_eq!(
        (status, body["description"].clone()),
        (StatusCode::OK, json!("changed"))
    );
}

#[actix_web::test]
async fn bad_bodies_are_4xx_problems_naming_what_is_wrong() {
    let world = World::new();
    let app = service(&world, generous()).await;
    let key = world.key("member", Role::Member).await;
    let post = |body: &'static str, content_type: &'static str| {
        as_key(TestRequest::post().uri("/api/v1/models"), &key)
            .insert_header(("content-type", content_type))
            .set_payload(body)
            .to_request()
    };
    let cases = [
        (post("{", "application/json"), 400, None),
        (post("{\"name\":\"a\"}", "text/plain"), 415, None),
        (
            post("{\"name\":\"a\",\"colour\":1}", "application/json"),
            422,
            Some("colour"),
        ),
        (
            post("{\"name\":\"NOT A NAME\"}", "application/json"),
            422,
            Some("name"),
        ),
    ];
    for (req, status, field) in cases {
        let (got, content_type, body) = answer(test::call_service(&app, req).await).await;
        assert_eq!(got.as_u16(), status, "{body}");
        assert_eq!(content_type, "application/problem+json");
        if let Some(field) = field {
            assert_eq!(body["field"], field, "{body}");
        }
    }
    // A missing model is 404, in the problem shape.
    let missing = as_key(TestRequest::get().uri("/api/v1/models/nothing"), &key).to_request();
    let (status, content_type, _) = answer(test::call_service(&app, missing).await).await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::NOT_FOUND, "application/problem+json")
    );
}

#[actix_web::test]
async fn past_its_burst_a_key_is_429_with_retry_after_and_ratelimit_headers() {
    let world = World::new();
    let limits = RateLimitSettings {
        default_rpm: 1,
        burst: 2,
        ..RateLimitSettings::default()
    };
    let app = service(&world, limits).await;
    let key = world.key("busy", Role::Member).await;
    let me = || as_key(TestRequest::get().uri("/api/v1/users/me"), &key).to_request();
    for remaining in ["1", "0"] {
        let res = test::call_service(&app, me()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "ratelimit-limit").as_deref(), Some("1"));
        assert_eq!(
            header(&res, "ratelimit-remaining").as_deref(),
            Some(remaining)
        );
    }
    let res = test::call_service(&app, me()).await;
    assert!(header(&res, "retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)));
    let (status, _, body) = answer(res).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::TOO_MANY_REQUESTS, json!(429))
    );
    // The limiter down: fail_open (the default) admits.
    world.limiter.set_unavailable(true);
    assert_eq!(
        test::call_service(&app, me()).await.status(),
        StatusCode::OK
    );
}

#[actix_web::test]
async fn a_members_keys_share_its_limit_and_the_headers_speak_of_the_tighter_one() {
    let world = World::new();
    let limits = RateLimitSettings {
        default_rpm: 1_000,
        user_rpm: Some(1),
        burst: 2,
        ..RateLimitSettings::default()
    };
    let app = service(&world, limits).await;
    let user = world.ports.user("alice", Role::Member).await;
    let first = world.ports.key_of(&user).await;
    let second = world.ports.key_of(&user).await;
    let me = |key: &str| as_key(TestRequest::get().uri("/api/v1/users/me"), key).to_request();

    for (key, remaining) in [(&first, "1"), (&second, "0")] {
        let res = test::call_service(&app, me(key.expose())).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            header(&res, "ratelimit-limit").as_deref(),
            Some("1"),
            "hers"
        );
        assert_eq!(
            header(&res, "ratelimit-remaining").as_deref(),
            Some(remaining)
        );
    }
    let res = test::call_service(&app, me(first.expose())).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "ratelimit-limit").as_deref(), Some("1"));
}

#[actix_web::test]
async fn an_address_failing_too_often_is_429_and_its_requests_are_not_looked_up() {
    let world = World::new();
    let mut state = world.state(generous());
    state.accounts = state
        .accounts
        .with_failed_auth_limit(maas_domain::accounts::FailedAuthLimit::per_minute(2));
    let app = test::init_service(maas_api::app(state, ServerSettings::default())).await;
    let key = world.key("alice", Role::Member).await;
    let from = |addr: &str, key: &str| {
        as_key(TestRequest::get().uri("/api/v1/users/me"), key)
            .peer_addr(addr.parse().expect("an address"))
            .to_request()
    };
    let made_up = format!("maas_{}", "q".repeat(40));
    for _ in 0..2 {
        let res = test::call_service(&app, from("192.0.2.9:4000", &made_up)).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let lookups = world.ports.identity_store.controls().calls("find_key");

    let res = test::call_service(&app, from("192.0.2.9:4001", &key)).await;
    assert!(header(&res, "retry-after").is_some());
    let (status, content_type, body) = answer(res).await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "application/problem+json")
    );
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("too-many-failed-authentications"))
    );
    let res = test::call_service(
        &app,
        TestRequest::post()
            .uri("/v1/chat/completions")
            .insert_header(("authorization", format!("Bearer {key}")))
            .peer_addr("192.0.2.9:4002".parse().expect("an address"))
            .set_json(json!({"model": "m", "messages": []}))
            .to_request(),
    )
    .await;
    let (status, _, body) = answer(res).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "too_many_failed_authentications");
    assert_eq!(
        world.ports.identity_store.controls().calls("find_key"),
        lookups,
        "nothing looked up"
    );
    let res = test::call_service(&app, from("198.51.100.1:4000", &key)).await;
    assert_eq!(res.status(), StatusCode::OK, "another address");
}

#[actix_web::test]
async fn readiness_is_503_without_the_required_dependency_and_degraded_without_the_other() {
    let world = World::new();
    let app = service(&world, generous()).await;
    let ready = || TestRequest::get().uri("/health/ready").to_request();
    let (status, _, body) = answer(test::call_service(&app, ready()).await).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::OK, json!("ready"))
    );

    world
        .redis
        .fail_with(Some(HealthError::Unreachable("refused".into())));
    let (status, _, body) = answer(test::call_service(&app, ready()).await).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::OK, json!("degraded"))
    );
    assert_eq!(body["checks"]["redis"]["status"], "down");

    world
        .postgres
        .fail_with(Some(HealthError::Failed("no".into())));
    let (status, _, body) = answer(test::call_service(&app, ready()).await).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("unavailable"))
    );
    // Liveness checks nothing.
    let live = test::call_service(&app, TestRequest::get().uri("/health").to_request()).await;
    assert_eq!(live.status(), StatusCode::OK);
}

#[actix_web::test]
async fn inference_on_an_unknown_or_unservable_model_is_404_in_openai_s_shape() {
    let world = World::new();
    let app = service(&world, generous()).await;
    let key = world.key("caller", Role::Member).await;
    let create = as_key(TestRequest::post().uri("/api/v1/models"), &key)
        .set_json(json!({"name": "no-endpoint"}))
        .to_request();
    assert_eq!(
        test::call_service(&app, create).await.status(),
        StatusCode::CREATED
    );
    for model in ["nothing", "no-endpoint"] {
        let call = as_key(TestRequest::post().uri("/v1/chat/completions"), &key)
            .set_json(json!({"model": model, "messages": []}))
            .to_request();
        let (status, _, body) = answer(test::call_service(&app, call).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{model}: {body}");
        assert_eq!(body["error"]["code"], "model_not_found", "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    // No `model` at all names the field.
    let call = as_key(TestRequest::post().uri("/v1/chat/completions"), &key)
        .set_json(json!({"messages": []}))
        .to_request();
    let (status, _, body) = answer(test::call_service(&app, call).await).await;
    assert_eq!(
        (status, body["error"]["param"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("model"))
    );
}

#[actix_web::test]
async fn members_see_usage_of_their_own_keys_only() {
    let world = World::new();
    let app = service(&world, generous()).await;
    let key = world.key("member", Role::Member).await;
    let other = world.ports.user("other", Role::Member).await;
    let report = as_key(TestRequest::get().uri("/api/v1/usage"), &key).to_request();
    let (status, _, body) = answer(test::call_service(&app, report).await).await;
    assert_eq!((status, body["items"].clone()), (StatusCode::OK, json!([])));
    let theirs = as_key(
        TestRequest::get().uri(&format!("/api/v1/usage?user_id={}", other.id)),
        &key,
    )
    .to_request();
    assert_eq!(
        test::call_service(&app, theirs).await.status(),
        StatusCode::FORBIDDEN
    );
}

#[actix_web::test]
async fn an_alias_split_is_set_whole_and_read_back_and_bad_splits_name_the_field() {
    let world = World::new();
    let app = service(&world, generous()).await;
    let key = world.key("owner", Role::Member).await;
    let send = |method: TestRequest, uri: &str, body: Value| {
        as_key(method.uri(uri), &key).set_json(body).to_request()
    };
    let created = send(TestRequest::post(), "/api/v1/models", json!({"name": "m"}));
    assert_eq!(test::call_service(&app, created).await.status(), 201);
    for _ in 0..2 {
        let body = json!({"source_uri": "s3://b/m"});
        let req = send(TestRequest::post(), "/api/v1/models/m/versions", body);
        assert_eq!(test::call_service(&app, req).await.status(), 201);
    }
    let put = |body: Value| {
        send(
            TestRequest::put(),
            "/api/v1/models/m/aliases/production",
            body,
        )
    };

    let split = json!({"versions": [{"version": 2, "weight": 10}, {"version": 1, "weight": 90}]});
    let (status, _, body) = answer(test::call_service(&app, put(split)).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["versions"],
        json!([{"version": 1, "weight": 90}, {"version": 2, "weight": 10}])
    );
    assert!(body.get("version").is_none(), "no single version: {body}");
    let get = as_key(
        TestRequest::get().uri("/api/v1/models/m/aliases/production"),
        &key,
    );
    let (_, _, read) = answer(test::call_service(&app, get.to_request()).await).await;
    assert_eq!(
        (read["version"].clone(), read["alias"].clone()),
        (json!(1), json!("production"))
    );
    assert_eq!(read["versions"][1]["weight"], 10);
    assert_eq!(read["versions"][1]["version"], 2);
    assert_eq!(read["versions"][1]["source_uri"], "s3://b/m");

    let (status, _, body) =
        answer(test::call_service(&app, put(json!({"version": 2}))).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["version"].clone(), body["versions"].clone()),
        (json!(2), json!([{"version": 2, "weight": 1}]))
    );

    let seventeen: Vec<Value> = (1..=17).map(|v| json!({"version": v})).collect();
    for (bad, field) in [
        (
            json!({"versions": [{"version": 1}, {"version": 2, "weight": 0}]}),
            "versions[1].weight",
        ),
        (
            json!({"versions": [{"version": 1, "weight": 10_001}]}),
            "versions[0].weight",
        ),
        (
            json!({"versions": [{"version": 1, "weight": 1.5}]}),
            "versions[0].weight",
        ),
        (
            json!({"versions": [{"version": 1}, {"version": 0}]}),
            "versions[1].version",
        ),
        (
            json!({"versions": [{"version": 2}, {"version": 1}, {"version": 2}]}),
            "versions[2].version",
        ),
        (json!({"versions": []}), "versions"),
        (json!({"versions": seventeen}), "versions"),
        (
            json!({"version": 1, "versions": [{"version": 1}]}),
            "versions",
        ),
        (json!({}), "version"),
        (json!({"versions": [{"weight": 1}]}), "versions[0].version"),
    ] {
        let (status, content_type, body) = answer(test::call_service(&app, put(bad)).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {body}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(body["field"], field, "{body}");
    }
    let missing = json!({"versions": [{"version": 1}, {"version": 7}]});
    let (status, _, body) = answer(test::call_service(&app, put(missing)).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("version 7"),
        "{body}"
    );
}

/// A member holding a key with `tpm` tokens a minute (created by an admin); the key.
async fn metered_key(world: &World, name: &str, tpm: i64) -> String {
    let root = world
        .ports
        .actor(&format!("root-of-{name}"), Role::Admin)
        .await;
    let user = world.ports.user(name, Role::Member).await;
    let request = maas_domain::accounts::KeyRequest {
        user_id: Some(user.id),
        tokens: maas_domain::identity::TokenQuotas {
            tpm: Some(maas_domain::identity::TokensPerMinute::new(tpm).expect("valid")),
            monthly_tokens: None,
        },
        ..maas_domain::accounts::KeyRequest::named(
            maas_domain::identity::KeyName::parse("metered".into()).expect("valid"),
        )
    };
    let created = world
        .ports
        .accounts
        .create_key(&root, request, chrono::Utc::now())
        .await
        .expect("created");
    created.plaintext.expose().to_owned()
}

#[actix_web::test]
async fn a_key_past_its_tokens_per_minute_is_429_of_type_tokens_with_openai_s_headers() {
    let world = World::new();
    let app = service(&world, generous()).await;
    let key = metered_key(&world, "alice", 100).await;
    let call = || {
        as_key(TestRequest::post().uri("/v1/chat/completions"), &key)
            .set_json(json!({"model": "nothing", "max_tokens": 92}))
            .to_request()
    };

    // Admitted (the window was empty), reserving 92 + a quarter of the body's 35 bytes, all of
    // the 100: the model does not exist, which the call learns after its reservation.
    let first = test::call_service(&app, call()).await;
    assert_eq!(first.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        header(&first, "x-ratelimit-limit-tokens").as_deref(),
        Some("100")
    );
    assert_eq!(
        header(&first, "x-ratelimit-remaining-tokens").as_deref(),
        Some("0")
    );
    assert_eq!(
        header(&first, "x-ratelimit-reset-tokens").as_deref(),
        Some("1m1s")
    );
    assert_eq!(
        header(&first, "x-ratelimit-limit-requests").as_deref(),
        Some("1000000")
    );
    assert!(header(&first, "x-ratelimit-remaining-requests").is_some());
    assert_eq!(
        header(&first, "ratelimit-limit").as_deref(),
        Some("1000000")
    );

    let refused = test::call_service(&app, call()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("61"));
    assert_eq!(
        header(&refused, "x-ratelimit-limit-tokens").as_deref(),
        Some("100")
    );
    assert_eq!(
        header(&refused, "x-ratelimit-remaining-tokens").as_deref(),
        Some("0")
    );
    assert_eq!(
        header(&refused, "x-ratelimit-reset-tokens").as_deref(),
        Some("1m1s")
    );
    assert!(
        header(&refused, "ratelimit-remaining").is_some(),
        "RateLimit-* too"
    );
    let (_, content_type, body) = answer(refused).await;
    assert_eq!(content_type, "application/json");
    assert_eq!(body["error"]["type"], "tokens", "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("tokens per min (TPM): Limit 100"),
        "{message}"
    );

    // A minute and a second on the limiter's clock, the window is empty again.
    world.limiter.advance(std::time::Duration::from_secs(61));
    assert_eq!(
        test::call_service(&app, call()).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[actix_web::test]
async fn a_call_larger_than_the_tpm_is_429_request_too_large_at_once_without_retry_after() {
    let world = World::new();
    let app = service(&world, generous()).await;
    let key = metered_key(&world, "alice", 100).await;
    let call = |max_tokens: u64| {
        as_key(TestRequest::post().uri("/v1/chat/completions"), &key)
            .set_json(json!({"model": "nothing", "max_tokens": max_tokens}))
            .to_request()
    };

    let refused = test::call_service(&app, call(93)).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&refused, "retry-after"),
        None,
        "no wait would admit it"
    );
    let (_, _, body) = answer(refused).await;
    assert_eq!(body["error"]["type"], "tokens", "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "Request too large for this API key on tokens per min (TPM): Limit 100, Requested 101."
        ),
        "{message}"
    );

    // It reserved nothing. A call that names no max_tokens would reserve the default (1,024)
    // and more than the 100: that part is the gateway's, not the client's, so it is admitted,
    // reserving the whole 100 (refused as too large, it could never be made at all).
    let unbounded = as_key(TestRequest::post().uri("/v1/chat/completions"), &key)
        .set_json(json!({"model": "nothing"}))
        .to_request();
    let admitted = test::call_service(&app, unbounded).await;
    assert_eq!(
        admitted.status(),
        StatusCode::NOT_FOUND,
        "admitted, then no model"
    );
    assert_eq!(
        header(&admitted, "x-ratelimit-remaining-tokens").as_deref(),
        Some("0")
    );
}

#[actix_web::test]
async fn a_metered_call_whose_max_tokens_is_no_integer_is_422_and_still_spends_a_request() {
    let world = World::new();
    let limits = RateLimitSettings {
        default_rpm: 1,
        burst: 2,
        ..RateLimitSettings::default()
    };
    let app = service(&world, limits).await;
    let key = metered_key(&world, "alice", 1_000).await;
    let bad = || {
        as_key(TestRequest::post().uri("/v1/chat/completions"), &key)
            .set_json(json!({"model": "m", "max_tokens": 1.5}))
            .to_request()
    };

    let res = test::call_service(&app, bad()).await;
    assert_eq!(header(&res, "ratelimit-remaining").as_deref(), Some("1"));
    let (status, _, body) = answer(res).await;
    assert_eq!(
        (status, body["error"]["param"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("max_tokens"))
    );
    // So does a POST under /v1 that is no route.
    let unknown = as_key(TestRequest::post().uri("/v1/nothing"), &key)
        .set_json(json!({}))
        .to_request();
    let res = test::call_service(&app, unknown).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&res, "ratelimit-remaining").as_deref(), Some("0"));
    // The burst is spent: the next bad call is refused for its rate, in OpenAI's shape.
    let (status, _, body) = answer(test::call_service(&app, bad()).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["type"], "requests", "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
}

#[actix_web::test]
async fn a_key_without_token_limits_is_decided_once_before_its_body_and_has_no_token_headers() {
    let world = World::new();
    let app = service(&world, generous()).await;
    let key = world.key("plain", Role::Member).await;
    let call = as_key(TestRequest::post().uri("/v1/chat/completions"), &key)
        .set_json(json!({"model": "nothing", "max_tokens": "not even read"}))
        .to_request();

    let res = test::call_service(&app, call).await;

    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "max_tokens is not read"
    );
    assert!(header(&res, "ratelimit-limit").is_some());
    assert_eq!(header(&res, "x-ratelimit-limit-tokens"), None);
    let principal = world
        .ports
        .accounts
        .authenticate(Some(&key), chrono::Utc::now())
        .await
        .expect("authenticated");
    assert_eq!(world.limiter.checks_of(principal.key_id), 1, "one decision");
    assert_eq!(
        world.limiter.key_window(principal.key_id),
        0,
        "nothing reserved"
    );
}

#[actix_web::test]
async fn admins_set_a_keys_token_quotas_and_the_usage_report_shows_them() {
    let world = World::new();
    let app = service(&world, generous()).await;
    let admin = world.key("root", Role::Admin).await;
    let member = world.key("bob", Role::Member).await;
    let list = as_key(TestRequest::get().uri("/api/v1/keys"), &member).to_request();
    let (_, _, keys) = answer(test::call_service(&app, list).await).await;
    let id = keys["items"][0]["id"].as_str().expect("an id").to_owned();
    let patch = |key: &str, body: Value| {
        as_key(TestRequest::patch().uri(&format!("/api/v1/keys/{id}")), key)
            .set_json(body)
            .to_request()
    };

    let own = test::call_service(&app, patch(&member, json!({"tpm": 10}))).await;
    assert_eq!(own.status(), StatusCode::FORBIDDEN);
    let (status, _, body) =
        answer(test::call_service(&app, patch(&admin, json!({"tpm": 0}))).await).await;
    assert_eq!(
        (status, body["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("tpm"))
    );
    let (status, _, body) = answer(
        test::call_service(
            &app,
            patch(&admin, json!({"tpm": 500, "monthly_tokens": 9000})),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["tpm"].clone(), body["monthly_tokens"].clone()),
        (json!(500), json!(9000))
    );
    assert_eq!(body["models"], Value::Null, "left as it was");

    let report = as_key(TestRequest::get().uri("/api/v1/usage"), &member).to_request();
    let (status, _, body) = answer(test::call_service(&app, report).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let quota = &body["quota"];
    assert_eq!(quota["keys"][0]["key_id"], json!(id), "{body}");
    assert_eq!(quota["keys"][0]["tokens_used"], 0);
    assert_eq!(quota["keys"][0]["monthly_tokens"], 9000);
    assert_eq!(quota["keys"][0]["monthly_tokens_left"], 9000);
    assert_eq!(quota["keys"][0]["tpm"], 500);
    assert_eq!(quota["user"]["monthly_tokens"], Value::Null);
}
