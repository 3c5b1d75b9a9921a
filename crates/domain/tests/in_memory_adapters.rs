//! The in-memory adapters answer as the Postgres and Redis adapters do, for the rules the
//! use-cases rely on (the adapters' own suites in maas-persistence and maas-cache say the same
//! of the real ones).

use std::time::Duration;

use maas_domain::RepoError;
use maas_domain::identity::{Role, UserPatch};
use maas_domain::inference::{UsageGrouping, UsageQuery};
use maas_domain::model::ModelFilter;
use maas_domain::ports::{
    Allowance, Cache, CacheLookup, Field, FillToken, IdentityRepository, RateDecision, RateLimit,
    RateLimiter, RegistryRepository, Scope, UsageRepository,
};
use maas_domain::test_util::{
    InMemoryCache, InMemoryIdentity, InMemoryRateLimiter, InMemoryRegistry, InMemoryUsage,
    alias_name, at, described_model, model_name, new_key, new_model, new_user, new_version,
    owned_model, servable_version, targets, usage_event, username, version,
};
use maas_domain::values::PageLimit;
use uuid::Uuid;

fn limit(n: i64) -> PageLimit {
    PageLimit::new(n).expect("valid limit")
}

fn llama() -> Scope {
    Scope::Model(model_name("llama"))
}

#[tokio::test]
async fn versions_are_gapless_per_model_and_a_deleted_number_is_never_handed_out_again() {
    let repo = InMemoryRegistry::new();
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    for _ in 0..3 {
        repo.create_version(&name, new_version("s3://b/m"))
            .await
            .expect("created");
    }
    repo.delete_version(&name, version(3))
        .await
        .expect("deleted");
    assert_eq!(
        repo.get_model(&name).await.expect("found").latest_version,
        Some(version(2)),
        "latest falls to the highest left"
    );
    let next = repo
        .create_version(&name, new_version("s3://b/m"))
        .await
        .expect("created");
    assert_eq!(next.version, version(4));

    repo.delete_model(&name).await.expect("deleted");
    repo.create_model(new_model("llama"))
        .await
        .expect("created again");
    let first = repo
        .create_version(&name, new_version("s3://b/m"))
        .await
        .expect("created");
    assert_eq!(first.version, version(1), "a new model starts again at 1");
}

#[tokio::test]
async fn a_deleted_version_takes_its_aliases_with_it_and_errors_name_what_is_missing() {
    let repo = InMemoryRegistry::new();
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    for _ in 0..2 {
        repo.create_version(&name, new_version("s3://b/m"))
            .await
            .expect("created");
    }
    repo.set_alias(&name, &alias_name("old"), &version(1).into())
        .await
        .expect("set");
    repo.set_alias(&name, &alias_name("new"), &version(2).into())
        .await
        .expect("set");
    repo.delete_version(&name, version(1))
        .await
        .expect("deleted");

    assert_eq!(
        repo.resolve_alias(&name, &alias_name("old")).await,
        Err(RepoError::NotFound(
            "alias 'old' of model 'llama' not found".into()
        ))
    );
    assert_eq!(
        repo.resolve_alias(&name, &alias_name("new"))
            .await
            .map(|a| a.split()),
        Ok(targets(&[(2, 1)]))
    );
    assert_eq!(
        repo.get_version(&name, version(1)).await,
        Err(RepoError::NotFound(
            "version 1 of model 'llama' not found".into()
        ))
    );
    assert_eq!(
        repo.set_alias(&model_name("ghost"), &alias_name("a"), &version(1).into())
            .await,
        Err(RepoError::NotFound("model 'ghost' not found".into()))
    );
    assert_eq!(
        repo.latest_servable_version(&name).await,
        Err(RepoError::NotFound(
            "model 'llama' has no version with an endpoint".into()
        ))
    );
}

#[tokio::test]
async fn models_are_listed_by_name_after_the_cursor_filtered_by_whole_tag_and_literal_text() {
    let repo = InMemoryRegistry::new();
    for (name, text, tags) in [
        ("b-chat", "Small but LLAMA-like, 50% off", vec!["chat"]),
        ("a-chat", "llm", vec!["chat", "gpu"]),
        ("c-vision", "llm", vec!["vision"]),
        ("d-chat", "other", vec!["chat"]),
    ] {
        repo.create_model(described_model(name, text, &tags))
            .await
            .expect("created");
    }
    let names = |models: Vec<maas_domain::model::Model>| -> Vec<String> {
        models.into_iter().map(|m| m.name.into_inner()).collect()
    };
    let none = ModelFilter::default();

    let first = repo
        .list_models(&none, None, limit(2))
        .await
        .expect("listed");
    assert_eq!(
        names(first),
        ["a-chat", "b-chat", "c-vision"],
        "limit + 1 rows"
    );
    let after = model_name("b-chat");
    let rest = repo
        .list_models(&none, Some(&after), limit(2))
        .await
        .expect("listed");
    assert_eq!(names(rest), ["c-vision", "d-chat"]);

    let filter = |tag: Option<&str>, q: Option<&str>| ModelFilter {
        tag: tag.map(str::to_owned),
        q: q.map(str::to_owned),
        ..ModelFilter::default()
    };
    let chat_llm = repo
        .list_models(&filter(Some("chat"), Some("LlAmA")), None, limit(10))
        .await
        .expect("listed");
    assert_eq!(names(chat_llm), ["b-chat"]);
    let partial_tag = repo
        .list_models(&filter(Some("cha"), None), None, limit(10))
        .await
        .expect("listed");
    assert!(partial_tag.is_empty(), "tags match whole");
    let percent = repo
        .list_models(&filter(None, Some("%")), None, limit(10))
        .await
        .expect("listed");
    assert_eq!(names(percent), ["b-chat"], "wildcards are taken literally");
}

#[tokio::test]
async fn an_owner_must_exist_when_the_registry_checks_owners() {
    let identity = InMemoryIdentity::new();
    let alice = identity
        .create_user(new_user("alice", Role::Member))
        .await
        .expect("created");
    let repo = InMemoryRegistry::with_users(&identity);
    let ghost = Uuid::new_v4();

    assert_eq!(
        repo.create_model(owned_model("orphan", ghost)).await,
        Err(RepoError::NotFound(format!("user {ghost} not found")))
    );
    repo.create_model(owned_model("alices", alice.id))
        .await
        .expect("created");
    repo.create_version(
        &model_name("alices"),
        servable_version("s3://b/1", "http://vllm:8000/v1"),
    )
    .await
    .expect("created");
    let servable = repo
        .list_servable_models(&ModelFilter::default())
        .await
        .expect("listed");
    assert_eq!(servable.len(), 1);
    assert_eq!(servable[0].owner.as_deref(), Some("alice"));
}

#[tokio::test]
async fn a_fill_with_a_token_from_before_an_invalidation_is_not_stored() {
    let cache = InMemoryCache::new();
    // The first miss of a scope never invalidated, then a miss after an invalidation.
    for _round in 0..2 {
        let CacheLookup::Miss(stale) = cache.lookup(&llama(), &Field::Model).await else {
            panic!("a miss");
        };
        cache.invalidate(&llama()).await;
        cache
            .fill(&llama(), &Field::Model, stale, b"old".to_vec())
            .await;
        assert!(matches!(
            cache.lookup(&llama(), &Field::Model).await,
            CacheLookup::Miss(_)
        ));
    }
    let CacheLookup::Miss(fresh) = cache.lookup(&llama(), &Field::Model).await else {
        panic!("a miss");
    };
    assert!(fresh.0.is_some(), "an invalidated scope has a generation");
    cache
        .fill(&llama(), &Field::Model, fresh, b"new".to_vec())
        .await;
    assert_eq!(cache.peek(&llama(), &Field::Model), Some(b"new".to_vec()));
    let stats = cache.stats();
    assert_eq!(
        (stats.fills_stored, stats.fills_refused, stats.invalidations),
        (1, 2, 2)
    );
}

#[tokio::test]
async fn a_bypassing_cache_answers_bypass_stores_nothing_and_still_invalidates() {
    let cache = InMemoryCache::new();
    let CacheLookup::Miss(token) = cache.lookup(&llama(), &Field::Model).await else {
        panic!("a miss");
    };
    cache
        .fill(&llama(), &Field::Model, token, b"v".to_vec())
        .await;
    cache.set_bypass(true);

    assert_eq!(
        cache.lookup(&llama(), &Field::Model).await,
        CacheLookup::Bypass
    );
    cache
        .fill(
            &llama(),
            &Field::DefaultTarget,
            FillToken(None),
            b"d".to_vec(),
        )
        .await;
    cache.invalidate(&llama()).await;
    cache.set_bypass(false);

    assert!(!cache.holds_scope(&llama()));
    assert_eq!(cache.invalidations_of(&llama()), 1);
    assert_eq!(cache.stats().bypasses, 1);
}

#[tokio::test]
async fn the_last_enabled_admin_can_be_neither_demoted_nor_disabled() {
    let repo = InMemoryIdentity::new();
    repo.create_user(new_user("root", Role::Admin))
        .await
        .expect("created");
    for patch in [
        UserPatch {
            role: Some(Role::Member),
            disabled: None,
            ..UserPatch::default()
        },
        UserPatch {
            role: None,
            disabled: Some(true),
            ..UserPatch::default()
        },
    ] {
        let err = repo
            .update_user(&username("root"), patch)
            .await
            .expect_err("last admin");
        assert!(matches!(err, RepoError::Conflict(ref m) if m.contains("last enabled admin")));
    }
    repo.create_user(new_user("deputy", Role::Admin))
        .await
        .expect("created");
    let demoted = repo
        .update_user(
            &username("root"),
            UserPatch {
                role: Some(Role::Member),
                disabled: None,
                ..UserPatch::default()
            },
        )
        .await
        .expect("another admin is left");
    assert_eq!(demoted.role, Role::Member);
}

#[tokio::test]
async fn key_uses_never_move_back_and_a_second_revocation_keeps_the_first_time() {
    let repo = InMemoryIdentity::new();
    let alice = repo
        .create_user(new_user("alice", Role::Member))
        .await
        .expect("created");
    let key = repo
        .create_key(new_key(alice.id, "laptop").1, None)
        .await
        .expect("created");

    repo.touch_keys(&[(key.id, at(2_000)), (Uuid::new_v4(), at(9_000))])
        .await
        .expect("touched");
    repo.touch_keys(&[(key.id, at(1_000))])
        .await
        .expect("touched");
    assert_eq!(
        repo.get_key(key.id).await.expect("found").last_used_at,
        Some(at(2_000))
    );

    let (first, _) = repo.revoke_key(key.id).await.expect("revoked");
    let (again, _) = repo.revoke_key(key.id).await.expect("revoked again");
    assert!(first.revoked_at.is_some());
    assert_eq!(again.revoked_at, first.revoked_at);
}

#[tokio::test]
async fn usage_is_summed_per_model_key_or_utc_day_in_byte_order() {
    let repo = InMemoryUsage::new();
    let (alice, key) = (Uuid::new_v4(), Uuid::new_v4());
    let mut failed = usage_event(key, alice, "llama2", at(86_399));
    failed.status = 400;
    failed.latency_ms = 30;
    let mut counted = usage_event(key, alice, "llama2", at(36_000));
    counted.prompt_tokens = Some(5);
    counted.completion_tokens = Some(7);
    let other = usage_event(Uuid::new_v4(), Uuid::new_v4(), "llama-3", at(86_400));
    repo.insert_usage(&[failed, counted, other])
        .await
        .expect("stored");
    let report = |group_by| UsageQuery {
        from: None,
        to: None,
        model: None,
        within: None,
        user_id: None,
        group_by,
    };

    let per_model = repo
        .aggregate_usage(&report(UsageGrouping::Model))
        .await
        .expect("report");
    let summary: Vec<_> = per_model
        .iter()
        .map(|r| {
            (
                r.group.as_str(),
                r.requests,
                r.errors,
                r.prompt_tokens,
                r.avg_latency_ms,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("llama-3", 1, 0, 0, 10.0), ("llama2", 2, 1, 5, 20.0)]
    );
    let per_day = repo
        .aggregate_usage(&report(UsageGrouping::Day))
        .await
        .expect("report");
    let days: Vec<_> = per_day
        .iter()
        .map(|r| (r.group.as_str(), r.requests))
        .collect();
    assert_eq!(days, [("1970-01-01", 2), ("1970-01-02", 1)]);
    let alices = UsageQuery {
        user_id: Some(alice),
        to: Some(at(86_399)),
        ..report(UsageGrouping::Key)
    };
    let per_key = repo.aggregate_usage(&alices).await.expect("report");
    assert_eq!(per_key.len(), 1, "`to` is exclusive");
    assert_eq!(
        (per_key[0].group.clone(), per_key[0].requests),
        (key.to_string(), 1)
    );
}

#[tokio::test]
async fn the_limiter_admits_a_burst_then_one_request_per_interval() {
    let limiter = InMemoryRateLimiter::new();
    let key = Uuid::new_v4();
    let limit = RateLimit { rpm: 60, burst: 3 };
    for left in [2, 1, 0] {
        assert_eq!(
            limiter.check(key, limit).await,
            RateDecision::Allowed {
                remaining: left,
                reset_seconds: 3 - u64::from(left),
                allowance: Allowance::Key,
            }
        );
    }
    assert_eq!(
        limiter.check(key, limit).await,
        RateDecision::Limited {
            retry_after_seconds: 1,
            reset_seconds: 3,
            allowance: Allowance::Key,
        },
        "a refused request consumes nothing"
    );
    limiter.advance(Duration::from_secs(1));
    assert!(matches!(
        limiter.check(key, limit).await,
        RateDecision::Allowed { remaining: 0, .. }
    ));
    limiter.set_unavailable(true);
    assert_eq!(limiter.check(key, limit).await, RateDecision::Unavailable);
    assert_eq!(limiter.checks_of(key), 6);
}

#[tokio::test]
async fn a_held_call_does_its_work_then_waits_until_released() {
    let repo = std::sync::Arc::new(InMemoryRegistry::new());
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    let hold = repo.controls().hold_next("get_model");
    let reader = tokio::spawn({
        let repo = repo.clone();
        async move { repo.get_model(&model_name("llama")).await }
    });
    hold.reached().await;
    assert!(hold.is_waiting(), "the read is held");
    repo.delete_model(&model_name("llama"))
        .await
        .expect("deleted meanwhile");

    hold.release();
    let read = reader.await.expect("the task ran");
    assert!(
        read.is_ok(),
        "the held read had found the model before it was deleted"
    );
    repo.controls().set_unavailable(true);
    assert!(matches!(
        repo.get_model(&model_name("llama")).await,
        Err(RepoError::Unavailable(_))
    ));
    assert_eq!(repo.controls().calls("get_model"), 2);
}
