//! Visibility and grants in Postgres: who may use which model, as the list queries filter it,
//! and the grants that open a private model to a named user.

use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::MigrationHarness;
use maas_domain::RepoError;
use maas_domain::identity::{Role, User};
use maas_domain::model::{ModelFilter, Visibility};
use maas_domain::ports::{IdentityRepository, RegistryRepository};
use maas_domain::values::PageLimit;
use maas_persistence::test_util::{
    TestDatabase, model_name, new_model, new_user, private_model, servable_version, username,
};
use maas_persistence::{MIGRATIONS, PgIdentityRepository, PgRegistryRepository, run_migrations};

use crate::repository;

async fn user(db: &TestDatabase, name: &str) -> User {
    PgIdentityRepository::new(db.pool())
        .create_user(new_user(name, Role::Member))
        .await
        .expect("user created")
}

/// The names `filter` lists, and those listed as servable.
async fn listed(repo: &PgRegistryRepository, filter: &ModelFilter) -> (Vec<String>, Vec<String>) {
    let limit = PageLimit::new(50).expect("a page size");
    let page = repo.list_models(filter, None, limit).await.expect("listed");
    let servable = repo.list_servable_models(filter).await.expect("listed");
    (
        page.into_iter().map(|m| m.name.into_inner()).collect(),
        servable.into_iter().map(|m| m.name.into_inner()).collect(),
    )
}

/// Models `public`, alice's private `alices`, and an unowned private `orphan`, each servable.
async fn models(db: &TestDatabase, repo: &PgRegistryRepository) -> (User, User) {
    let alice = user(db, "alice").await;
    let bob = user(db, "bob").await;
    let mut orphan = private_model("orphan", alice.id);
    orphan.owner_id = None;
    for new in [
        new_model("public"),
        private_model("alices", alice.id),
        orphan,
    ] {
        let name = new.name.clone();
        repo.create_model(new).await.expect("created");
        repo.create_version(&name, servable_version("s3://b/1", "http://m:8000/v1"))
            .await
            .expect("created");
    }
    (alice, bob)
}

#[tokio::test]
async fn a_user_lists_public_models_their_own_and_those_granted_to_them() {
    let (db, repo) = repository().await;
    let (alice, bob) = models(&db, &repo).await;
    let as_user = |id| ModelFilter {
        usable_by: Some(id),
        ..ModelFilter::default()
    };
    let strings = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let everything = strings(&["alices", "orphan", "public"]);
    assert_eq!(
        listed(&repo, &ModelFilter::default()).await,
        (everything.clone(), everything)
    );
    let alices = strings(&["alices", "public"]);
    assert_eq!(
        listed(&repo, &as_user(alice.id)).await,
        (alices.clone(), alices)
    );
    let public = strings(&["public"]);
    assert_eq!(
        listed(&repo, &as_user(bob.id)).await,
        (public.clone(), public)
    );

    repo.grant(&model_name("orphan"), &username("bob"))
        .await
        .expect("granted");
    let granted = strings(&["orphan", "public"]);
    assert_eq!(
        listed(&repo, &as_user(bob.id)).await,
        (granted.clone(), granted)
    );
    // An allowlist narrows it further.
    let allowlisted = ModelFilter {
        names: Some(vec![model_name("orphan"), model_name("alices")]),
        ..as_user(bob.id)
    };
    let orphan = strings(&["orphan"]);
    assert_eq!(listed(&repo, &allowlisted).await, (orphan.clone(), orphan));
}

#[tokio::test]
async fn grants_are_kept_once_listed_by_username_and_taken_back() {
    let (db, repo) = repository().await;
    models(&db, &repo).await;
    user(&db, "carol").await;
    let name = model_name("alices");
    let (first, created) = repo
        .grant(&name, &username("carol"))
        .await
        .expect("granted");
    assert!(created);
    let (again, created) = repo
        .grant(&name, &username("carol"))
        .await
        .expect("granted");
    assert!(!created);
    assert_eq!(again.granted_at, first.granted_at);
    repo.grant(&name, &username("bob")).await.expect("granted");
    let grants = repo.list_grants(&name).await.expect("listed");
    let names: Vec<&str> = grants.iter().map(|g| g.username.as_str()).collect();
    assert_eq!(names, ["bob", "carol"]);

    repo.revoke_grant(&name, &username("carol"))
        .await
        .expect("revoked");
    assert!(matches!(
        repo.revoke_grant(&name, &username("carol")).await,
        Err(RepoError::NotFound(_))
    ));
    for missing in [
        repo.grant(&model_name("nothing"), &username("bob"))
            .await
            .map(drop),
        repo.grant(&name, &username("nobody")).await.map(drop),
        repo.list_grants(&model_name("nothing")).await.map(drop),
    ] {
        assert!(
            matches!(missing, Err(RepoError::NotFound(_))),
            "{missing:?}"
        );
    }
    // Deleting the model takes its grants along.
    repo.delete_model(&name).await.expect("deleted");
    assert_eq!(db.scalar("SELECT count(*) FROM model_grants").await, 0);
}

#[tokio::test]
async fn models_from_before_visibility_become_public_and_new_ones_are_private() {
    let db = TestDatabase::new().await;
    let url = db.url().to_owned();
    // Back to the schema before visibility (and anything after it).
    tokio::task::spawn_blocking(move || {
        let mut conn =
            <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)
                .expect("connects");
        let visibility = MigrationSource::<Pg>::migrations(&MIGRATIONS)
            .expect("embedded migrations")
            .into_iter()
            .map(|m| (m.name().to_string(), m.name().version().to_string()))
            .find(|(name, _)| name.ends_with("_visibility"))
            .map(|(_, version)| version)
            .expect("the visibility migration");
        loop {
            let reverted = conn
                .revert_last_migration(MIGRATIONS)
                .expect("down.sql runs");
            if reverted.to_string() == visibility {
                break;
            }
        }
    })
    .await
    .expect("task ran");
    db.execute("INSERT INTO models (name) VALUES ('from-before')")
        .await;
    run_migrations(db.url()).await.expect("migrates again");
    let repo = PgRegistryRepository::new(db.pool());
    let old = repo
        .get_model(&model_name("from-before"))
        .await
        .expect("kept");
    assert_eq!(old.visibility, Visibility::Public);
    db.execute("INSERT INTO models (name) VALUES ('after')")
        .await;
    let new = repo
        .get_model(&model_name("after"))
        .await
        .expect("inserted");
    assert_eq!(
        new.visibility,
        Visibility::Private,
        "the column's default from now on"
    );
}
