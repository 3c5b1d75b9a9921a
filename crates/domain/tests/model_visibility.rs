//! Who may use a model: its owner and admins always, everyone when it is public, and the users
//! an admin granted it to. A model someone may not use is, to them, a model that does not exist;
//! and only admins create reserved names.

use maas_domain::DomainError;
use maas_domain::identity::{Principal, Role};
use maas_domain::inference::Target;
use maas_domain::model::{ModelFilter, ModelPatch, ReservedNames, Visibility};
use maas_domain::values::PageLimit;

fn limit(n: i64) -> PageLimit {
    PageLimit::new(n).expect("a page size")
}
use maas_domain::test_util::{
    InMemory, alias_name, model_name, new_model, private_model, servable_version, username, version,
};

/// Members alice (owning private model `secret`, servable, alias `prod`), bob and carol, and
/// admin root.
struct Cast {
    world: InMemory,
    alice: Principal,
    bob: Principal,
    carol: Principal,
    root: Principal,
}

async fn cast() -> Cast {
    let world = InMemory::new();
    let alice = world.actor("alice", Role::Member).await;
    let bob = world.actor("bob", Role::Member).await;
    let carol = world.actor("carol", Role::Member).await;
    let root = world.actor("root", Role::Admin).await;
    let name = model_name("secret");
    let registry = &world.registry;
    registry
        .create_model(&alice, private_model("secret", alice.user_id))
        .await
        .expect("created");
    registry
        .create_version(
            &alice,
            &name,
            servable_version("s3://b/1", "http://m:8000/v1"),
        )
        .await
        .expect("created");
    registry
        .set_alias(&alice, &name, &alias_name("prod"), version(1))
        .await
        .expect("set");
    Cast {
        world,
        alice,
        bob,
        carol,
        root,
    }
}

/// Every way to read model `secret`, as `actor`: each read's outcome, `Ok` or its error.
async fn every_read(world: &InMemory, actor: &Principal) -> Vec<Result<(), DomainError>> {
    let (registry, name) = (&world.registry, model_name("secret"));
    let target = |raw: &str| Target::parse(raw).expect("a target");
    vec![
        registry.get_model(actor, &name).await.map(drop),
        registry
            .get_version(actor, &name, version(1))
            .await
            .map(drop),
        registry
            .list_versions(actor, &name, None, limit(10))
            .await
            .map(drop),
        registry
            .resolve_alias(actor, &name, &alias_name("prod"))
            .await
            .map(drop),
        registry
            .resolve_target(actor, &target("secret"))
            .await
            .map(drop),
        registry
            .resolve_target(actor, &target("secret@prod"))
            .await
            .map(drop),
        registry
            .resolve_target(actor, &target("secret:1"))
            .await
            .map(drop),
    ]
}

/// Whether `actor` finds `secret` in the model list and among the servable models.
async fn listed(world: &InMemory, actor: &Principal) -> (bool, bool) {
    let page = world
        .registry
        .list_models(actor, &ModelFilter::default(), None, limit(50))
        .await
        .expect("listed");
    let servable = world
        .registry
        .list_servable_models(actor)
        .await
        .expect("listed");
    (
        page.items.iter().any(|m| m.name.as_str() == "secret"),
        servable.iter().any(|m| m.name.as_str() == "secret"),
    )
}

/// The error a model that does not exist gets.
async fn missing_model_error(world: &InMemory, actor: &Principal) -> DomainError {
    world
        .registry
        .get_model(actor, &model_name("nothing-here"))
        .await
        .expect_err("no such model")
}

fn same_as_missing(err: &DomainError, missing: &DomainError) -> bool {
    match (err, missing) {
        (DomainError::NotFound(a), DomainError::NotFound(b)) => {
            a.replace("secret", "X") == b.replace("nothing-here", "X")
        }
        _ => false,
    }
}

#[tokio::test]
async fn a_private_model_is_used_by_its_owner_and_admins_only() {
    let c = cast().await;
    for actor in [&c.alice, &c.root] {
        assert!(every_read(&c.world, actor).await.iter().all(Result::is_ok));
        assert_eq!(listed(&c.world, actor).await, (true, true));
    }
}

#[tokio::test]
async fn to_anyone_else_a_private_model_does_not_exist() {
    let c = cast().await;
    let missing = missing_model_error(&c.world, &c.bob).await;
    for outcome in every_read(&c.world, &c.bob).await {
        let err = outcome.expect_err("bob may not read it");
        assert!(same_as_missing(&err, &missing), "{err:?} vs {missing:?}");
    }
    assert_eq!(listed(&c.world, &c.bob).await, (false, false));
    // Changing it is not found either, not forbidden: a 403 would say that it exists.
    let patch = ModelPatch {
        visibility: Some(Visibility::Public),
        ..ModelPatch::default()
    };
    let err = c
        .world
        .registry
        .update_model(&c.bob, &model_name("secret"), patch)
        .await
        .expect_err("bob may not change it");
    assert!(same_as_missing(&err, &missing), "{err:?}");
}

#[tokio::test]
async fn a_grant_lets_a_user_use_the_model_from_the_next_call_until_it_is_revoked() {
    let c = cast().await;
    let (registry, name, bob) = (&c.world.registry, model_name("secret"), username("bob"));
    // Bob's refusal is cached (the grantees), and still the grant counts at once.
    assert!(
        every_read(&c.world, &c.bob)
            .await
            .iter()
            .all(Result::is_err)
    );
    let (grant, created) = registry.grant(&c.root, &name, &bob).await.expect("granted");
    assert!(created);
    assert_eq!(grant.username, bob);
    assert!(every_read(&c.world, &c.bob).await.iter().all(Result::is_ok));
    assert_eq!(listed(&c.world, &c.bob).await, (true, true));
    // Only bob: carol still sees nothing.
    assert!(
        every_read(&c.world, &c.carol)
            .await
            .iter()
            .all(Result::is_err)
    );
    // Granting again keeps the first grant.
    let (again, created) = registry.grant(&c.root, &name, &bob).await.expect("granted");
    assert!(!created);
    assert_eq!(again.granted_at, grant.granted_at);
    let grants = registry.list_grants(&c.root, &name).await.expect("listed");
    assert_eq!(grants.len(), 1);

    registry
        .revoke_grant(&c.root, &name, &bob)
        .await
        .expect("revoked");
    assert!(
        every_read(&c.world, &c.bob)
            .await
            .iter()
            .all(Result::is_err)
    );
    assert_eq!(listed(&c.world, &c.bob).await, (false, false));
    assert!(matches!(
        registry.revoke_grant(&c.root, &name, &bob).await,
        Err(DomainError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_grantee_may_use_the_model_but_not_change_it() {
    let c = cast().await;
    let (registry, name) = (&c.world.registry, model_name("secret"));
    registry
        .grant(&c.root, &name, &username("bob"))
        .await
        .expect("granted");
    let err = registry
        .delete_model(&c.bob, &name)
        .await
        .expect_err("not bob's");
    assert!(matches!(err, DomainError::Forbidden(_)), "{err:?}");
}

#[tokio::test]
async fn only_admins_grant() {
    let c = cast().await;
    let (registry, name, carol) = (&c.world.registry, model_name("secret"), username("carol"));
    for actor in [&c.alice, &c.bob] {
        assert!(matches!(
            registry.grant(actor, &name, &carol).await,
            Err(DomainError::Forbidden(_))
        ));
        assert!(matches!(
            registry.list_grants(actor, &name).await,
            Err(DomainError::Forbidden(_))
        ));
        assert!(matches!(
            registry.revoke_grant(actor, &name, &carol).await,
            Err(DomainError::Forbidden(_))
        ));
    }
    assert!(
        every_read(&c.world, &c.carol)
            .await
            .iter()
            .all(Result::is_err)
    );
    // Unknown models and users are not found.
    assert!(matches!(
        registry
            .grant(&c.root, &model_name("nothing"), &carol)
            .await,
        Err(DomainError::NotFound(_))
    ));
    assert!(matches!(
        registry.grant(&c.root, &name, &username("nobody")).await,
        Err(DomainError::NotFound(_))
    ));
}

#[tokio::test]
async fn the_owner_makes_a_model_public_and_then_everyone_may_use_it() {
    let c = cast().await;
    let patch = ModelPatch {
        visibility: Some(Visibility::Public),
        ..ModelPatch::default()
    };
    let model = c
        .world
        .registry
        .update_model(&c.alice, &model_name("secret"), patch)
        .await
        .expect("changed");
    assert_eq!(model.visibility, Visibility::Public);
    for actor in [&c.bob, &c.carol] {
        assert!(every_read(&c.world, actor).await.iter().all(Result::is_ok));
        assert_eq!(listed(&c.world, actor).await, (true, true));
    }
    // Using is not changing: the owner alone (and admins) may still change it.
    let err = c
        .world
        .registry
        .delete_model(&c.bob, &model_name("secret"))
        .await
        .expect_err("not bob's");
    assert!(matches!(err, DomainError::Forbidden(_)));
}

#[tokio::test]
async fn a_new_model_is_private_unless_created_public() {
    let c = cast().await;
    let open = c
        .world
        .registry
        .create_model(&c.alice, new_model("open"))
        .await
        .expect("created");
    assert_eq!(
        open.visibility,
        Visibility::Public,
        "the fixture asks for public"
    );
    assert!(
        c.world
            .registry
            .get_model(&c.bob, &model_name("open"))
            .await
            .is_ok()
    );
    assert_eq!(Visibility::default(), Visibility::Private);
}

#[tokio::test]
async fn reserved_names_are_created_by_admins_only() {
    let world = InMemory::new();
    let reserved = ReservedNames::parse(&["gpt-4o", "claude-*"]).expect("valid");
    let registry = world.registry.clone().with_reserved_names(reserved);
    let member = world.actor("squatter", Role::Member).await;
    let admin = world.actor("root", Role::Admin).await;
    for name in ["gpt-4o", "claude-3", "claude-x"] {
        let err = registry
            .create_model(&member, new_model(name))
            .await
            .expect_err(name);
        assert!(
            matches!(&err, DomainError::Forbidden(m) if m.contains("reserved")),
            "{err:?}"
        );
    }
    registry
        .create_model(&member, new_model("gpt-4o-mini"))
        .await
        .expect("not reserved");
    registry
        .create_model(&admin, new_model("gpt-4o"))
        .await
        .expect("admins may");
}
