//! Users: create, read, list (keyset pages), patch.

use maas_domain::RepoError;
use maas_domain::identity::{Role, User, UserPatch};
use maas_domain::ports::IdentityRepository;
use maas_domain::values::PageLimit;
use maas_persistence::test_util::{new_user, username};
use uuid::Uuid;

use crate::{repository, user};

fn limit(n: i64) -> PageLimit {
    PageLimit::new(n).expect("valid limit")
}

fn names(users: &[User]) -> Vec<&str> {
    users.iter().map(|u| u.username.as_str()).collect()
}

#[tokio::test]
async fn a_created_user_is_enabled_and_found_by_name_and_by_id() {
    let (_db, repo) = repository().await;
    let created = user(&repo, "alice", Role::Member).await;
    assert_eq!(created.username.as_str(), "alice");
    assert_eq!(created.role, Role::Member);
    assert!(!created.disabled);

    assert_eq!(
        repo.get_user(&username("alice")).await.expect("found"),
        created
    );
    assert_eq!(
        repo.get_user_by_id(created.id).await.expect("found"),
        created
    );
}

#[tokio::test]
async fn creating_the_same_username_twice_is_a_conflict_whatever_the_role() {
    let (db, repo) = repository().await;
    user(&repo, "alice", Role::Member).await;
    let err = repo
        .create_user(new_user("alice", Role::Admin))
        .await
        .expect_err("duplicate");
    assert_eq!(
        err,
        RepoError::Conflict("user 'alice' already exists".into())
    );
    assert_eq!(db.scalar("SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn missing_users_are_not_found_naming_them() {
    let (_db, repo) = repository().await;
    let err = repo
        .get_user(&username("ghost"))
        .await
        .expect_err("missing");
    assert_eq!(err, RepoError::NotFound("user 'ghost' not found".into()));

    let id = Uuid::new_v4();
    let err = repo.get_user_by_id(id).await.expect_err("missing");
    assert_eq!(err, RepoError::NotFound(format!("user {id} not found")));

    let patch = UserPatch {
        disabled: Some(true),
        ..UserPatch::default()
    };
    let err = repo
        .update_user(&username("ghost"), patch)
        .await
        .expect_err("missing");
    assert_eq!(err, RepoError::NotFound("user 'ghost' not found".into()));
    let err = repo
        .update_user(&username("ghost"), UserPatch::default())
        .await
        .expect_err("missing");
    assert_eq!(err, RepoError::NotFound("user 'ghost' not found".into()));
}

#[tokio::test]
async fn users_are_listed_by_name_strictly_after_the_cursor_with_one_extra_row() {
    let (_db, repo) = repository().await;
    for name in ["carol", "alice", "eve", "bob", "dave"] {
        user(&repo, name, Role::Member).await;
    }

    let first = repo.list_users(None, limit(2)).await.expect("listed");
    assert_eq!(names(&first), ["alice", "bob", "carol"], "limit + 1 rows");

    let after = username("bob");
    let next = repo
        .list_users(Some(&after), limit(2))
        .await
        .expect("listed");
    assert_eq!(names(&next), ["carol", "dave", "eve"]);

    let last = repo
        .list_users(Some(&username("eve")), limit(2))
        .await
        .expect("listed");
    assert!(last.is_empty());
}

#[tokio::test]
async fn usernames_are_ordered_bytewise_whatever_the_server_locale() {
    let (_db, repo) = repository().await;
    for name in ["ab", "a_b", "a0", "a.b", "a-b"] {
        user(&repo, name, Role::Member).await;
    }
    let listed = repo.list_users(None, limit(10)).await.expect("listed");
    assert_eq!(names(&listed), ["a-b", "a.b", "a0", "a_b", "ab"]);
}

#[tokio::test]
async fn a_patch_changes_only_what_it_names() {
    let (_db, repo) = repository().await;
    // Another enabled admin, so that alice may be disabled while she is an admin.
    user(&repo, "keeper", Role::Admin).await;
    let created = user(&repo, "alice", Role::Member).await;
    let alice = username("alice");

    let promoted = repo
        .update_user(
            &alice,
            UserPatch {
                role: Some(Role::Admin),
                ..UserPatch::default()
            },
        )
        .await
        .expect("updated");
    assert_eq!(
        promoted,
        User {
            role: Role::Admin,
            ..created.clone()
        }
    );

    let disabled = repo
        .update_user(
            &alice,
            UserPatch {
                disabled: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .expect("updated");
    assert_eq!(
        disabled,
        User {
            role: Role::Admin,
            disabled: true,
            ..created.clone()
        }
    );

    let both = repo
        .update_user(
            &alice,
            UserPatch {
                role: Some(Role::Member),
                disabled: Some(false),
                ..UserPatch::default()
            },
        )
        .await
        .expect("updated");
    assert_eq!(both, created);
    assert_eq!(repo.get_user(&alice).await.expect("found"), created);
}

#[tokio::test]
async fn an_empty_patch_returns_the_user_unchanged() {
    let (_db, repo) = repository().await;
    let created = user(&repo, "alice", Role::Admin).await;
    let same = repo
        .update_user(&username("alice"), UserPatch::default())
        .await
        .expect("found");
    assert_eq!(same, created);
}

#[tokio::test]
async fn a_user_row_that_breaks_a_domain_rule_is_an_internal_error_not_a_panic() {
    let (db, repo) = repository().await;
    let broken = user(&repo, "broken", Role::Member).await;
    user(&repo, "fine", Role::Member).await;
    db.execute("UPDATE users SET username = 'Not Valid' WHERE username = 'broken'")
        .await;

    let err = repo.get_user_by_id(broken.id).await.expect_err("corrupt");
    assert!(
        matches!(&err, RepoError::Internal(m) if m.contains("users.username")),
        "{err:?}"
    );
    let err = repo
        .list_users(None, limit(10))
        .await
        .expect_err("corrupt row on the page");
    assert!(matches!(err, RepoError::Internal(_)), "{err:?}");
    repo.get_user(&username("fine"))
        .await
        .expect("other rows still read");
}

#[tokio::test]
async fn the_last_enabled_admin_can_be_neither_demoted_nor_disabled() {
    let (_db, repo) = repository().await;
    let root = user(&repo, "root", Role::Admin).await;
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
        assert!(
            matches!(err, RepoError::Conflict(ref m) if m.contains("last enabled admin")),
            "{err:?}"
        );
    }
    assert_eq!(
        repo.get_user_by_id(root.id).await.expect("found"),
        root,
        "nothing changed"
    );

    // With a second enabled admin, the first may step down.
    user(&repo, "deputy", Role::Admin).await;
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
        .expect("another admin remains");
    assert_eq!(demoted.role, Role::Member);
}

#[tokio::test]
async fn without_any_admin_members_can_still_be_changed() {
    let (_db, repo) = repository().await;
    user(&repo, "solo", Role::Member).await;
    let disabled = repo
        .update_user(
            &username("solo"),
            UserPatch {
                role: None,
                disabled: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .expect("no admin to protect");
    assert!(disabled.disabled);
}
