//! Model owners: stored with the model, and cleared when the user is deleted.

use maas_domain::RepoError;
use maas_domain::identity::Role;
use maas_domain::model::ModelFilter;
use maas_domain::ports::{IdentityRepository, RegistryRepository};
use maas_domain::values::PageLimit;
use maas_persistence::PgRegistryRepository;
use maas_persistence::test_util::{model_name, new_model, owned_model};
use uuid::Uuid;

use crate::{repository, stored_key, user};

#[tokio::test]
async fn the_owner_of_a_model_round_trips() {
    let (db, identity) = repository().await;
    let registry = PgRegistryRepository::new(db.pool());
    let alice = user(&identity, "alice", Role::Member).await;

    let owned = registry
        .create_model(owned_model("llama", alice.id))
        .await
        .expect("created");
    assert_eq!(owned.owner_id, Some(alice.id));
    let unowned = registry
        .create_model(new_model("legacy"))
        .await
        .expect("created");
    assert_eq!(unowned.owner_id, None);

    assert_eq!(
        registry
            .get_model(&model_name("llama"))
            .await
            .expect("found"),
        owned
    );
    let listed = registry
        .list_models(
            &ModelFilter::default(),
            None,
            PageLimit::new(10).expect("valid"),
        )
        .await
        .expect("listed");
    assert_eq!(listed, [unowned, owned]);
}

#[tokio::test]
async fn a_model_of_a_missing_owner_is_not_found_naming_the_user() {
    let (db, _identity) = repository().await;
    let registry = PgRegistryRepository::new(db.pool());
    let ghost = Uuid::new_v4();
    let err = registry
        .create_model(owned_model("llama", ghost))
        .await
        .expect_err("no such user");
    assert_eq!(err, RepoError::NotFound(format!("user {ghost} not found")));
    assert_eq!(db.scalar("SELECT count(*) FROM models").await, 0);
}

#[tokio::test]
async fn deleting_a_user_deletes_their_keys_and_leaves_their_models_ownerless() {
    let (db, identity) = repository().await;
    let registry = PgRegistryRepository::new(db.pool());
    let alice = user(&identity, "alice", Role::Member).await;
    let bob = user(&identity, "bob", Role::Member).await;
    let (alices, _) = stored_key(&identity, alice.id, "laptop").await;
    stored_key(&identity, alice.id, "ci").await;
    let (bobs, _) = stored_key(&identity, bob.id, "laptop").await;
    registry
        .create_model(owned_model("alices-model", alice.id))
        .await
        .expect("created");
    registry
        .create_model(owned_model("bobs-model", bob.id))
        .await
        .expect("created");

    // The port has no deletion: operators delete users in SQL, and the schema does the rest.
    db.execute("DELETE FROM users WHERE username = 'alice'")
        .await;

    assert_eq!(
        identity.find_key(&alices.hash()).await.expect("looked up"),
        None
    );
    assert!(
        identity
            .list_keys(alice.id)
            .await
            .expect("listed")
            .is_empty()
    );
    assert!(
        identity
            .find_key(&bobs.hash())
            .await
            .expect("looked up")
            .is_some()
    );
    let orphan = registry
        .get_model(&model_name("alices-model"))
        .await
        .expect("the model stays");
    assert_eq!(orphan.owner_id, None);
    let kept = registry
        .get_model(&model_name("bobs-model"))
        .await
        .expect("found");
    assert_eq!(kept.owner_id, Some(bob.id));
}
