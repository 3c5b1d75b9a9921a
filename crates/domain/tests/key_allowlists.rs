//! A key's models allowlist: the key acts only on the models on it, whoever holds it (admins
//! included), before anything is looked up; lists show only those models; and a key with an
//! allowlist creates and changes keys only within it.

use maas_domain::DomainError;
use maas_domain::accounts::KeyRequest;
use maas_domain::identity::{Principal, Role};
use maas_domain::inference::Target;
use maas_domain::model::ModelFilter;
use maas_domain::test_util::{
    InMemory, alias_name, allowlist, at, key_name, model_name, new_model, servable_version,
    username, version,
};
use maas_domain::values::PageLimit;

fn now() -> chrono::DateTime<chrono::Utc> {
    at(2_000_000_000)
}

/// Public models `allowed` and `other`, both servable; member alice acting through a key that
/// may be used with `allowed` only, and admin root.
async fn world() -> (InMemory, Principal, Principal) {
    let world = InMemory::new();
    let root = world.actor("root", Role::Admin).await;
    for name in ["allowed", "other"] {
        world
            .registry
            .create_model(&root, new_model(name))
            .await
            .expect("created");
        world
            .registry
            .create_version(
                &root,
                &model_name(name),
                servable_version("s3://b/1", "http://m:8000/v1"),
            )
            .await
            .expect("created");
    }
    let alice = Principal {
        models: Some(allowlist(&["allowed"])),
        ..world.actor("alice", Role::Member).await
    };
    (world, alice, root)
}

fn target(raw: &str) -> Target {
    Target::parse(raw).expect("a target")
}

fn forbidden<T: std::fmt::Debug>(outcome: Result<T, DomainError>) -> bool {
    matches!(outcome, Err(DomainError::Forbidden(_)))
}

#[tokio::test]
async fn a_restricted_key_reaches_only_its_models_and_other_names_cost_no_lookup() {
    let (world, alice, _root) = world().await;
    let registry = &world.registry;
    assert!(
        registry
            .resolve_target(&alice, &target("allowed"))
            .await
            .is_ok()
    );
    let calls = world.registry_store.controls().total_calls();
    let lookups = world.model_cache.stats().lookups();

    let other = model_name("other");
    assert!(forbidden(
        registry.resolve_target(&alice, &target("other")).await
    ));
    assert!(forbidden(
        registry.resolve_target(&alice, &target("other:1")).await
    ));
    assert!(forbidden(registry.get_model(&alice, &other).await));
    assert!(forbidden(
        registry.get_version(&alice, &other, version(1)).await
    ));
    assert!(forbidden(
        registry
            .resolve_alias(&alice, &other, &alias_name("latest"))
            .await
    ));
    assert!(forbidden(
        registry
            .list_versions(&alice, &other, None, PageLimit::default())
            .await
    ));
    // Not even a model that does not exist is looked up: the name alone decides.
    assert!(forbidden(
        registry
            .get_model(&alice, &model_name("nobody-made-it"))
            .await
    ));

    assert_eq!(world.registry_store.controls().total_calls(), calls);
    assert_eq!(world.model_cache.stats().lookups(), lookups);
}

#[tokio::test]
async fn lists_show_only_the_keys_models() {
    let (world, alice, root) = world().await;
    let registry = &world.registry;
    let page = registry
        .list_models(&alice, &ModelFilter::default(), None, PageLimit::default())
        .await
        .expect("listed");
    let servable = registry.list_servable_models(&alice).await.expect("listed");

    let names: Vec<&str> = page.items.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["allowed"]);
    assert_eq!(servable.len(), 1);
    assert_eq!(servable[0].name.as_str(), "allowed");
    // A filter of its own narrows it further, never widens it.
    let filter = ModelFilter {
        names: Some(vec![model_name("other")]),
        ..ModelFilter::default()
    };
    let page = registry
        .list_models(&alice, &filter, None, PageLimit::default())
        .await
        .expect("listed");
    assert!(page.items.is_empty());
    let unrestricted = registry
        .list_models(&root, &ModelFilter::default(), None, PageLimit::default())
        .await
        .expect("listed");
    assert_eq!(unrestricted.items.len(), 2);
}

#[tokio::test]
async fn an_admins_restricted_key_may_not_change_create_or_grant_other_models() {
    let (world, _alice, root) = world().await;
    let narrow = Principal {
        models: Some(allowlist(&["allowed"])),
        ..root
    };
    let registry = &world.registry;
    let other = model_name("other");
    assert!(forbidden(registry.delete_model(&narrow, &other).await));
    assert!(forbidden(
        registry.create_model(&narrow, new_model("brand-new")).await
    ));
    assert!(forbidden(
        registry.grant(&narrow, &other, &username("alice")).await
    ));
    assert!(forbidden(registry.list_grants(&narrow, &other).await));
    assert!(
        registry
            .get_model(&narrow, &model_name("allowed"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_restricted_key_creates_and_changes_keys_only_within_its_allowlist() {
    let world = InMemory::new();
    let alice = world.actor("alice", Role::Member).await;
    let ci = Principal {
        models: Some(allowlist(&["one", "two"])),
        ..alice.clone()
    };
    let accounts = &world.accounts;

    let wider = accounts
        .create_key(
            &ci,
            KeyRequest {
                models: Some(allowlist(&["one", "three"])),
                ..KeyRequest::named(key_name("wider"))
            },
            now(),
        )
        .await;
    let same = accounts
        .create_key(&ci, KeyRequest::named(key_name("same")), now())
        .await
        .expect("created");
    let narrower = accounts
        .create_key(
            &ci,
            KeyRequest {
                models: Some(allowlist(&["two"])),
                ..KeyRequest::named(key_name("narrower"))
            },
            now(),
        )
        .await
        .expect("created");

    assert!(forbidden(wider.map(|c| c.key)));
    assert_eq!(
        same.key.models,
        Some(allowlist(&["one", "two"])),
        "inherited"
    );
    assert_eq!(narrower.key.models, Some(allowlist(&["two"])));
    assert!(forbidden(
        accounts
            .set_key_models(&ci, same.key.id, Some(allowlist(&["three"])))
            .await
    ));
    // Lifting it: the restricted key keeps its own list; an unrestricted key of hers may.
    let kept = accounts
        .set_key_models(&ci, narrower.key.id, None)
        .await
        .expect("changed");
    assert_eq!(kept.models, Some(allowlist(&["one", "two"])));
    let lifted = accounts
        .set_key_models(&alice, narrower.key.id, None)
        .await
        .expect("changed");
    assert_eq!(lifted.models, None);
}

#[tokio::test]
async fn a_changed_allowlist_is_seen_by_the_keys_next_authentication() {
    let world = InMemory::new();
    let alice = world.actor("alice", Role::Member).await;
    let created = world
        .accounts
        .create_key(
            &alice,
            KeyRequest {
                models: Some(allowlist(&["one"])),
                ..KeyRequest::named(key_name("ci"))
            },
            now(),
        )
        .await
        .expect("created");
    let raw = created.plaintext.expose();
    let principal = world
        .accounts
        .authenticate(Some(raw), now())
        .await
        .expect("accepted, and cached");
    assert_eq!(principal.models, Some(allowlist(&["one"])));

    world
        .accounts
        .set_key_models(&alice, created.key.id, Some(allowlist(&["two"])))
        .await
        .expect("changed");

    let principal = world
        .accounts
        .authenticate(Some(raw), now())
        .await
        .expect("accepted");
    assert_eq!(principal.models, Some(allowlist(&["two"])));
    // Another member's key does not exist for her.
    let bob = world.actor("bob", Role::Member).await;
    assert!(matches!(
        world
            .accounts
            .set_key_models(&bob, created.key.id, None)
            .await,
        Err(DomainError::NotFound(_))
    ));
}
