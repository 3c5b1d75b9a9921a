//! Token quotas of keys and users: stored at creation, changed by a patch that touches only
//! what it names, cleared back to the defaults, and read back with the key's lookup.

use maas_domain::RepoError;
use maas_domain::identity::{
    MonthlyTokens, NewUser, Role, TokenQuotas, TokenQuotasPatch, TokensPerMinute, UserPatch,
};
use maas_domain::ports::IdentityRepository;
use maas_persistence::test_util::{new_key, username};
use uuid::Uuid;

use crate::{repository, user};

fn quotas(tpm: i64, monthly: i64) -> TokenQuotas {
    TokenQuotas {
        tpm: Some(TokensPerMinute::new(tpm).expect("valid")),
        monthly_tokens: Some(MonthlyTokens::new(monthly).expect("valid")),
    }
}

#[tokio::test]
async fn a_keys_quotas_are_stored_patched_one_at_a_time_and_cleared() {
    let (_db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let (plaintext, mut new) = new_key(alice.id, "metered");
    new.tokens = quotas(1_000, 1_000_000_000_000);
    let key = repo.create_key(new, None).await.expect("created");
    assert_eq!(
        key.tokens,
        quotas(1_000, 1_000_000_000_000),
        "the largest quota fits"
    );

    let only_tpm = TokenQuotasPatch {
        tpm: Some(Some(TokensPerMinute::new(5).expect("valid"))),
        ..TokenQuotasPatch::default()
    };
    let (changed, hash) = repo
        .set_key_quotas(key.id, only_tpm)
        .await
        .expect("changed");
    assert_eq!(hash, plaintext.hash());
    assert_eq!(
        changed.tokens,
        quotas(5, 1_000_000_000_000),
        "the quota kept"
    );

    let (unchanged, _) = repo
        .set_key_quotas(key.id, TokenQuotasPatch::default())
        .await
        .expect("an empty patch reads the key");
    assert_eq!(unchanged.tokens, changed.tokens);
    let cleared = TokenQuotasPatch {
        tpm: Some(None),
        monthly_tokens: Some(None),
    };
    let (cleared, _) = repo.set_key_quotas(key.id, cleared).await.expect("cleared");
    assert_eq!(cleared.tokens, TokenQuotas::default());

    let found = repo
        .find_key(&plaintext.hash())
        .await
        .expect("looked up")
        .expect("found");
    assert_eq!(found.key.tokens, TokenQuotas::default());
    let missing = Uuid::new_v4();
    assert_eq!(
        repo.set_key_quotas(missing, TokenQuotasPatch::default())
            .await
            .expect_err("no such key"),
        RepoError::NotFound(format!("API key {missing} not found"))
    );
}

#[tokio::test]
async fn a_users_quotas_are_set_at_creation_patched_and_seen_with_its_keys() {
    let (_db, repo) = repository().await;
    let created = repo
        .create_user(NewUser {
            username: username("alice"),
            role: Role::Member,
            rate_limit_rpm: None,
            tokens: quotas(200, 3_000),
        })
        .await
        .expect("created");
    assert_eq!(created.tokens, quotas(200, 3_000));
    let (plaintext, new) = new_key(created.id, "k");
    repo.create_key(new, None).await.expect("key");

    let patch = UserPatch {
        tokens: TokenQuotasPatch {
            monthly_tokens: Some(None),
            ..TokenQuotasPatch::default()
        },
        ..UserPatch::default()
    };
    let changed = repo
        .update_user(&username("alice"), patch)
        .await
        .expect("changed");

    assert_eq!(
        changed.tokens,
        TokenQuotas {
            monthly_tokens: None,
            ..quotas(200, 3_000)
        }
    );
    let found = repo
        .find_key(&plaintext.hash())
        .await
        .expect("looked up")
        .expect("found");
    assert_eq!(found.user.tokens, changed.tokens);
}
