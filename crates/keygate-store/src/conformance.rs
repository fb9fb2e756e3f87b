//! The conformance suite every [`Store`] backend must pass, against a real database.
//!
//! Each case takes a fresh, empty store and panics on the first broken promise. A backend's
//! tests run them all with [`conformance_suite!`](crate::conformance_suite):
//!
//! ```text
//! keygate_store::conformance_suite!(|| async {
//!     let dir = tempfile::tempdir().unwrap().keep();
//!     std::sync::Arc::new(SqliteStore::connect(dir.join("k.db").to_str().unwrap()).await.unwrap())
//!         as std::sync::Arc<dyn keygate_store::Store>
//! });
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use keygate_core::limits::{IpAllowlist, Quota, RateLimits, Refill, RefillPeriod};
use keygate_core::{
    Actor, Audit, EventKind, KeyHash, KeyId, KeyPatch, KeyRecord, KeySpec, Prefix, RecordError,
    Status, Timestamp, issue, plan_rotation,
};
use serde_json::json;

#[allow(unused_imports)]
use crate::{AdminAccounts, AuditLog, EmailOutbox, KeyStore, UsageLog, WebhookOutbox};
use crate::{
    AuditQuery, Change, ImportedKey, ImportedKinds, LegacyCredential, ListQuery, Spend, Store,
    StoreError, UsageDelta,
};
use keygate_core::Outcome;
use keygate_core::switch::Usage;
use keygate_core::usage::{Bucket, UsageCounts, UsageRange};

/// Expands to one `#[tokio::test]` per conformance case; `$fresh` is a closure returning a
/// future of `Arc<dyn Store>`: a fresh, empty store (it panics if the backend cannot be had:
/// a case never passes without its database). An optional attribute after `;` goes on every
/// case, e.g. `#[cfg_attr(not(keygate_test_postgres), ignore = "needs PostgreSQL")]`.
#[macro_export]
macro_rules! conformance_suite {
    ($fresh:expr) => {
        $crate::conformance_suite!($fresh; #[allow(unused_attributes)]);
    };
    ($fresh:expr; #[$attr:meta]) => {
        $crate::conformance_suite!(@cases $fresh; #[$attr];
            create_then_get_round_trips_every_field,
            unknown_ids_and_hashes_are_absent,
            duplicates_are_rejected_and_change_nothing,
            list_filters_by_owner_and_name,
            list_status_filter_agrees_with_core_status,
            list_pages_cover_everything_once_newest_first,
            update_applies_patches_atomically,
            revoke_is_final,
            concurrent_revokes_succeed_exactly_once,
            usage_times_only_move_forward,
            retiring_ends_the_grace_once_with_its_evidence,
            owners_get_emails_written_with_their_events,
            operators_get_emails_once_and_the_log_pages_by_filter,
            outbox_rows_are_claimed_by_one_sender_until_the_lease_ends,
            ping_answers,
            watchers_see_every_change,
            only_one_first_key,
            every_change_is_in_the_audit_trail,
            rotation_is_one_atomic_step,
            events_fill_the_webhook_outbox,
            sealed_successors_go_only_to_secret_endpoints,
            endpoints_change_are_held_and_go_with_their_deliveries,
            the_sweep_filter_reads_only_candidates,
            search_matches_name_owner_or_start,
            admin_users_are_set_replaced_and_audited,
            admin_sessions_live_end_and_hand_out_messages_once,
            sign_in_counts_are_counted_one_attempt_after_another,
            server_secrets_are_made_once,
            limits_round_trip_and_change_with_their_events,
            credits_are_spent_exactly_under_contention,
            a_rotation_hands_the_credits_to_the_successor,
            refills_happen_once_per_period_with_an_event,
            imports_are_written_once_with_their_event,
            a_rehash_happens_once_with_its_event_and_signals,
            owner_limits_are_read_with_every_key_of_the_owner,
            usage_counts_add_up_exactly_under_concurrent_batches,
            usage_rolls_up_by_day_sums_by_owner_and_is_purged
        );
    };
    (@cases $fresh:expr; #[$attr:meta]; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[$attr]
            async fn $case() {
                let store: ::std::sync::Arc<dyn $crate::Store> = ($fresh)().await;
                $crate::conformance::$case(store).await
            }
        )*
    };
}

/// A fixed "now" for the suite: 2026-01-01T00:00:00Z.
pub fn now() -> Timestamp {
    Timestamp::from_unix_ms(1_767_225_600_000).expect("in range")
}

fn at(offset_ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(now().unix_ms() + offset_ms).expect("in range")
}

fn audit() -> Audit {
    Audit::by(Actor::Library).in_request("conformance")
}

/// One batch entry: `n` uses of `id` from `first` to `last`, `since_rotation` of them after a
/// rotation.
fn used(id: &KeyId, first: Timestamp, last: Timestamp, since_rotation: u64) -> Usage {
    Usage {
        id: id.clone(),
        first_at: first,
        last_at: last,
        since_rotation,
    }
}

/// An enabled, non-Slack endpoint `id` for `events`, at `http://127.0.0.1:9/<id>`, made at 0.
fn endpoint(id: &str, events: &[&str]) -> keygate_core::webhook::Endpoint {
    keygate_core::webhook::Endpoint {
        id: id.into(),
        url: format!("http://127.0.0.1:9/{id}"),
        events: events.iter().map(|e| e.to_string()).collect(),
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        slack: false,
        enabled: true,
        created_at: at(0),
        receives_secrets: false,
    }
}

fn record(name: &str, owner: Option<&str>, created: Timestamp) -> KeyRecord {
    let spec = KeySpec {
        name: name.into(),
        owner: owner.map(Into::into),
        scopes: vec!["orders:read".into(), "users:*".into()],
        metadata: json!({"plan": "pro", "n": 3, "nested": {"a": [1, 2]}})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        expires: None,
        max_age: None,
        ..KeySpec::default()
    };
    issue(spec, &Prefix::default(), created)
        .expect("valid spec")
        .0
}

/// Every field written by `create` comes back from `get` and `find_by_hash` unchanged.
pub async fn create_then_get_round_trips_every_field(store: Arc<dyn Store>) {
    let mut full = record("full", Some("acct_1"), at(0));
    full.expires_at = Some(at(86_400_000));
    full.last_used_at = Some(at(5));
    full.revoked_at = Some(at(7));
    full.revoked_reason = Some("leaked in a log".into());
    full.enabled = false;
    full.rotated_from = Some(KeyId::generate(at(-10)));
    full.rotated_to = Some(KeyId::generate(at(10)));
    full.rotated_at = Some(at(6));
    full.max_age = keygate_core::Lifetime::parse("30d").ok();
    full.first_used_at = Some(at(2));
    full.uses_since_rotation = 41;
    full.retire_when_switched = keygate_core::Lifetime::parse("1h").ok();
    let mut bare = record("bare", None, at(1));
    bare.scopes.clear();
    bare.metadata.clear();
    for r in [&full, &bare] {
        store.create(r, &audit()).await.expect("create");
        assert_eq!(store.get(&r.id).await.expect("get").as_ref(), Some(r));
        assert_eq!(
            store.find_by_hash(&r.hash).await.expect("find").as_ref(),
            Some(r)
        );
    }
}

/// Lookups of things never stored find nothing (and are not errors).
pub async fn unknown_ids_and_hashes_are_absent(store: Arc<dyn Store>) {
    store
        .create(&record("k", None, at(0)), &audit())
        .await
        .expect("create");
    assert_eq!(store.get(&KeyId::generate(at(0))).await.expect("get"), None);
    assert_eq!(
        store
            .find_by_hash(&KeyHash::of("kg_nope"))
            .await
            .expect("find"),
        None
    );
}

/// A second record with the same id or the same hash is refused, and the first stays intact.
pub async fn duplicates_are_rejected_and_change_nothing(store: Arc<dyn Store>) {
    let first = record("first", None, at(0));
    store.create(&first, &audit()).await.expect("create");
    let mut same_hash = record("second", None, at(1));
    same_hash.hash = first.hash;
    let mut same_id = record("third", None, at(2));
    same_id.id = first.id.clone();
    for dup in [&same_hash, &same_id] {
        match store.create(dup, &audit()).await {
            Err(StoreError::Duplicate) => {}
            other => panic!("expected Duplicate, got {other:?}"),
        }
    }
    assert_eq!(
        store.get(&first.id).await.expect("get"),
        Some(first.clone())
    );
    let all = store.list(&ListQuery::new(now())).await.expect("list");
    assert_eq!(all.items, vec![first]);
}

/// Owner and name filters, including names with LIKE wildcards and mixed case.
pub async fn list_filters_by_owner_and_name(store: Arc<dyn Store>) {
    let names = [
        ("Billing prod", Some("acct_1")),
        ("billing staging", Some("acct_1")),
        ("50%_off promo", Some("acct_2")),
        ("500 off", None),
        ("search", Some("acct_2")),
    ];
    for (i, (name, owner)) in names.iter().enumerate() {
        store
            .create(&record(name, *owner, at(i as i64)), &audit())
            .await
            .expect("create");
    }
    let names_of = |q: ListQuery| {
        let store = store.clone();
        async move {
            let page = store.list(&q).await.expect("list");
            page.items.into_iter().map(|r| r.name).collect::<Vec<_>>()
        }
    };
    let mut q = ListQuery::new(now());
    q.owner = Some("acct_1".into());
    assert_eq!(names_of(q).await, ["billing staging", "Billing prod"]);
    let mut q = ListQuery::new(now());
    q.name_contains = Some("BILLING".into());
    assert_eq!(names_of(q).await, ["billing staging", "Billing prod"]);
    let mut q = ListQuery::new(now());
    q.name_contains = Some("%_".into());
    assert_eq!(names_of(q).await, ["50%_off promo"]);
    let mut q = ListQuery::new(now());
    q.name_contains = Some("0%".into());
    assert_eq!(names_of(q).await, ["50%_off promo"]);
    let mut q = ListQuery::new(now());
    q.owner = Some("acct_2".into());
    q.name_contains = Some("promo".into());
    assert_eq!(names_of(q).await, ["50%_off promo"]);
    let mut q = ListQuery::new(now());
    q.owner = Some("nobody".into());
    assert!(names_of(q).await.is_empty());
}

/// The status filter gives exactly the records whose core status is that status.
pub async fn list_status_filter_agrees_with_core_status(store: Arc<dyn Store>) {
    let mut records = Vec::new();
    for (i, (expires, revoked, enabled)) in [
        (None, None, true),
        (Some(at(1)), None, true),   // expires just after now
        (Some(at(0)), None, true),   // expires exactly now: expired
        (Some(at(-1)), None, false), // expired and disabled: expired
        (None, None, false),
        (Some(at(10)), None, false),
        (None, Some(at(-5)), true),
        (Some(at(-9)), Some(at(-5)), false), // revoked wins
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = record(&format!("k{i}"), None, at(-100 + i as i64));
        r.expires_at = expires;
        r.revoked_at = revoked;
        r.enabled = enabled;
        store.create(&r, &audit()).await.expect("create");
        records.push(r);
    }
    for status in [
        Status::Active,
        Status::Disabled,
        Status::Expired,
        Status::Revoked,
    ] {
        let mut q = ListQuery::new(now());
        q.status = Some(status);
        let got: HashSet<KeyId> = store
            .list(&q)
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|r| r.id)
            .collect();
        let want: HashSet<KeyId> = records
            .iter()
            .filter(|r| r.status(now()) == status)
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(got, want, "status {status}");
        assert!(!want.is_empty(), "status {status} is exercised");
    }
    let all = store.list(&ListQuery::new(now())).await.expect("list");
    assert_eq!(all.items.len(), records.len());
    let counts = store.count_by_status(now()).await.expect("count");
    for status in [
        Status::Active,
        Status::Disabled,
        Status::Expired,
        Status::Revoked,
    ] {
        let want = records.iter().filter(|r| r.status(now()) == status).count() as u64;
        assert_eq!(counts.get(status), want, "count of {status}");
    }
    assert_eq!(counts.total(), records.len() as u64);
}

/// Pagination: every key exactly once, newest first, stable across pages; bad cursors refused.
pub async fn list_pages_cover_everything_once_newest_first(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..25 {
        let r = record(&format!("k{i}"), Some("acct"), at(i));
        store.create(&r, &audit()).await.expect("create");
        ids.push(r.id);
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut q = ListQuery::new(now());
    q.limit = 10;
    let mut sizes = Vec::new();
    loop {
        let page = store.list(&q).await.expect("list");
        sizes.push(page.items.len());
        seen.extend(page.items.into_iter().map(|r| r.id));
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(seen, ids);
    let mut q = ListQuery::new(now());
    q.limit = 25;
    assert_eq!(store.list(&q).await.expect("list").next_cursor, None);
    q.limit = 0;
    assert_eq!(store.list(&q).await.expect("list").items.len(), 1);
    for bad in ["garbage", "key_", "'; DROP TABLE keys; --"] {
        q.cursor = Some(bad.into());
        assert!(matches!(
            store.list(&q).await,
            Err(StoreError::InvalidCursor)
        ));
    }
    assert_eq!(
        store
            .list(&ListQuery::new(now()))
            .await
            .expect("list")
            .items
            .len(),
        25
    );
}

/// Patches change what they name, are checked by core, and leave the record alone on error.
pub async fn update_applies_patches_atomically(store: Arc<dyn Store>) {
    let r = record("before", Some("acct_1"), at(0));
    store.create(&r, &audit()).await.expect("create");
    let patch = KeyPatch {
        name: Some("after".into()),
        owner: Some(None),
        scopes: Some(vec!["billing:*".into()]),
        metadata: Some(json!({"tier": 2}).as_object().cloned().unwrap_or_default()),
        expires_at: Some(Some(at(1_000))),
        enabled: Some(false),
        max_age: Some(keygate_core::Lifetime::parse("1d").ok()),
        ..KeyPatch::default()
    };
    let updated = store
        .update(&r.id, patch, now(), &audit())
        .await
        .expect("update");
    assert_eq!(updated.name, "after");
    assert_eq!(updated.owner, None);
    assert_eq!(updated.scopes, ["billing:*"]);
    assert_eq!(updated.metadata["tier"], json!(2));
    assert_eq!(updated.expires_at, Some(at(1_000)));
    assert!(!updated.enabled);
    assert_eq!(updated.max_age, keygate_core::Lifetime::parse("1d").ok());
    assert_eq!(
        (updated.hash, &updated.start, updated.created_at),
        (r.hash, &r.start, r.created_at)
    );
    assert_eq!(store.get(&r.id).await.expect("get"), Some(updated.clone()));

    let bad = KeyPatch {
        name: Some("changed".into()),
        scopes: Some(vec!["NOT A SCOPE".into()]),
        ..KeyPatch::default()
    };
    assert!(matches!(
        store.update(&r.id, bad, now(), &audit()).await,
        Err(StoreError::Record(RecordError::Field {
            field: "scopes",
            ..
        }))
    ));
    assert_eq!(store.get(&r.id).await.expect("get"), Some(updated));
    assert!(matches!(
        store
            .update(
                &KeyId::generate(at(0)),
                KeyPatch::default(),
                now(),
                &audit()
            )
            .await,
        Err(StoreError::NotFound)
    ));
}

/// Revocation records time and reason, cannot be repeated, and cannot be undone by enabling.
pub async fn revoke_is_final(store: Arc<dyn Store>) {
    let r = record("k", None, at(0));
    store.create(&r, &audit()).await.expect("create");
    let revoked = store
        .revoke(&r.id, at(10), Some("leaked".into()), &audit())
        .await
        .expect("revoke");
    assert_eq!(revoked.revoked_at, Some(at(10)));
    assert_eq!(revoked.revoked_reason.as_deref(), Some("leaked"));
    assert_eq!(revoked.status(at(11)), Status::Revoked);
    assert!(matches!(
        store.revoke(&r.id, at(20), None, &audit()).await,
        Err(StoreError::Record(RecordError::AlreadyRevoked))
    ));
    let enable = KeyPatch {
        enabled: Some(true),
        ..KeyPatch::default()
    };
    assert!(matches!(
        store.update(&r.id, enable, now(), &audit()).await,
        Err(StoreError::Record(RecordError::AlreadyRevoked))
    ));
    assert_eq!(store.get(&r.id).await.expect("get"), Some(revoked));
    assert!(matches!(
        store
            .revoke(&KeyId::generate(at(0)), at(1), None, &audit())
            .await,
        Err(StoreError::NotFound)
    ));
    let long_reason = "x".repeat(501);
    let other = record("other", None, at(1));
    store.create(&other, &audit()).await.expect("create");
    assert!(matches!(
        store
            .revoke(&other.id, at(2), Some(long_reason), &audit())
            .await,
        Err(StoreError::Record(RecordError::Field {
            field: "reason",
            ..
        }))
    ));
    assert_eq!(store.get(&other.id).await.expect("get"), Some(other));
}

/// Many revokes of one key at once: exactly one wins, the rest see `AlreadyRevoked`.
pub async fn concurrent_revokes_succeed_exactly_once(store: Arc<dyn Store>) {
    let r = record("k", None, at(0));
    store.create(&r, &audit()).await.expect("create");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        let id = r.id.clone();
        tasks.push(tokio::spawn(async move {
            store
                .revoke(&id, at(i + 1), Some(format!("reason {i}")), &audit())
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => won += 1,
            Err(StoreError::Record(RecordError::AlreadyRevoked)) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(won, 1);
}

/// Usage batches set `last_used_at`, never move it backwards, and ignore unknown ids.
pub async fn usage_times_only_move_forward(store: Arc<dyn Store>) {
    let a = record("a", None, at(0));
    let b = record("b", None, at(1));
    store.create(&a, &audit()).await.expect("create");
    store.create(&b, &audit()).await.expect("create");
    store.record_usage(&[]).await.expect("empty batch");
    store
        .record_usage(&[
            used(&a.id, at(50), at(50), 0),
            used(&KeyId::generate(at(0)), at(60), at(60), 1),
        ])
        .await
        .expect("usage");
    store
        .record_usage(&[used(&a.id, at(40), at(40), 0)])
        .await
        .expect("usage");
    let got = store.get(&a.id).await.expect("get").expect("present");
    assert_eq!(got.last_used_at, Some(at(50)));
    assert_eq!(
        store
            .get(&b.id)
            .await
            .expect("get")
            .expect("present")
            .last_used_at,
        None
    );
    store
        .record_usage(&[used(&a.id, at(70), at(70), 2)])
        .await
        .expect("usage");
    let got = store.get(&a.id).await.expect("get").expect("present");
    assert_eq!(got.last_used_at, Some(at(70)));
    assert_eq!(
        got.first_used_at,
        Some(at(40)),
        "the first use moves only back"
    );
    assert_eq!(got.uses_since_rotation, 2, "uses since rotation add up");
    let mut rest = got.clone();
    rest.last_used_at = a.last_used_at;
    rest.first_used_at = a.first_used_at;
    rest.uses_since_rotation = a.uses_since_rotation;
    assert_eq!(rest, a, "only the usage fields changed");
}

/// A working store answers `ping`; an empty one counts nothing.
pub async fn ping_answers(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
    assert_eq!(
        store.count_by_status(now()).await.expect("count").total(),
        0
    );
}

/// A rotated key's uses are counted; `retire` ends its grace period at once when the plan says
/// so (with `key.retired` and the plan's evidence, and a change signal), and changes nothing
/// when it says no.
pub async fn retiring_ends_the_grace_once_with_its_evidence(store: Arc<dyn Store>) {
    let old = record("switching", None, at(0));
    store.create(&old, &audit()).await.expect("create");
    let new_key = keygate_core::generate(&keygate_core::Prefix::default());
    let plan = |r: &KeyRecord| {
        let (mut old, new) =
            keygate_core::plan_rotation(r, &new_key, KeyId::generate(at(10)), at(10), 100_000)?;
        old.retire_when_switched = keygate_core::Lifetime::parse("1m").ok();
        Ok((old, new))
    };
    let (rotated, successor) = store
        .rotate(&old.id, &plan, at(10), &audit(), None)
        .await
        .expect("rotate");
    assert_eq!(
        rotated.retire_when_switched,
        keygate_core::Lifetime::parse("1m").ok()
    );
    store
        .record_usage(&[
            used(&old.id, at(5), at(20), 3),
            used(&successor.id, at(30), at(40), 0),
        ])
        .await
        .expect("usage");
    let got = store.get(&old.id).await.expect("get").expect("present");
    assert_eq!(
        (got.uses_since_rotation, got.last_used_at),
        (3, Some(at(20)))
    );
    let mut changes = store.watch().await.expect("watch");
    let no = |_: &KeyRecord| None;
    assert_eq!(
        store
            .retire(&old.id, &no, at(50), &audit())
            .await
            .expect("retire"),
        None
    );
    assert_eq!(store.get(&old.id).await.expect("get"), Some(got.clone()));
    let yes = |r: &KeyRecord| {
        (r.uses_since_rotation == 3)
            .then(|| {
                json!({"successor_first_used_at": at(30)})
                    .as_object()
                    .cloned()
            })
            .flatten()
    };
    let retired = store
        .retire(&old.id, &yes, at(60), &audit())
        .await
        .expect("retire")
        .expect("retired");
    assert_eq!(retired.expires_at, Some(at(60)));
    assert_eq!(store.get(&old.id).await.expect("get"), Some(retired));
    expect_change(&mut changes, &old.hash).await;
    let trail = store
        .list_audit(&AuditQuery {
            key_id: Some(old.id.clone()),
            kind: Some(keygate_core::EventKind::KeyRetired),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(trail.items.len(), 1);
    let details = &trail.items[0].details;
    assert_eq!(details["successor_first_used_at"], json!(at(30)));
    assert!(details.contains_key("expires_at"), "{details:?}");
    assert!(matches!(
        store
            .retire(&KeyId::generate(at(0)), &yes, at(60), &audit())
            .await,
        Err(StoreError::NotFound)
    ));
}

/// An owner's contacts are set (with `owner.updated`), replaced and removed; an emailed event
/// about one of its keys queues one email per contact in the event's transaction (and none
/// for other events, other owners' keys or keys without an owner); attempts are recorded.
pub async fn owners_get_emails_written_with_their_events(store: Arc<dyn Store>) {
    use crate::Attempt;
    use keygate_core::email::Contacts;
    use keygate_core::webhook::DeliveryStatus;
    let emails = vec!["ops@example.com".to_owned(), "dev@example.com".to_owned()];
    let contacts = Contacts {
        emails: emails.clone(),
        digest: false,
    };
    store
        .set_owner("acct_42", &contacts, at(0), &audit())
        .await
        .expect("set");
    assert_eq!(
        store.owner_contacts("acct_42").await.expect("get"),
        contacts
    );
    assert!(
        store
            .owner_contacts("acct_7")
            .await
            .expect("get")
            .emails
            .is_empty()
    );
    let mine = record("mine", Some("acct_42"), at(1));
    let theirs = record("theirs", Some("acct_7"), at(2));
    let nobodys = record("nobody's", None, at(3));
    for r in [&mine, &theirs, &nobodys] {
        store.create(r, &audit()).await.expect("create");
    }
    assert!(
        store.due_emails(at(10), 100).await.expect("due").is_empty(),
        "key.created is not mailed"
    );
    for r in [&mine, &theirs, &nobodys] {
        store
            .revoke(&r.id, at(20), Some("leaked".into()), &audit())
            .await
            .expect("revoke");
    }
    let due = store.due_emails(at(30), 100).await.expect("due");
    let mut to: Vec<&str> = due.iter().map(|e| e.recipient.as_str()).collect();
    to.sort_unstable();
    assert_eq!(to, ["dev@example.com", "ops@example.com"]);
    assert!(due[0].subject.contains("key.revoked") && due[0].text.contains("leaked"));
    assert!(due[0].text.contains(mine.id.as_str()));
    assert!(
        store.due_emails(at(10), 100).await.expect("due").is_empty(),
        "not before its time"
    );
    let failed = Attempt {
        at: at(31),
        delivered: false,
        status: None,
        error: Some("connection refused".into()),
        next_attempt_at: Some(at(1_031)),
    };
    store
        .finish_email(due[0].id, &failed)
        .await
        .expect("attempt");
    let sent = Attempt {
        at: at(32),
        delivered: true,
        status: None,
        error: None,
        next_attempt_at: None,
    };
    store.finish_email(due[1].id, &sent).await.expect("attempt");
    store
        .finish_email(due[1].id, &failed)
        .await
        .expect("no-op once sent");
    let due_later = store.due_emails(at(1_031), 100).await.expect("due");
    assert_eq!(due_later.len(), 1);
    assert_eq!(due_later[0].attempts, 1);
    assert_eq!(
        due_later[0].last_error.as_deref(),
        Some("connection refused")
    );
    let log = store
        .list_emails(&crate::EmailQuery::default())
        .await
        .expect("log")
        .items;
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].status, DeliveryStatus::Delivered);
    assert_eq!(log[0].sent_at, Some(at(32)));
    // As a digest: notices wait for the next 00:00 UTC, and are listed apart.
    let digest = Contacts {
        emails: vec!["ops@example.com".to_owned()],
        digest: true,
    };
    store
        .set_owner("acct_42", &digest, at(35), &audit())
        .await
        .expect("digest");
    assert_eq!(store.owner_contacts("acct_42").await.expect("get"), digest);
    let later = record("later", Some("acct_42"), at(36));
    store.create(&later, &audit()).await.expect("create");
    store
        .revoke(&later.id, at(37), None, &audit())
        .await
        .expect("revoke");
    let midnight = keygate_core::email::digest_due(at(37));
    assert!(
        store
            .due_digest_notices(at(38), 10)
            .await
            .expect("due")
            .is_empty()
    );
    assert!(
        store
            .due_emails(midnight, 100)
            .await
            .expect("due")
            .iter()
            .all(|e| e.id != log[0].id + 1),
        "a digest notice is not a single email"
    );
    let notices = store.due_digest_notices(midnight, 10).await.expect("due");
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].next_attempt_at, midnight);
    // Removed: no more emails.
    store
        .set_owner("acct_42", &Contacts::default(), at(40), &audit())
        .await
        .expect("remove");
    assert!(
        store
            .owner_contacts("acct_42")
            .await
            .expect("get")
            .emails
            .is_empty()
    );
    let trail = store
        .list_audit(&AuditQuery {
            kind: Some(keygate_core::EventKind::OwnerUpdated),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(trail.items.len(), 3);
    assert_eq!(trail.items[0].details["owner"], "acct_42");
}

/// With operators per event type, an emailed event queues one email per address — a key
/// owner's contact that is also an operator gets one — each naming its event, key and owner
/// and linking to the key's page under the public URL; keys without an owner reach operators
/// only. The log lists them newest first, filtered by state, recipient (any case) and owner,
/// in pages.
pub async fn operators_get_emails_once_and_the_log_pages_by_filter(store: Arc<dyn Store>) {
    use crate::{Attempt, EmailQuery};
    use keygate_core::email::{Contacts, EmailRouting, Operators};
    use keygate_core::webhook::DeliveryStatus;
    let security = [
        "security@example.com".to_owned(),
        "OPS@example.com".to_owned(),
    ];
    let all = ["audit@example.com".to_owned()];
    let operators =
        Operators::from_entries([("key.revoked", &security[..]), ("*", &all[..])], false)
            .expect("operators");
    store.set_email_routing(EmailRouting {
        operators,
        public_url: Some("https://keys.example.com".into()),
    });
    let contacts = Contacts {
        emails: vec!["ops@example.com".to_owned(), "dev@example.com".to_owned()],
        digest: false,
    };
    store
        .set_owner("acct_42", &contacts, at(0), &audit())
        .await
        .expect("set");
    let mine = record("mine", Some("acct_42"), at(1));
    let nobodys = record("nobody's", None, at(2));
    for r in [&mine, &nobodys] {
        store.create(r, &audit()).await.expect("create");
        store
            .revoke(&r.id, at(10), None, &audit())
            .await
            .expect("revoke");
    }
    let due = store.due_emails(at(10), 100).await.expect("due");
    let to = |key: &KeyRecord| {
        let mut to: Vec<String> = due
            .iter()
            .filter(|e| e.key_id.as_deref() == Some(key.id.as_str()))
            .map(|e| e.recipient.to_ascii_lowercase())
            .collect();
        to.sort_unstable();
        to
    };
    assert_eq!(
        to(&mine),
        [
            "audit@example.com",
            "dev@example.com",
            "ops@example.com",
            "security@example.com"
        ],
        "ops@ is a contact and an operator: one email"
    );
    assert_eq!(
        to(&nobodys),
        [
            "audit@example.com",
            "ops@example.com",
            "security@example.com"
        ]
    );
    for email in &due {
        assert_eq!(email.event, EventKind::KeyRevoked);
        assert!(!email.digest);
        let key = email.key_id.as_deref().expect("key id");
        assert!(
            email
                .text
                .contains(&format!("https://keys.example.com/admin/keys/{key}")),
            "{}",
            email.text
        );
        assert!(email.html.contains("https://keys.example.com/admin/keys/"));
        let owner = (key == mine.id.as_str()).then_some("acct_42");
        assert_eq!(email.owner.as_deref(), owner);
    }
    let sent = Attempt {
        at: at(11),
        delivered: true,
        status: None,
        error: None,
        next_attempt_at: None,
    };
    let mine_ids: Vec<i64> = due
        .iter()
        .filter(|e| e.owner.is_some())
        .map(|e| e.id)
        .collect();
    for id in &mine_ids {
        store.finish_email(*id, &sent).await.expect("attempt");
    }

    let all_of = |query: EmailQuery| {
        let store = store.clone();
        async move { store.list_emails(&query).await.expect("log") }
    };
    let page = all_of(EmailQuery::default()).await;
    assert_eq!(page.items.len(), 7);
    assert!(page.next_cursor.is_none());
    assert!(
        page.items.windows(2).all(|w| w[0].id > w[1].id),
        "newest first"
    );
    let owned = all_of(EmailQuery {
        owner: Some("acct_42".into()),
        ..EmailQuery::default()
    })
    .await;
    assert_eq!(owned.items.len(), 4);
    assert!(
        owned
            .items
            .iter()
            .all(|e| e.status == DeliveryStatus::Delivered)
    );
    let pending = all_of(EmailQuery {
        status: Some(DeliveryStatus::Pending),
        ..EmailQuery::default()
    })
    .await;
    assert_eq!(pending.items.len(), 3);
    let to_ops = all_of(EmailQuery {
        recipient: Some("Ops@Example.COM".into()),
        ..EmailQuery::default()
    })
    .await;
    assert_eq!(to_ops.items.len(), 2, "matched without regard to case");
    // Pages of 3: 3, 3, 1, each once.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = all_of(EmailQuery {
            limit: 3,
            cursor: cursor.clone(),
            ..EmailQuery::default()
        })
        .await;
        seen.extend(page.items.iter().map(|e| e.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, page.items.iter().map(|e| e.id).collect::<Vec<_>>());
    assert!(matches!(
        store
            .list_emails(&EmailQuery {
                cursor: Some("x".into()),
                ..EmailQuery::default()
            })
            .await,
        Err(StoreError::InvalidCursor)
    ));
    // Operators on the digest: an address that is also a contact (not on the digest) still
    // gets its email at once; the others wait.
    let operators = Operators::from_entries([("*", &security[..])], true).expect("operators");
    store.set_email_routing(EmailRouting {
        operators,
        public_url: None,
    });
    let later = record("later", Some("acct_42"), at(20));
    store.create(&later, &audit()).await.expect("create");
    store
        .revoke(&later.id, at(21), None, &audit())
        .await
        .expect("revoke");
    let now_due: Vec<String> = store
        .due_emails(at(21), 100)
        .await
        .expect("due")
        .into_iter()
        .filter(|e| e.event_seq > page.items[0].event_seq)
        .map(|e| {
            assert!(!e.text.contains("/admin/keys/"), "no public URL, no link");
            e.recipient.to_ascii_lowercase()
        })
        .collect();
    let mut now_due = now_due;
    now_due.sort_unstable();
    assert_eq!(now_due, ["dev@example.com", "ops@example.com"]);
    let midnight = keygate_core::email::digest_due(at(21));
    let notices = store.due_digest_notices(midnight, 10).await.expect("due");
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].recipient, "security@example.com");
    assert!(notices[0].digest);
}

/// A watcher hears about creates, updates and revokes (by hash), and not about usage batches.
pub async fn watchers_see_every_change(store: Arc<dyn Store>) {
    let mut changes = store.watch().await.expect("watch");
    let r = record("watched", None, at(0));
    store.create(&r, &audit()).await.expect("create");
    expect_change(&mut changes, &r.hash).await;
    let patch = KeyPatch {
        enabled: Some(false),
        ..KeyPatch::default()
    };
    store
        .update(&r.id, patch, now(), &audit())
        .await
        .expect("update");
    expect_change(&mut changes, &r.hash).await;
    store
        .record_usage(&[used(&r.id, at(5), at(5), 0)])
        .await
        .expect("usage");
    store
        .revoke(&r.id, at(9), None, &audit())
        .await
        .expect("revoke");
    expect_change(&mut changes, &r.hash).await;
    // A failed change announces nothing.
    let _ = store.revoke(&r.id, at(10), None, &audit()).await;
    let other = record("other", None, at(1));
    store.create(&other, &audit()).await.expect("create");
    expect_change(&mut changes, &other.hash).await;
}

async fn expect_change(
    changes: &mut tokio::sync::mpsc::Receiver<Change>,
    hash: &keygate_core::KeyHash,
) {
    let deadline = std::time::Duration::from_secs(5);
    match tokio::time::timeout(deadline, changes.recv()).await {
        Ok(Some(Change::Key(h))) => assert_eq!(&h, hash, "changes arrive in order, one each"),
        other => panic!("expected a change for the key, got {other:?}"),
    }
}

/// `create_if_empty` from many tasks at once on an empty store: exactly one key is stored.
pub async fn only_one_first_key(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .create_if_empty(&record(&format!("admin {i}"), None, at(i)), &audit())
                .await
        }));
    }
    let mut created = 0;
    for t in tasks {
        if t.await.expect("task").expect("create_if_empty") {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    assert_eq!(
        store.count_by_status(now()).await.expect("count").total(),
        1
    );
    assert!(
        !store
            .create_if_empty(&record("late", None, at(9)), &audit())
            .await
            .expect("again")
    );
}

/// Creates, updates and revokes leave one event each, in order, with actor, request id and
/// the changed fields; failed changes leave none; filters and pages work.
pub async fn every_change_is_in_the_audit_trail(store: Arc<dyn Store>) {
    let r = record("audited", Some("acct_1"), at(0));
    store.create(&r, &audit()).await.expect("create");
    let patch = KeyPatch {
        name: Some("audited v2".into()),
        ..KeyPatch::default()
    };
    store
        .update(&r.id, patch, at(5), &Audit::by(Actor::Cli))
        .await
        .expect("update");
    store
        .revoke(&r.id, at(9), Some("leaked".into()), &audit())
        .await
        .expect("revoke");
    assert!(matches!(
        store.revoke(&r.id, at(10), None, &audit()).await,
        Err(StoreError::Record(RecordError::AlreadyRevoked))
    ));
    let other = record("other", None, at(1));
    store.create(&other, &audit()).await.expect("create");

    let all = store
        .list_audit(&AuditQuery::default())
        .await
        .expect("audit");
    let kinds: Vec<(EventKind, Option<KeyId>)> = all
        .items
        .iter()
        .map(|e| (e.kind, e.key_id.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (EventKind::KeyCreated, Some(r.id.clone())),
            (EventKind::KeyUpdated, Some(r.id.clone())),
            (EventKind::KeyRevoked, Some(r.id.clone())),
            (EventKind::KeyCreated, Some(other.id.clone())),
        ]
    );
    let [created, updated, revoked, _] = &all.items[..] else {
        unreachable!()
    };
    assert_eq!(
        (created.actor.as_str(), created.request_id.as_deref()),
        ("library", Some("conformance"))
    );
    assert_eq!(created.details["name"], "audited");
    assert_eq!(
        (updated.actor.as_str(), updated.request_id.as_deref()),
        ("cli", None)
    );
    assert_eq!(updated.at, at(5));
    assert_eq!(updated.details["name"]["to"], "audited v2");
    assert_eq!(updated.details.len(), 1);
    assert_eq!(revoked.details["revoked_reason"]["to"], "leaked");
    assert!(created.seq < updated.seq && updated.seq < revoked.seq);

    let mine = AuditQuery {
        key_id: Some(r.id.clone()),
        ..AuditQuery::default()
    };
    assert_eq!(store.list_audit(&mine).await.expect("audit").items.len(), 3);
    let revocations = AuditQuery {
        kind: Some(EventKind::KeyRevoked),
        ..AuditQuery::default()
    };
    assert_eq!(
        store
            .list_audit(&revocations)
            .await
            .expect("audit")
            .items
            .len(),
        1
    );
    let recent = AuditQuery {
        since: Some(at(5)),
        ..AuditQuery::default()
    };
    assert_eq!(
        store.list_audit(&recent).await.expect("audit").items.len(),
        2
    );
    let mut paged = AuditQuery {
        limit: 3,
        ..AuditQuery::default()
    };
    let first = store.list_audit(&paged).await.expect("audit");
    assert_eq!(first.items.len(), 3);
    paged.cursor = first.next_cursor;
    let second = store.list_audit(&paged).await.expect("audit");
    assert_eq!((second.items.len(), second.next_cursor), (1, None));
    paged.cursor = Some("not a cursor".into());
    assert!(matches!(
        store.list_audit(&paged).await,
        Err(StoreError::InvalidCursor)
    ));
    // Newest first, paged, gives the same events in reverse.
    let mut backwards = AuditQuery {
        limit: 3,
        newest_first: true,
        ..AuditQuery::default()
    };
    let newest = store.list_audit(&backwards).await.expect("audit");
    backwards.cursor = newest.next_cursor.clone();
    let older = store.list_audit(&backwards).await.expect("audit");
    assert_eq!(older.next_cursor, None);
    let reversed: Vec<i64> = newest
        .items
        .iter()
        .chain(&older.items)
        .map(|e| e.seq)
        .collect();
    let mut forwards: Vec<i64> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|e| e.seq)
        .collect();
    forwards.reverse();
    assert_eq!(reversed, forwards);
}

/// A rotation writes the old key's new state and its successor together, with both events;
/// a refused rotation writes nothing.
pub async fn rotation_is_one_atomic_step(store: Arc<dyn Store>) {
    use keygate_core::{Prefix, generate, plan_rotation};
    let old = record("rotating", Some("acct"), at(0));
    store.create(&old, &audit()).await.expect("create");
    let new_key = generate(&Prefix::default());
    let new_id = KeyId::generate(at(100));
    let plan = |r: &KeyRecord| plan_rotation(r, &new_key, new_id.clone(), at(100), 5_000);
    let (old_after, new) = store
        .rotate(&old.id, &plan, at(100), &audit(), None)
        .await
        .expect("rotate");
    assert_eq!(old_after.rotated_to.as_ref(), Some(&new.id));
    assert_eq!(old_after.expires_at, Some(at(5_100)));
    assert_eq!(new.rotated_from.as_ref(), Some(&old.id));
    assert_eq!(
        store.get(&old.id).await.expect("get"),
        Some(old_after.clone())
    );
    assert_eq!(
        store.find_by_hash(&new_key.hash()).await.expect("find"),
        Some(new.clone())
    );
    let trail = store
        .list_audit(&AuditQuery::default())
        .await
        .expect("audit");
    let kinds: Vec<EventKind> = trail.items.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::KeyCreated,
            EventKind::KeyRotated,
            EventKind::KeyCreated
        ]
    );
    assert_eq!(
        trail.items[1].details["rotated_to"]["to"],
        serde_json::json!(new.id)
    );
    assert_eq!(
        trail.items[2].details["rotated_from"],
        serde_json::json!(old.id)
    );

    // Rotating it again (or a revoked key, or an unknown one) is refused and writes nothing.
    let again_key = generate(&Prefix::default());
    let again = |r: &KeyRecord| plan_rotation(r, &again_key, KeyId::generate(at(200)), at(200), 0);
    assert!(matches!(
        store.rotate(&old.id, &again, at(200), &audit(), None).await,
        Err(StoreError::Record(RecordError::AlreadyRotated))
    ));
    assert!(matches!(
        store
            .rotate(&KeyId::generate(at(0)), &again, at(200), &audit(), None)
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store.find_by_hash(&again_key.hash()).await.expect("find"),
        None
    );
    assert_eq!(
        store
            .list_audit(&AuditQuery::default())
            .await
            .expect("audit")
            .items
            .len(),
        3
    );
}

/// Several senders (nodes) read the same due rows; each row is claimed by exactly one of them
/// right before it is sent, and is due again only when that claim's lease ends (the sender
/// died) or when the attempt is recorded.
pub async fn outbox_rows_are_claimed_by_one_sender_until_the_lease_ends(store: Arc<dyn Store>) {
    use crate::Attempt;
    use keygate_core::email::Contacts;
    let contacts = Contacts {
        emails: vec!["ops@example.com".to_owned()],
        digest: false,
    };
    store
        .set_owner("acct_42", &contacts, at(0), &audit())
        .await
        .expect("set");
    store
        .create_endpoint(&endpoint("whk_all", &["key.revoked"]), &audit())
        .await
        .expect("endpoint");
    let key = record("claimed", Some("acct_42"), at(1));
    store.create(&key, &audit()).await.expect("create");
    store
        .revoke(&key.id, at(2), None, &audit())
        .await
        .expect("revoke");
    let email = store.due_emails(at(10), 100).await.expect("due")[0].id;
    let delivery = store.due_deliveries(at(10), 100).await.expect("due")[0].id;

    // Two senders race for each row: exactly one wins.
    let (a, b) = tokio::join!(
        store.claim_email(email, at(10), at(70)),
        store.claim_email(email, at(10), at(70))
    );
    assert_eq!(
        u8::from(a.expect("claim")) + u8::from(b.expect("claim")),
        1,
        "one sender"
    );
    let (a, b) = tokio::join!(
        store.claim_delivery(delivery, at(10), at(40)),
        store.claim_delivery(delivery, at(10), at(40))
    );
    assert_eq!(
        u8::from(a.expect("claim")) + u8::from(b.expect("claim")),
        1,
        "one sender"
    );
    // Held until the lease ends: not due, not claimable.
    assert!(store.due_emails(at(69), 100).await.expect("due").is_empty());
    assert!(
        !store
            .claim_email(email, at(69), at(129))
            .await
            .expect("claim")
    );
    assert!(
        store
            .due_deliveries(at(39), 100)
            .await
            .expect("due")
            .is_empty()
    );
    // The claiming sender died: due again when the lease ends, once more to one sender.
    assert_eq!(store.due_emails(at(70), 100).await.expect("due").len(), 1);
    assert!(
        store
            .claim_email(email, at(70), at(130))
            .await
            .expect("claim")
    );
    // The attempt is recorded: no longer pending, never claimed again.
    let sent = Attempt {
        at: at(71),
        status: None,
        error: None,
        delivered: true,
        next_attempt_at: None,
    };
    store.finish_email(email, &sent).await.expect("finish");
    assert!(
        !store
            .claim_email(email, at(500), at(560))
            .await
            .expect("claim")
    );
    assert!(
        store
            .due_emails(at(500), 100)
            .await
            .expect("due")
            .is_empty()
    );
    // A failed attempt sets its retry time; the claim does not outlive it.
    let retry = Attempt {
        at: at(41),
        status: Some(503),
        error: Some("503".into()),
        delivered: false,
        next_attempt_at: Some(at(45)),
    };
    store
        .finish_attempt(delivery, &retry)
        .await
        .expect("finish");
    assert_eq!(
        store.due_deliveries(at(45), 100).await.expect("due").len(),
        1
    );
    // A row that does not exist, or is not due yet, is not claimed.
    assert!(
        !store
            .claim_delivery(delivery, at(44), at(100))
            .await
            .expect("claim")
    );
    assert!(
        !store
            .claim_email(i64::MAX, at(500), at(560))
            .await
            .expect("claim")
    );
}

/// Every audit event queues one delivery per enabled endpoint that wants its type, in the same
/// transaction; attempts are recorded; the log lists them.
pub async fn events_fill_the_webhook_outbox(store: Arc<dyn Store>) {
    use crate::Attempt;
    use keygate_core::webhook::{DeliveryStatus, Endpoint};
    let endpoint = |id: &str, events: &[&str], slack: bool, enabled: bool| Endpoint {
        slack,
        enabled,
        ..endpoint(id, events)
    };
    store
        .create_endpoint(
            &endpoint("whk_rotations", &["key.rotated"], false, true),
            &audit(),
        )
        .await
        .expect("endpoint");
    store
        .create_endpoint(&endpoint("whk_slack", &["*"], true, true), &audit())
        .await
        .expect("endpoint");
    store
        .create_endpoint(&endpoint("whk_off", &["*"], false, false), &audit())
        .await
        .expect("endpoint");
    assert_eq!(store.list_endpoints().await.expect("endpoints").len(), 3);
    // Adding endpoints is itself an event (`webhook.created`): whk_slack hears about itself
    // and whk_off. Deliver those, to start from an empty outbox.
    let setup = store.due_deliveries(at(5), 100).await.expect("due");
    assert_eq!(setup.len(), 2);
    assert!(
        setup
            .iter()
            .all(|d| d.endpoint_id == "whk_slack" && !d.payload.contains("whsec_"))
    );
    for d in &setup {
        let ok = Attempt {
            at: at(5),
            delivered: true,
            status: Some(200),
            error: None,
            next_attempt_at: None,
        };
        store.finish_attempt(d.id, &ok).await.expect("attempt");
    }

    let r = record("hooked", None, at(0));
    store.create(&r, &audit()).await.expect("create");
    let due = store.due_deliveries(at(10), 100).await.expect("due");
    assert_eq!(
        due.iter()
            .map(|d| d.endpoint_id.as_str())
            .collect::<Vec<_>>(),
        ["whk_slack"]
    );
    let slack: serde_json::Value = serde_json::from_str(&due[0].payload).expect("json");
    assert!(
        slack["text"]
            .as_str()
            .expect("text")
            .contains("key.created")
    );
    assert_eq!(due[0].url, "http://127.0.0.1:9/whk_slack");

    let new_key = keygate_core::generate(&keygate_core::Prefix::default());
    let plan = |old: &KeyRecord| {
        keygate_core::plan_rotation(old, &new_key, KeyId::generate(at(20)), at(20), 0)
    };
    store
        .rotate(&r.id, &plan, at(20), &audit(), None)
        .await
        .expect("rotate");
    let due = store.due_deliveries(at(30), 100).await.expect("due");
    let to_rotations: Vec<_> = due
        .iter()
        .filter(|d| d.endpoint_id == "whk_rotations")
        .collect();
    assert_eq!(to_rotations.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&to_rotations[0].payload).expect("json");
    assert_eq!(body["type"], "key.rotated");
    assert_eq!(body["data"]["key_id"], serde_json::json!(r.id));
    assert_eq!(body["data"]["seq"], to_rotations[0].event_seq);
    assert_eq!(
        due.len(),
        4,
        "slack: created, rotated, created; rotations: rotated"
    );
    assert!(!due.iter().any(|d| d.endpoint_id == "whk_off"));

    // A failed attempt waits for its retry; a success ends it; a give-up marks it failed.
    let first = due[0].id;
    let failed = Attempt {
        at: at(31),
        delivered: false,
        status: Some(500),
        error: None,
        next_attempt_at: Some(at(1_031)),
    };
    store.finish_attempt(first, &failed).await.expect("attempt");
    assert!(
        !store
            .due_deliveries(at(32), 100)
            .await
            .expect("due")
            .iter()
            .any(|d| d.id == first)
    );
    assert!(
        store
            .due_deliveries(at(1_031), 100)
            .await
            .expect("due")
            .iter()
            .any(|d| d.id == first)
    );
    let ok = Attempt {
        at: at(1_032),
        delivered: true,
        status: Some(204),
        error: None,
        next_attempt_at: None,
    };
    store.finish_attempt(first, &ok).await.expect("attempt");
    store
        .finish_attempt(first, &failed)
        .await
        .expect("a late attempt changes nothing");
    let log = store.list_deliveries("whk_slack", 10).await.expect("log");
    let done = log.iter().find(|d| d.id == first).expect("in the log");
    assert_eq!(
        (done.status, done.attempts, done.last_status),
        (DeliveryStatus::Delivered, 2, Some(204))
    );
    assert_eq!(done.delivered_at, Some(at(1_032)));
    let give_up = Attempt {
        at: at(40),
        delivered: false,
        status: None,
        error: Some("refused".into()),
        next_attempt_at: None,
    };
    store
        .finish_attempt(to_rotations[0].id, &give_up)
        .await
        .expect("attempt");
    let log = store
        .list_deliveries("whk_rotations", 10)
        .await
        .expect("log");
    assert_eq!(
        (log[0].status, log[0].last_error.as_deref()),
        (DeliveryStatus::Failed, Some("refused"))
    );
}

/// An endpoint's URL and events change (with `webhook.updated`); disabled, it gets no new
/// deliveries and its pending ones wait; enabled again, they are due; deleted, its deliveries
/// go with it and the pending ones are counted in `webhook.deleted`.
pub async fn endpoints_change_are_held_and_go_with_their_deliveries(store: Arc<dyn Store>) {
    use keygate_core::webhook::{Endpoint, EndpointPatch};
    let endpoint = Endpoint {
        id: "whk_changing".into(),
        url: "http://127.0.0.1:9/a".into(),
        events: vec!["key.created".into()],
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        slack: false,
        enabled: true,
        created_at: at(0),
        receives_secrets: false,
    };
    store
        .create_endpoint(&endpoint, &audit())
        .await
        .expect("endpoint");
    let missing = store
        .update_endpoint("whk_none", &EndpointPatch::default(), at(1), &audit())
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
    assert!(matches!(
        store.delete_endpoint("whk_none", at(1), &audit()).await,
        Err(StoreError::NotFound)
    ));

    let changed = store
        .update_endpoint(
            "whk_changing",
            &EndpointPatch {
                url: Some("http://127.0.0.1:9/b".into()),
                events: Some(vec!["key.created".into(), "key.revoked".into()]),
                enabled: None,
            },
            at(2),
            &audit(),
        )
        .await
        .expect("update");
    assert_eq!(changed.url, "http://127.0.0.1:9/b");
    assert_eq!(store.list_endpoints().await.expect("list")[0], changed);
    store
        .create(&record("one", None, at(3)), &audit())
        .await
        .expect("create");
    let due = store.due_deliveries(at(4), 100).await.expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].url, "http://127.0.0.1:9/b", "sent to the new URL");

    let off = EndpointPatch {
        enabled: Some(false),
        ..EndpointPatch::default()
    };
    let disabled = store
        .update_endpoint("whk_changing", &off, at(5), &audit())
        .await
        .expect("disable");
    assert!(!disabled.enabled);
    assert!(
        store
            .due_deliveries(at(6), 100)
            .await
            .expect("due")
            .is_empty(),
        "a disabled endpoint's pending delivery waits"
    );
    store
        .create(&record("two", None, at(7)), &audit())
        .await
        .expect("create");
    assert_eq!(
        store
            .list_deliveries("whk_changing", 100)
            .await
            .expect("log")
            .len(),
        1,
        "no new delivery while disabled"
    );
    let on = EndpointPatch {
        enabled: Some(true),
        ..EndpointPatch::default()
    };
    store
        .update_endpoint("whk_changing", &on, at(8), &audit())
        .await
        .expect("enable");
    assert_eq!(
        store.due_deliveries(at(9), 100).await.expect("due").len(),
        1
    );

    let (gone, dropped) = store
        .delete_endpoint("whk_changing", at(10), &audit())
        .await
        .expect("delete");
    assert_eq!((gone.id.as_str(), dropped), ("whk_changing", 1));
    assert!(store.list_endpoints().await.expect("list").is_empty());
    assert!(
        store
            .due_deliveries(at(11), 100)
            .await
            .expect("due")
            .is_empty()
    );
    assert!(
        store
            .list_deliveries("whk_changing", 100)
            .await
            .expect("log")
            .is_empty()
    );
    let trail = store
        .list_audit(&AuditQuery::default())
        .await
        .expect("audit");
    let kinds: Vec<&str> = trail.items.iter().map(|e| e.kind.as_str()).collect();
    for kind in [
        "webhook.updated",
        "webhook.disabled",
        "webhook.enabled",
        "webhook.deleted",
    ] {
        assert_eq!(
            kinds.iter().filter(|k| **k == kind).count(),
            1,
            "{kind} in {kinds:?}"
        );
    }
    let deleted = trail
        .items
        .iter()
        .find(|e| e.kind.as_str() == "webhook.deleted")
        .expect("deleted");
    assert_eq!(deleted.details["dropped_pending"], 1);
    assert!(
        !serde_json::to_string(&trail.items)
            .expect("json")
            .contains("whsec_")
    );
}

/// A rotation with a sealed successor queues it for the endpoints that receive secrets, and
/// for no other.
pub async fn sealed_successors_go_only_to_secret_endpoints(store: Arc<dyn Store>) {
    use keygate_core::webhook::Endpoint;
    let endpoint = |id: &str, receives_secrets: bool| Endpoint {
        receives_secrets,
        ..endpoint(id, &["key.revoked"])
    };
    store
        .create_endpoint(&endpoint("whk_vault", true), &audit())
        .await
        .expect("endpoint");
    store
        .create_endpoint(&endpoint("whk_plain", false), &audit())
        .await
        .expect("endpoint");
    let r = record("sealed", None, at(0));
    store.create(&r, &audit()).await.expect("create");
    let new_key = keygate_core::generate(&keygate_core::Prefix::default());
    let plan = |old: &KeyRecord| {
        keygate_core::plan_rotation(old, &new_key, KeyId::generate(at(20)), at(20), 0)
    };
    store
        .rotate(&r.id, &plan, at(20), &audit(), Some("sealed:v1:opaque"))
        .await
        .expect("rotate");
    let due = store.due_deliveries(at(30), 100).await.expect("due");
    let sealed: Vec<_> = due
        .iter()
        .filter(|d| d.payload == "sealed:v1:opaque")
        .collect();
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0].endpoint_id, "whk_vault");
    let rotated = store
        .list_audit(&AuditQuery {
            kind: Some(EventKind::KeyRotated),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(sealed[0].event_seq, rotated.items[0].seq);
}

/// The sweep filter lists the keys a sweep may act on — old, expiring soon, recently expired —
/// and not the others (young, long expired, revoked, rotated).
pub async fn the_sweep_filter_reads_only_candidates(store: Arc<dyn Store>) {
    use crate::SweepFilter;
    const HOUR: i64 = 3_600_000;
    let mut keys = Vec::new();
    let mut add = |name: &str, created: i64, expires: Option<i64>| {
        let mut r = record(name, None, at(created));
        r.expires_at = expires.map(at);
        keys.push(r);
    };
    add("old", -100 * HOUR, None);
    add("young", -HOUR, None);
    add("expiring", -HOUR, Some(2 * HOUR));
    add("far", -HOUR, Some(100 * HOUR));
    add("just expired", -HOUR, Some(-HOUR));
    add("long expired", -HOUR, Some(-1000 * HOUR));
    let mut own = record("own max age", None, at(-2 * HOUR));
    own.max_age = keygate_core::Lifetime::from_ms(HOUR);
    keys.push(own);
    let mut revoked = record("revoked", None, at(-100 * HOUR));
    revoked.revoked_at = Some(at(-HOUR));
    keys.push(revoked);
    let mut rotated = record("rotated", None, at(-100 * HOUR));
    rotated.rotated_to = Some(KeyId::generate(at(0)));
    keys.push(rotated);
    let mut grace = record("in grace", None, at(-100 * HOUR));
    grace.rotated_to = Some(KeyId::generate(at(0)));
    grace.rotated_at = Some(at(-HOUR));
    grace.expires_at = Some(at(1000 * HOUR));
    keys.push(grace);
    let mut grace_over = record("grace over", None, at(-100 * HOUR));
    grace_over.rotated_to = Some(KeyId::generate(at(0)));
    grace_over.rotated_at = Some(at(-100 * HOUR));
    grace_over.expires_at = Some(at(-50 * HOUR));
    keys.push(grace_over);
    for r in &keys {
        store.create(r, &audit()).await.expect("create");
    }
    let mut q = ListQuery::new(now());
    q.sweep = Some(SweepFilter {
        max_age_ms: Some(10 * HOUR),
        expiring_until: Some(at(24 * HOUR)),
        expired_since: Some(at(-24 * HOUR)),
        in_grace: false,
    });
    let mut names: Vec<String> = store
        .list(&q)
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|r| r.name)
        .collect();
    names.sort();
    assert_eq!(names, ["expiring", "just expired", "old", "own max age"]);
    q.sweep = Some(SweepFilter {
        in_grace: true,
        ..SweepFilter::default()
    });
    let in_grace: Vec<String> = store
        .list(&q)
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(in_grace, ["in grace"]);
    q.sweep = Some(SweepFilter::default());
    assert!(
        store.list(&q).await.expect("list").items.is_empty(),
        "no condition, no candidate"
    );
}

/// The search text matches a key's name, owner or display start, case-insensitively, with
/// `%` and `_` taken literally.
pub async fn search_matches_name_owner_or_start(store: Arc<dyn Store>) {
    let keys = [
        record("Billing prod", Some("acct_ops"), at(0)),
        record("reports", Some("ACCT_BI"), at(1)),
        record("50% promo", None, at(2)),
    ];
    for key in &keys {
        store.create(key, &audit()).await.expect("create");
    }
    let search = |text: &str| {
        let store = store.clone();
        let mut q = ListQuery::new(now());
        q.search = Some(text.to_owned());
        async move {
            let page = store.list(&q).await.expect("list");
            page.items.into_iter().map(|r| r.name).collect::<Vec<_>>()
        }
    };
    assert_eq!(search("billing").await, ["Billing prod"]);
    assert_eq!(search("acct_").await, ["reports", "Billing prod"]);
    assert_eq!(search("bi").await, ["reports", "Billing prod"]);
    assert_eq!(search("0%").await, ["50% promo"]);
    assert_eq!(search(&keys[1].start).await, ["reports"]);
    assert_eq!(search(&keys[1].start.to_uppercase()).await, ["reports"]);
    assert!(search("nothing like it").await.is_empty());
}

/// An admin-UI user is stored, found by name, replaced (keeping its creation time), and each
/// change leaves an `admin.password_set` event naming the user but not the hash.
pub async fn admin_users_are_set_replaced_and_audited(store: Arc<dyn Store>) {
    use crate::AdminUser;
    assert!(store.get_admin_user("ada").await.expect("get").is_none());
    let user = AdminUser {
        username: "ada".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        read_only: false,
        created_at: at(0),
        updated_at: at(0),
    };
    store.set_admin_user(&user, &audit()).await.expect("set");
    assert_eq!(
        store.get_admin_user("ada").await.expect("get"),
        Some(user.clone())
    );
    assert!(store.get_admin_user("ADA").await.expect("get").is_none());
    let replaced = AdminUser {
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdDI$aGFzaDI".into(),
        read_only: true,
        created_at: at(5),
        updated_at: at(5),
        ..user.clone()
    };
    store
        .set_admin_user(&replaced, &audit())
        .await
        .expect("replace");
    let stored = store
        .get_admin_user("ada")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(stored.created_at, at(0), "creation time kept");
    assert_eq!(stored.updated_at, at(5));
    assert!(stored.read_only);
    assert_eq!(stored.password_hash, replaced.password_hash);
    let q = AuditQuery {
        kind: Some(EventKind::AdminPasswordSet),
        ..AuditQuery::default()
    };
    let events = store.list_audit(&q).await.expect("audit").items;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].details["username"], "ada");
    assert_eq!(events[1].details["read_only"], true);
    assert!(events[1].key_id.is_none());
    let text = serde_json::to_string(&events).expect("json");
    assert!(!text.contains("argon2id"), "no hash in the trail");

    // Listing, by name; removing, audited; removing again finds nobody and writes nothing.
    let bob = AdminUser {
        username: "bob".into(),
        ..user.clone()
    };
    store.set_admin_user(&bob, &audit()).await.expect("set");
    let names: Vec<String> = store
        .list_admin_users()
        .await
        .expect("list")
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["ada", "bob"]);
    assert!(
        store
            .remove_admin_user("ada", at(9), &audit())
            .await
            .expect("remove")
    );
    assert!(store.get_admin_user("ada").await.expect("get").is_none());
    assert!(
        !store
            .remove_admin_user("ada", at(10), &audit())
            .await
            .expect("remove")
    );
    let removed = store
        .list_audit(&AuditQuery {
            kind: Some(EventKind::AdminUserRemoved),
            ..AuditQuery::default()
        })
        .await
        .expect("audit")
        .items;
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].details["username"], "ada");
    assert_eq!(removed[0].at, at(9));
    assert_eq!(store.list_admin_users().await.expect("list").len(), 1);
}

/// Sessions are stored by id, touched forward only, ended with their messages, purged when
/// idle or old; each message is taken once, in order.
pub async fn admin_sessions_live_end_and_hand_out_messages_once(store: Arc<dyn Store>) {
    use crate::AdminSession;
    use crate::Principal;
    let session = |n: u8, principal: Principal, created: i64| AdminSession {
        id: [n; 32],
        principal,
        csrf: format!("csrf-{n}"),
        created_at: at(created),
        last_seen_at: at(created),
    };
    let key = session(1, Principal::Key(KeyId::generate(now())), 0);
    let user = session(
        2,
        Principal::User {
            name: "ada".into(),
            since: at(-5),
        },
        1_000,
    );
    for s in [&key, &user] {
        store.create_session(s).await.expect("create");
        assert_eq!(
            store.get_session(&s.id).await.expect("get").as_ref(),
            Some(s)
        );
    }
    assert!(
        matches!(store.create_session(&key).await, Err(StoreError::Duplicate)),
        "ids are unique"
    );
    assert!(store.get_session(&[9; 32]).await.expect("get").is_none());

    store.touch_session(&key.id, at(500)).await.expect("touch");
    store.touch_session(&key.id, at(100)).await.expect("touch");
    let touched = store
        .get_session(&key.id)
        .await
        .expect("get")
        .expect("live");
    assert_eq!(touched.last_seen_at, at(500), "never backwards");

    store.push_flash(&key.id, "first").await.expect("flash");
    store.push_flash(&key.id, "second").await.expect("flash");
    store.push_flash(&user.id, "theirs").await.expect("flash");
    let (a, b) = tokio::join!(store.take_flashes(&key.id), store.take_flashes(&key.id));
    let mut taken = a.expect("take");
    taken.extend(b.expect("take"));
    assert_eq!(taken, ["first", "second"], "each once, in order");
    assert!(store.take_flashes(&key.id).await.expect("take").is_empty());

    // Ending a session drops it and its messages.
    store.end_session(&user.id).await.expect("end");
    assert!(store.get_session(&user.id).await.expect("get").is_none());
    assert!(store.take_flashes(&user.id).await.expect("take").is_empty());

    // Purging: idle ones, and ones begun too long ago however active.
    let fresh = session(3, Principal::Key(KeyId::generate(now())), 10_000);
    let old_but_active = session(4, Principal::Key(KeyId::generate(now())), -50_000);
    for s in [&fresh, &old_but_active] {
        store.create_session(s).await.expect("create");
    }
    store
        .touch_session(&old_but_active.id, at(20_000))
        .await
        .expect("touch");
    store
        .push_flash(&key.id, "lost with its session")
        .await
        .expect("flash");
    let purged = store
        .purge_sessions(at(5_000), at(-10_000))
        .await
        .expect("purge");
    assert_eq!(purged, 2, "the idle one (1) and the old one (4)");
    assert!(store.get_session(&key.id).await.expect("get").is_none());
    assert!(
        store
            .get_session(&old_but_active.id)
            .await
            .expect("get")
            .is_none()
    );
    assert!(store.get_session(&fresh.id).await.expect("get").is_some());
    assert!(store.take_flashes(&key.id).await.expect("take").is_empty());
}

/// Sign-in counts: read, planned and written in one transaction, so concurrent attempts are
/// each counted (none lost to a race), and purged once old.
pub async fn sign_in_counts_are_counted_one_attempt_after_another(store: Arc<dyn Store>) {
    use crate::SignInAttempts;
    let subjects = vec!["address:192.0.2.1".to_owned(), "user:ada".to_owned()];
    let count_one = |at: Timestamp| {
        move |read: &[Option<SignInAttempts>]| -> Vec<Option<SignInAttempts>> {
            read.iter()
                .map(|r| {
                    Some(SignInAttempts {
                        failures: r.map_or(0, |r| r.failures) + 1,
                        last_at: Some(at),
                        ..SignInAttempts::default()
                    })
                })
                .collect()
        }
    };
    let first = store
        .count_sign_in(&subjects, &count_one(at(1)))
        .await
        .expect("count");
    assert_eq!(first, vec![None, None]);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        let subjects = subjects.clone();
        tasks.push(tokio::spawn(async move {
            store
                .count_sign_in(&subjects, &count_one(at(2)))
                .await
                .expect("count")
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let seen = store
        .count_sign_in(&subjects, &|read: &[Option<SignInAttempts>]| read.to_vec())
        .await
        .expect("read");
    assert_eq!(seen[0].map(|a| a.failures), Some(21), "no attempt lost");
    assert_eq!(
        seen[1].map(|a| (a.failures, a.last_at)),
        Some((21, Some(at(2))))
    );
    // A plan may lock, count pending attempts, and remove a subject.
    let locked = Some(SignInAttempts {
        failures: 1,
        last_at: Some(at(3)),
        locked_until: Some(at(100)),
        pending: 2,
        pending_since: Some(at(4)),
    });
    store
        .count_sign_in(&subjects, &|_: &[Option<SignInAttempts>]| {
            vec![locked, None]
        })
        .await
        .expect("write");
    let seen = store
        .count_sign_in(&subjects, &|read: &[Option<SignInAttempts>]| read.to_vec())
        .await
        .expect("read");
    assert_eq!(seen, vec![locked, None]);
    // Old counts go, unless they still lock.
    assert_eq!(
        store.purge_sign_in_counts(at(50)).await.expect("purge"),
        0,
        "still locked"
    );
    assert_eq!(store.purge_sign_in_counts(at(101)).await.expect("purge"), 1);
}

/// A server secret is made by whoever asks first; everyone gets that one.
pub async fn server_secrets_are_made_once(store: Arc<dyn Store>) {
    let first = store.server_secret("signin", &[1; 32]).await.expect("make");
    assert_eq!(first, [1; 32]);
    let again = store.server_secret("signin", &[2; 32]).await.expect("read");
    assert_eq!(again, [1; 32], "the first one stays");
    let other = store.server_secret("other", &[3; 32]).await.expect("make");
    assert_eq!(other, [3; 32]);
}

/// A key with a rate limit, an allowlist and `credits` credits refilled monthly on the 1st,
/// set at `set_at`.
fn limited(name: &str, credits: u64, set_at: Timestamp) -> KeyRecord {
    let mut r = record(name, Some("acct_limits"), set_at);
    r.limits.rate = RateLimits::parse("100/1m, 5000/1h").expect("limits");
    r.limits.allowed_ips =
        Some(IpAllowlist::parse(["203.0.113.0/24", "2001:db8::/32"]).expect("ips"));
    let refill = Refill::new(credits, RefillPeriod::Month, Some(1)).expect("refill");
    r.limits.quota = Some(Quota::new(credits, Some(refill), set_at).expect("quota"));
    r
}

/// Limits come back as written, change through a patch, and the change is audited field by
/// field.
pub async fn limits_round_trip_and_change_with_their_events(store: Arc<dyn Store>) {
    let r = limited("limited", 10_000, at(0));
    store.create(&r, &audit()).await.expect("create");
    assert_eq!(store.get(&r.id).await.expect("get").as_ref(), Some(&r));
    assert_eq!(
        store.find_by_hash(&r.hash).await.expect("find").as_ref(),
        Some(&r)
    );
    let patch = KeyPatch {
        rate_limits: Some(RateLimits::parse("10/1s").expect("limits")),
        allowed_ips: Some(None),
        quota: Some(Some(Quota::new(5, None, at(1)).expect("quota"))),
        ..KeyPatch::default()
    };
    let after = store
        .update(&r.id, patch, at(1), &audit())
        .await
        .expect("update");
    assert_eq!(after.limits.rate.to_string(), "10/1s");
    assert_eq!(after.limits.allowed_ips, None);
    assert_eq!(
        after.limits.quota.map(|q| (q.remaining, q.refill)),
        Some((5, None))
    );
    assert_eq!(store.get(&r.id).await.expect("get"), Some(after));
    let events = store
        .list_audit(&AuditQuery {
            key_id: Some(r.id.clone()),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    let updated = events
        .items
        .iter()
        .find(|e| e.kind == EventKind::KeyUpdated)
        .expect("key.updated");
    for field in ["rate_limits", "allowed_ips", "quota"] {
        assert!(
            updated.details.contains_key(field),
            "{field}: {:?}",
            updated.details
        );
    }
}

/// 16 tasks spending one credit at a time from 100: exactly 100 spends succeed, the balance
/// ends at 0, and a short balance is reported without being touched.
pub async fn credits_are_spent_exactly_under_contention(store: Arc<dyn Store>) {
    let r = limited("credits", 100, at(0));
    store.create(&r, &audit()).await.expect("create");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            let id = r.id.clone();
            tokio::spawn(async move {
                let mut spent = 0u64;
                loop {
                    match store.spend_quota(&id, 1).await.expect("spend") {
                        Spend::Spent { .. } => spent += 1,
                        Spend::Short { remaining, .. } => {
                            assert_eq!(remaining, 0);
                            return spent;
                        }
                        Spend::NoQuota => panic!("the key has a quota"),
                    }
                }
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task");
    }
    assert_eq!(total, 100, "every credit spent once, none twice");
    let plain = record("plain", None, at(0));
    store.create(&plain, &audit()).await.expect("create");
    assert_eq!(
        store.spend_quota(&plain.id, 1).await.expect("spend"),
        Spend::NoQuota
    );
    let r2 = limited("costly", 5, at(0));
    store.create(&r2, &audit()).await.expect("create");
    assert_eq!(
        store.spend_quota(&r2.id, 3).await.expect("spend"),
        Spend::Spent { remaining: 2 }
    );
    // Short: the balance, and when the monthly refill is due (the client's Retry-After).
    let quota = r2.limits.quota.expect("a quota");
    assert_eq!(
        store.spend_quota(&r2.id, 3).await.expect("spend"),
        Spend::Short {
            remaining: 2,
            refill_due: quota.next_refill(quota.refilled_at)
        }
    );
    assert!(quota.next_refill(quota.refilled_at).is_some());
    // A quota without a refill: short, and no time to give.
    let mut once = record("once", None, at(0));
    once.limits.quota = Some(Quota::new(1, None, at(0)).expect("quota"));
    store.create(&once, &audit()).await.expect("create");
    assert_eq!(
        store.spend_quota(&once.id, 1).await.expect("spend"),
        Spend::Spent { remaining: 0 }
    );
    assert_eq!(
        store.spend_quota(&once.id, 1).await.expect("spend"),
        Spend::Short {
            remaining: 0,
            refill_due: None
        }
    );
    assert_eq!(
        store.spend_quota(&r2.id, 0).await.expect("spend"),
        Spend::Spent { remaining: 2 }
    );
}

/// Rotating twice: the newest key holds the credits, and both older keys (in their grace
/// periods) spend from it — the credit is never doubled.
pub async fn a_rotation_hands_the_credits_to_the_successor(store: Arc<dyn Store>) {
    let first = limited("rotating", 10, at(0));
    store.create(&first, &audit()).await.expect("create");
    assert!(matches!(
        store.spend_quota(&first.id, 4).await.expect("spend"),
        Spend::Spent { remaining: 6 }
    ));
    let rotate = |id: KeyId, when: Timestamp| {
        let store = store.clone();
        async move {
            let key = keygate_core::generate(&Prefix::default());
            let new_id = KeyId::generate(when);
            let plan =
                move |old: &KeyRecord| plan_rotation(old, &key, new_id.clone(), when, 86_400_000);
            store
                .rotate(&id, &plan, when, &audit(), None)
                .await
                .expect("rotate")
        }
    };
    let (old, second) = rotate(first.id.clone(), at(1)).await;
    assert_eq!(old.limits.quota, None);
    assert_eq!(old.limits.quota_holder.as_ref(), Some(&second.id));
    assert_eq!(
        second.limits.quota.map(|q| q.remaining),
        Some(6),
        "the balance moved"
    );
    assert_eq!(second.limits.rate, first.limits.rate);
    let (_, third) = rotate(second.id.clone(), at(2)).await;
    let first_now = store.get(&first.id).await.expect("get").expect("first");
    assert_eq!(
        first_now.limits.quota_holder.as_ref(),
        Some(&third.id),
        "re-pointed"
    );
    for payer in [
        &first_now,
        &store.get(&second.id).await.expect("get").expect("second"),
    ] {
        assert_eq!(payer.limits.quota_payer(&payer.id), Some(&third.id));
    }
    assert_eq!(
        store.spend_quota(&third.id, 6).await.expect("spend"),
        Spend::Spent { remaining: 0 }
    );
}

/// A due refill sets the balance once per period, with a `key.quota_refilled` event; a second
/// run in the same period refills nothing.
pub async fn refills_happen_once_per_period_with_an_event(store: Arc<dyn Store>) {
    // Set on 2025-12-15, refilled monthly on the 1st: due from 2026-01-01 (the suite's now).
    let set_at = Timestamp::from_unix_ms(1_765_756_800_000).expect("time");
    let r = limited("refilled", 50, set_at);
    store.create(&r, &audit()).await.expect("create");
    store.spend_quota(&r.id, 50).await.expect("spend");
    let not_yet = record("no refill", None, at(0));
    store.create(&not_yet, &audit()).await.expect("create");
    assert_eq!(
        store
            .refill_quotas(at(-1), 100, &audit())
            .await
            .expect("refill"),
        0,
        "not due yet"
    );
    assert_eq!(
        store
            .refill_quotas(at(5), 100, &audit())
            .await
            .expect("refill"),
        1
    );
    assert_eq!(
        store
            .refill_quotas(at(6), 100, &audit())
            .await
            .expect("refill"),
        0,
        "once"
    );
    let after = store.get(&r.id).await.expect("get").expect("key");
    let quota = after.limits.quota.expect("quota");
    assert_eq!((quota.remaining, quota.refilled_at), (50, at(5)));
    let events = store
        .list_audit(&AuditQuery {
            kind: Some(EventKind::KeyQuotaRefilled),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(events.items.len(), 1);
    assert_eq!(events.items[0].key_id.as_ref(), Some(&r.id));
    assert_eq!(events.items[0].details["quota"]["from"]["remaining"], 0);
    assert_eq!(events.items[0].details["quota"]["to"]["remaining"], 50);
}

/// An imported key of drf-api-key's kind: a random placeholder as its hash, its prefix and a
/// real drf-api-key 3.x hash (of `Ab12Cd34.Ef56Gh78Ij90Kl12Mn34Op56Qr78St90`).
fn imported(name: &str, prefix: &str) -> (KeyRecord, LegacyCredential) {
    let mut r = record(name, Some("42"), at(0));
    r.start = prefix.to_owned();
    let mut placeholder = [0u8; 32];
    getrandom::fill(&mut placeholder).expect("random");
    r.hash = KeyHash::from_bytes(placeholder);
    let hash = keygate_core::legacy::LegacyHash::parse(
        "sha512$$5e15f4249a2744c5d25131684e99ba33ad786128576bf542c1eb2fc2491e61ea6004101fd5a781c62afe2c8c23e1f91d687979ff424e74ef171917cb1aa72f53",
    )
    .expect("hash");
    (
        r,
        LegacyCredential {
            prefix: prefix.to_owned(),
            hash,
        },
    )
}

fn origin(table: &str) -> serde_json::Map<String, serde_json::Value> {
    json!({"source": "drf-api-key", "table": table})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// `import` writes a key, its imported credential and one `key.imported` event naming its
/// origin (never the hash); a second import of the same origin writes nothing; the legacy
/// prefix finds it; `imported_kinds` tells the kinds apart.
pub async fn imports_are_written_once_with_their_event(store: Arc<dyn Store>) {
    assert_eq!(
        store.imported_kinds().await.expect("kinds"),
        ImportedKinds::default()
    );
    let (r, legacy) = imported("from drf", "Ab12Cd34");
    let key = ImportedKey {
        record: &r,
        origin_id: "drf-api-key:t:Ab12Cd34".into(),
        origin: origin("t"),
        legacy: Some(legacy.clone()),
    };
    assert!(!store.is_imported(&key.origin_id).await.expect("seen"));
    assert!(store.import(&key, &audit()).await.expect("import"));
    assert!(store.is_imported(&key.origin_id).await.expect("seen"));
    assert_eq!(store.get(&r.id).await.expect("get").as_ref(), Some(&r));
    let found = store
        .find_by_legacy_prefix("Ab12Cd34")
        .await
        .expect("by prefix");
    assert_eq!(found, vec![(r.clone(), legacy.clone())]);
    assert!(
        store
            .find_by_legacy_prefix("Zz99Yy88")
            .await
            .expect("by prefix")
            .is_empty()
    );
    assert_eq!(
        store.imported_kinds().await.expect("kinds"),
        ImportedKinds {
            legacy: true,
            sha256: false
        }
    );

    // the same origin again, even as another record: nothing written
    let (again, _) = imported("from drf, again", "Ab12Cd34");
    let twice = ImportedKey {
        record: &again,
        ..key.clone()
    };
    assert!(!store.import(&twice, &audit()).await.expect("import"));
    assert_eq!(store.get(&again.id).await.expect("get"), None);

    // a key imported by its SHA-256 alone (jsonl)
    let by_hash = record("from jsonl", None, at(1));
    let jsonl = ImportedKey {
        record: &by_hash,
        origin_id: "jsonl:cus_1".into(),
        origin: json!({"source": "jsonl"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        legacy: None,
    };
    assert!(store.import(&jsonl, &audit()).await.expect("import"));
    assert_eq!(
        store.find_by_hash(&by_hash.hash).await.expect("find"),
        Some(by_hash.clone())
    );
    assert_eq!(
        store.imported_kinds().await.expect("kinds"),
        ImportedKinds {
            legacy: true,
            sha256: true
        }
    );
    // a hash taken is a duplicate, and writes nothing
    let mut clash = record("clash", None, at(2));
    clash.hash = by_hash.hash;
    let clashing = ImportedKey {
        record: &clash,
        origin_id: "jsonl:cus_2".into(),
        origin: jsonl.origin.clone(),
        legacy: None,
    };
    assert!(matches!(
        store.import(&clashing, &audit()).await,
        Err(StoreError::Duplicate)
    ));
    assert!(!store.is_imported("jsonl:cus_2").await.expect("seen"));

    let events = store
        .list_audit(&AuditQuery {
            kind: Some(EventKind::KeyImported),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(events.items.len(), 2);
    assert_eq!(events.items[0].key_id.as_ref(), Some(&r.id));
    assert_eq!(events.items[0].details["origin"]["table"], "t");
    assert_eq!(events.items[0].details["name"], "from drf");
    let text = serde_json::to_string(&events.items).expect("json");
    assert!(!text.contains("5e15f4249a2744c5"), "no hash in the trail");
    assert!(
        store
            .list_audit(&AuditQuery {
                kind: Some(EventKind::KeyCreated),
                ..AuditQuery::default()
            })
            .await
            .expect("audit")
            .items
            .is_empty()
    );
}

/// `rehash` stores the SHA-256 index in place of the placeholder and drops the imported hash,
/// once (however many checks race to it), with one `key.rehashed` event and a change signal
/// for each hash.
pub async fn a_rehash_happens_once_with_its_event_and_signals(store: Arc<dyn Store>) {
    let (r, legacy) = imported("from drf", "Ab12Cd34");
    let key = ImportedKey {
        record: &r,
        origin_id: "drf-api-key:t:Ab12Cd34".into(),
        origin: origin("t"),
        legacy: Some(legacy),
    };
    let mut changes = store.watch().await.expect("watch");
    assert!(store.import(&key, &audit()).await.expect("import"));
    expect_change(&mut changes, &r.hash).await;
    let index = KeyHash::of("Ab12Cd34.Ef56Gh78Ij90Kl12Mn34Op56Qr78St90");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        let id = r.id.clone();
        tasks.push(tokio::spawn(async move {
            store.rehash(&id, &index, at(5), &audit()).await
        }));
    }
    let mut done = Vec::new();
    for task in tasks {
        if let Some(record) = task.await.expect("task").expect("rehash") {
            done.push(record);
        }
    }
    assert_eq!(done.len(), 1, "exactly one rehash");
    let mut expected = r.clone();
    expected.hash = index;
    assert_eq!(done[0], expected);
    assert_eq!(
        store.find_by_hash(&index).await.expect("find"),
        Some(expected)
    );
    assert_eq!(store.find_by_hash(&r.hash).await.expect("find"), None);
    assert!(
        store
            .find_by_legacy_prefix("Ab12Cd34")
            .await
            .expect("by prefix")
            .is_empty(),
        "rehashed: no longer a legacy candidate"
    );
    assert!(store.imported_kinds().await.expect("kinds").legacy);
    expect_change(&mut changes, &r.hash).await;
    expect_change(&mut changes, &index).await;
    let events = store
        .list_audit(&AuditQuery {
            kind: Some(EventKind::KeyRehashed),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(events.items.len(), 1);
    assert_eq!(events.items[0].key_id.as_ref(), Some(&r.id));
    assert_eq!(events.items[0].details["from"], "sha512");
    assert_eq!(events.items[0].at, at(5));
    // a key never imported has nothing to rehash
    let plain = record("plain", None, at(1));
    store.create(&plain, &audit()).await.expect("create");
    assert_eq!(
        store
            .rehash(&plain.id, &index, at(6), &audit())
            .await
            .expect("rehash"),
        None
    );
}

/// An owner's shared limits come back with each of its keys (not with other owners' keys),
/// setting them tells every watcher about each of the owner's keys, and removing them removes
/// the row; each change is one `owner.updated` event with before and after.
pub async fn owner_limits_are_read_with_every_key_of_the_owner(store: Arc<dyn Store>) {
    let a = record("a", Some("acct_1"), at(0));
    let b = record("b", Some("acct_1"), at(1));
    let other = record("other", Some("acct_2"), at(2));
    for r in [&a, &b, &other] {
        store.create(r, &audit()).await.expect("create");
    }
    assert_eq!(store.get_owner("acct_1").await.expect("get owner"), None);
    let mut changes = store.watch().await.expect("watch");
    let shared = RateLimits::parse("100/1m, 5000/1h").expect("limits");
    let set = store
        .set_owner_limits("acct_1", &shared, at(3), &audit())
        .await
        .expect("set");
    assert_eq!(set.rate_limits, shared);
    assert_eq!(
        store.get_owner("acct_1").await.expect("get owner"),
        Some(set)
    );
    let mut announced = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(std::time::Duration::from_secs(5), changes.recv()).await {
            Ok(Some(Change::Key(h))) => announced.push(h),
            other => panic!("expected a change for each of the owner's keys, got {other:?}"),
        }
    }
    announced.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    let mut expected = vec![a.hash, b.hash];
    expected.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    assert_eq!(announced, expected);
    for r in [&a, &b] {
        let read = store
            .find_by_hash(&r.hash)
            .await
            .expect("find")
            .expect("found");
        assert_eq!(read.limits.owner_rate, shared);
        let read = store.get(&r.id).await.expect("get").expect("found");
        assert_eq!(read.limits.owner_rate, shared);
    }
    let read = store.get(&other.id).await.expect("get").expect("found");
    assert!(read.limits.owner_rate.is_empty());
    // Removed: the owner has no shared limits, and its keys read none.
    store
        .set_owner_limits("acct_1", &RateLimits::default(), at(4), &audit())
        .await
        .expect("remove");
    assert_eq!(store.get_owner("acct_1").await.expect("get owner"), None);
    let read = store.get(&a.id).await.expect("get").expect("found");
    assert!(read.limits.owner_rate.is_empty());
    let events = store
        .list_audit(&AuditQuery {
            kind: Some(EventKind::OwnerUpdated),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(events.items.len(), 2);
    let texts: Vec<String> = events
        .items
        .iter()
        .map(|e| serde_json::to_string(&e.details).unwrap())
        .collect();
    assert!(texts.iter().all(|t| t.contains("acct_1")), "{texts:?}");
}

fn delta(key: &KeyId, owner: Option<&str>, hour: i64, outcome: Outcome, n: u64) -> UsageDelta {
    let mut counts = UsageCounts::default();
    counts.add(outcome, n);
    UsageDelta {
        key: key.clone(),
        owner: owner.map(Into::into),
        hour: at(hour * 3_600_000),
        counts,
    }
}

fn range(since_hour: i64, until_hour: i64, bucket: Bucket) -> UsageRange {
    UsageRange::new(
        Some(at(since_hour * 3_600_000)),
        Some(at(until_hour * 3_600_000)),
        bucket,
        now(),
    )
}

/// 8 tasks each writing 25 batches (every batch naming two keys over two hours, one (key,
/// hour) twice): every count arrives, none twice; an empty batch writes nothing.
pub async fn usage_counts_add_up_exactly_under_concurrent_batches(store: Arc<dyn Store>) {
    let a = KeyId::generate(now());
    let b = KeyId::generate(now());
    store.record_counts(&[]).await.expect("empty batch");
    let tasks: Vec<_> = (0..8u64)
        .map(|task| {
            let store = store.clone();
            let (a, b) = (a.clone(), b.clone());
            tokio::spawn(async move {
                for i in 0..25u64 {
                    let batch = [
                        delta(&a, Some("acme"), 0, Outcome::Valid, 1),
                        delta(&a, Some("acme"), 0, Outcome::Valid, 2),
                        delta(&a, Some("acme"), 1, Outcome::RateLimited, task + 1),
                        delta(&b, None, 1, Outcome::Revoked, i % 3),
                    ];
                    store.record_counts(&batch).await.expect("record");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let hours = store
        .usage_for_key(&a, &range(0, 3, Bucket::Hour))
        .await
        .expect("usage");
    assert_eq!(hours.len(), 3);
    assert_eq!(hours[0].start, at(0));
    assert_eq!(hours[0].counts.verified(), 8 * 25 * 3);
    assert_eq!(hours[0].counts.total(), 8 * 25 * 3);
    assert_eq!(hours[1].counts.rate_limited(), 25 * (1..=8).sum::<u64>());
    assert_eq!(hours[1].counts.verified(), 0);
    assert!(hours[2].counts.is_empty());
    let b_hours = store
        .usage_for_key(&b, &range(0, 2, Bucket::Hour))
        .await
        .expect("usage");
    let revoked: u64 = (0..25).map(|i| i % 3).sum::<u64>() * 8;
    assert_eq!(b_hours[1].counts.get(Outcome::Revoked), revoked);
    assert_eq!(b_hours[1].counts.total(), revoked);
    let unknown = store
        .usage_for_key(&KeyId::generate(now()), &range(0, 2, Bucket::Hour))
        .await
        .expect("usage");
    assert!(unknown.iter().all(|b| b.counts.is_empty()));
}

/// Hours roll up into days; an owner's usage is the sum over its keys' rows (and no one
/// else's); purging removes the hours before the cut and only those.
pub async fn usage_rolls_up_by_day_sums_by_owner_and_is_purged(store: Arc<dyn Store>) {
    let (a, b, c) = (
        KeyId::generate(now()),
        KeyId::generate(now()),
        KeyId::generate(now()),
    );
    store
        .record_counts(&[
            delta(&a, Some("acme"), 0, Outcome::Valid, 5),
            delta(&a, Some("acme"), 23, Outcome::Valid, 7),
            delta(&a, Some("acme"), 24, Outcome::Expired, 2),
            delta(&b, Some("acme"), 23, Outcome::Valid, 11),
            delta(&b, Some("acme"), 47, Outcome::IpNotAllowed, 3),
            delta(&c, Some("globex"), 0, Outcome::Valid, 1000),
            delta(&c, None, 1, Outcome::Valid, 1),
        ])
        .await
        .expect("record");
    store
        .record_counts(&[delta(&b, Some("acme"), 24, Outcome::UsageExceeded, 4)])
        .await
        .expect("record");
    let days = store
        .usage_for_key(&a, &range(0, 72, Bucket::Day))
        .await
        .expect("usage");
    assert_eq!(days.len(), 3);
    assert_eq!(days[0].counts.verified(), 12);
    assert_eq!(days[1].counts.get(Outcome::Expired), 2);
    assert!(days[2].counts.is_empty());
    let acme = store
        .usage_for_owner("acme", &range(0, 48, Bucket::Day))
        .await
        .expect("usage");
    assert_eq!(acme.len(), 2);
    assert_eq!(acme[0].counts.verified(), 5 + 7 + 11);
    assert_eq!(acme[0].counts.total(), 23);
    assert_eq!(acme[1].counts.get(Outcome::Expired), 2);
    assert_eq!(acme[1].counts.get(Outcome::UsageExceeded), 4);
    assert_eq!(acme[1].counts.get(Outcome::IpNotAllowed), 3);
    assert_eq!(acme[1].counts.refused(), 9);
    let acme_hours = store
        .usage_for_owner("acme", &range(23, 25, Bucket::Hour))
        .await
        .expect("usage");
    assert_eq!(acme_hours[0].counts.verified(), 18);
    assert_eq!(acme_hours[1].counts.refused(), 6);
    // A row with no owner counts for no owner.
    let globex = store
        .usage_for_owner("globex", &range(0, 24, Bucket::Day))
        .await
        .expect("usage");
    assert_eq!(globex[0].counts.verified(), 1000);
    let nobody = store
        .usage_for_owner("initech", &range(0, 24, Bucket::Day))
        .await
        .expect("usage");
    assert!(nobody[0].counts.is_empty());

    assert_eq!(
        store.purge_usage(at(24 * 3_600_000)).await.expect("purge"),
        5
    );
    assert_eq!(
        store.purge_usage(at(24 * 3_600_000)).await.expect("purge"),
        0
    );
    let days = store
        .usage_for_owner("acme", &range(0, 48, Bucket::Day))
        .await
        .expect("usage");
    assert!(days[0].counts.is_empty(), "the first day is purged");
    assert_eq!(days[1].counts.refused(), 9, "the second is kept");
}
