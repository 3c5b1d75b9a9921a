//! Lists come in pages: models by name, versions newest first, each page with an opaque cursor
//! to the next one, the last page without.

use maas_domain::DomainError;
use maas_domain::identity::Role;
use maas_domain::model::ModelFilter;
use maas_domain::test_util::{
    InMemory, admin_reader, described_model, model_name, new_model, new_version,
};
use maas_domain::values::PageLimit;

fn limit(n: i64) -> PageLimit {
    PageLimit::new(n).expect("valid limit")
}

#[tokio::test]
async fn following_the_cursors_lists_every_model_once_in_name_order() {
    let world = InMemory::new();
    let admin = world.actor("root", Role::Admin).await;
    for name in ["delta", "alpha", "echo", "charlie", "bravo"] {
        world
            .registry
            .create_model(&admin, new_model(name))
            .await
            .expect("created");
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = world
            .registry
            .list_models(
                &admin_reader(),
                &ModelFilter::default(),
                cursor.as_deref(),
                limit(2),
            )
            .await
            .expect("listed");
        assert!(page.items.len() <= 2);
        seen.extend(page.items.into_iter().map(|m| m.name.into_inner()));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }

    assert_eq!(seen, ["alpha", "bravo", "charlie", "delta", "echo"]);
}

#[tokio::test]
async fn a_page_that_ends_the_list_has_no_cursor() {
    let world = InMemory::new();
    let admin = world.actor("root", Role::Admin).await;
    for name in ["a", "b"] {
        world
            .registry
            .create_model(&admin, new_model(name))
            .await
            .expect("created");
    }

    let page = world
        .registry
        .list_models(&admin_reader(), &ModelFilter::default(), None, limit(2))
        .await
        .expect("listed");

    assert_eq!(page.items.len(), 2);
    assert_eq!(page.next_cursor, None);
}

#[tokio::test]
async fn versions_are_listed_newest_first_page_by_page() {
    let world = InMemory::new();
    let admin = world.actor("root", Role::Admin).await;
    let name = model_name("llama");
    world
        .registry
        .create_model(&admin, new_model("llama"))
        .await
        .expect("created");
    for i in 0..3 {
        world
            .registry
            .create_version(&admin, &name, new_version(&format!("s3://b/{i}")))
            .await
            .expect("created");
    }

    let first = world
        .registry
        .list_versions(&admin_reader(), &name, None, limit(2))
        .await
        .expect("listed");
    let rest = world
        .registry
        .list_versions(
            &admin_reader(),
            &name,
            first.next_cursor.as_deref(),
            limit(2),
        )
        .await
        .expect("listed");

    let numbers = |versions: &[maas_domain::model::ModelVersion]| -> Vec<i32> {
        versions.iter().map(|v| v.version.get()).collect()
    };
    assert_eq!(numbers(&first.items), [3, 2]);
    assert_eq!(numbers(&rest.items), [1]);
    assert_eq!(rest.next_cursor, None);
}

#[tokio::test]
async fn a_cursor_the_server_did_not_issue_for_that_list_is_refused() {
    let world = InMemory::new();
    let admin = world.actor("root", Role::Admin).await;
    let name = model_name("llama");
    world
        .registry
        .create_model(&admin, new_model("llama"))
        .await
        .expect("created");
    for _ in 0..2 {
        world
            .registry
            .create_version(&admin, &name, new_version("s3://b/v"))
            .await
            .expect("created");
    }
    let version_cursor = world
        .registry
        .list_versions(&admin_reader(), &name, None, limit(1))
        .await
        .expect("listed")
        .next_cursor
        .expect("a second page");

    for cursor in ["made-up", version_cursor.as_str()] {
        let outcome = world
            .registry
            .list_models(
                &admin_reader(),
                &ModelFilter::default(),
                Some(cursor),
                limit(10),
            )
            .await;
        assert!(
            matches!(&outcome, Err(DomainError::Validation(v)) if v.field == "cursor"),
            "{cursor}: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn filters_narrow_every_page() {
    let world = InMemory::new();
    let admin = world.actor("root", Role::Admin).await;
    for (name, text, tags) in [
        ("a-chat", "llm", vec!["chat"]),
        ("b-chat", "other", vec!["chat"]),
        ("c-chat", "LLM", vec!["chat"]),
        ("d-vision", "llm", vec!["vision"]),
    ] {
        world
            .registry
            .create_model(&admin, described_model(name, text, &tags))
            .await
            .expect("created");
    }
    let filter = ModelFilter {
        tag: Some("chat".into()),
        q: Some("llm".into()),
        ..ModelFilter::default()
    };

    let first = world
        .registry
        .list_models(&admin_reader(), &filter, None, limit(1))
        .await
        .expect("listed");
    let rest = world
        .registry
        .list_models(
            &admin_reader(),
            &filter,
            first.next_cursor.as_deref(),
            limit(1),
        )
        .await
        .expect("listed");

    assert_eq!(first.items[0].name.as_str(), "a-chat");
    assert_eq!(rest.items[0].name.as_str(), "c-chat");
    assert_eq!(rest.next_cursor, None);
}
