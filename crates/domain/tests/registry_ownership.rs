//! Who may change what in the registry: members change only the models they own (with their
//! versions and aliases), admins change everything. (These models are public, so everyone may
//! read them; who may see a private one is `model_visibility.rs`.)

use maas_domain::DomainError;
use maas_domain::identity::{Principal, Role};
use maas_domain::model::{ModelPatch, VersionPatch};
use maas_domain::ports::RegistryRepository;
use maas_domain::test_util::{
    InMemory, admin_reader, alias_name, description, model_name, new_model, new_version,
    owned_model, version,
};
use uuid::Uuid;

/// A world with members alice (owning model `alices`, version 1, alias `prod`) and bob, and
/// admin root.
struct Cast {
    world: InMemory,
    alice: Principal,
    bob: Principal,
    root: Principal,
}

async fn cast() -> Cast {
    let world = InMemory::new();
    let alice = world.actor("alice", Role::Member).await;
    let bob = world.actor("bob", Role::Member).await;
    let root = world.actor("root", Role::Admin).await;
    let name = model_name("alices");
    world
        .registry
        .create_model(&alice, new_model("alices"))
        .await
        .expect("created");
    world
        .registry
        .create_version(&alice, &name, new_version("s3://b/1"))
        .await
        .expect("created");
    world
        .registry
        .set_alias(&alice, &name, &alias_name("prod"), version(1))
        .await
        .expect("set");
    Cast {
        world,
        alice,
        bob,
        root,
    }
}

/// Every change of model `alices`, made by `actor`; the results in order.
async fn every_change(world: &InMemory, actor: &Principal) -> Vec<Result<(), DomainError>> {
    let (registry, name, prod) = (&world.registry, model_name("alices"), alias_name("prod"));
    let patch = ModelPatch {
        description: Some(Some(description("changed"))),
        ..ModelPatch::default()
    };
    let version_patch = VersionPatch {
        description: Some(Some(description("changed"))),
        ..VersionPatch::default()
    };
    vec![
        registry.update_model(actor, &name, patch).await.map(drop),
        registry
            .create_version(actor, &name, new_version("s3://b/2"))
            .await
            .map(drop),
        registry
            .update_version(actor, &name, version(1), version_patch)
            .await
            .map(drop),
        registry
            .set_alias(actor, &name, &prod, version(2))
            .await
            .map(drop),
        registry.delete_alias(actor, &name, &prod).await,
        registry.delete_version(actor, &name, version(2)).await,
        registry.delete_model(actor, &name).await,
    ]
}

#[tokio::test]
async fn a_member_cannot_change_another_members_model_nor_its_versions_and_aliases() {
    let Cast { world, bob, .. } = cast().await;
    let store = world.registry_store.controls();
    let writes_before = store.total_calls();
    let reads_before = store.calls("get_model");

    for outcome in every_change(&world, &bob).await {
        assert!(
            matches!(outcome, Err(DomainError::Forbidden(_))),
            "{outcome:?}"
        );
    }

    // Nothing but the owner check reached the store.
    assert_eq!(
        store.total_calls() - writes_before,
        store.calls("get_model") - reads_before
    );
    let model = world
        .registry
        .get_model(&admin_reader(), &model_name("alices"))
        .await
        .expect("found");
    assert_eq!(model.description, None);
}

#[tokio::test]
async fn a_member_changes_its_own_model_its_versions_and_aliases() {
    let Cast { world, alice, .. } = cast().await;

    for outcome in every_change(&world, &alice).await {
        assert_eq!(outcome, Ok(()));
    }
}

#[tokio::test]
async fn an_admin_changes_any_model() {
    let Cast { world, root, .. } = cast().await;

    for outcome in every_change(&world, &root).await {
        assert_eq!(outcome, Ok(()));
    }
}

#[tokio::test]
async fn a_model_is_owned_by_whoever_created_it_whatever_the_input_said() {
    let Cast {
        world, alice, bob, ..
    } = cast().await;

    let model = world
        .registry
        .create_model(&bob, owned_model("bobs", alice.user_id))
        .await
        .expect("created");

    assert_eq!(model.owner_id, Some(bob.user_id));
    let patch = ModelPatch {
        description: Some(Some(description("alice's now"))),
        ..ModelPatch::default()
    };
    assert!(matches!(
        world
            .registry
            .update_model(&alice, &model.name, patch)
            .await,
        Err(DomainError::Forbidden(_))
    ));
}

#[tokio::test]
async fn a_model_without_an_owner_is_changed_by_admins_only() {
    let Cast {
        world, alice, root, ..
    } = cast().await;
    // As a model registered before users existed, or whose owner was deleted.
    world
        .registry_store
        .create_model(new_model("legacy"))
        .await
        .expect("created");
    let legacy = model_name("legacy");

    assert!(matches!(
        world.registry.delete_model(&alice, &legacy).await,
        Err(DomainError::Forbidden(_))
    ));
    assert_eq!(world.registry.delete_model(&root, &legacy).await, Ok(()));
}

#[tokio::test]
async fn changing_a_missing_model_is_not_found_for_anyone() {
    let Cast { world, bob, .. } = cast().await;

    let outcome = world
        .registry
        .create_version(&bob, &model_name("ghost"), new_version("s3://b/1"))
        .await;

    assert_eq!(
        outcome.map(drop),
        Err(DomainError::NotFound("model 'ghost' not found".into()))
    );
}

#[tokio::test]
async fn an_empty_patch_answers_the_current_value_without_writing() {
    let Cast {
        world, alice, bob, ..
    } = cast().await;
    let name = model_name("alices");

    let model = world
        .registry
        .update_model(&alice, &name, ModelPatch::default())
        .await
        .expect("unchanged");
    let unchanged = world
        .registry
        .update_version(&alice, &name, version(1), VersionPatch::default())
        .await
        .expect("unchanged");

    assert_eq!(model.name, name);
    assert_eq!(unchanged.version, version(1));
    let store = world.registry_store.controls();
    assert_eq!(
        store.calls("update_model") + store.calls("update_version"),
        0
    );
    assert!(
        matches!(
            world
                .registry
                .update_model(&bob, &name, ModelPatch::default())
                .await,
            Err(DomainError::Forbidden(_))
        ),
        "even an empty patch is only for the owner"
    );
}

#[tokio::test]
async fn a_models_owner_is_a_user_that_exists() {
    let Cast { world, .. } = cast().await;
    let mut ghost = world.actor("ghost", Role::Member).await;
    ghost.user_id = Uuid::new_v4();

    let outcome = world
        .registry
        .create_model(&ghost, new_model("haunted"))
        .await;

    assert_eq!(
        outcome.map(drop),
        Err(DomainError::NotFound(format!(
            "user {} not found",
            ghost.user_id
        )))
    );
}
