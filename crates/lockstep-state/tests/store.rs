//! Behaviour of the state store. Every test body below runs on both backends (see
//! `on_both_backends!` at the end); the tests after that are about opening stores.

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_core::{RunErrorKind, RunMetrics, RunStatus};
use lockstep_state::{
    open, BatchCommit, LeaseHolder, LedgerEntry, RejectedFilter, RejectedRecord, RunEnd,
    StateError, StateStore,
};
use serde_json::{json, Value};

const MINUTE: Duration = Duration::from_secs(60);

fn holder(host: &str, pid: u32) -> LeaseHolder {
    LeaseHolder {
        host: host.to_owned(),
        pid,
    }
}

fn entry(key: &str, fingerprint: u128) -> LedgerEntry {
    LedgerEntry {
        key: key.to_owned(),
        dest_key: None,
        fingerprint,
        source_version: None,
        synced_at: None,
    }
}

fn rejected(key: Option<&str>, field: Option<&str>, reason: &str, raw: Value) -> RejectedRecord {
    RejectedRecord {
        id: 0,
        sync: String::new(),
        run: 0,
        key: key.map(str::to_owned),
        field: field.map(str::to_owned),
        reason: reason.to_owned(),
        raw,
        created_at: None,
        retried: None,
    }
}

/// A commit of nothing but progress; tests fill in what they need.
fn batch<'a>(sync: &'a str, run: i64, metrics: &'a RunMetrics) -> BatchCommit<'a> {
    BatchCommit {
        sync,
        run,
        lease_token: None,
        ledger_upserts: &[],
        ledger_keys_new: false,
        ledger_deletes: &[],
        checkpoint: None,
        metrics,
        rejected: &[],
    }
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|k| (*k).to_owned()).collect()
}

async fn fingerprint_of(store: &dyn StateStore, sync: &str, key: &str) -> Option<u128> {
    store
        .ledger_lookup(sync, &keys(&[key]))
        .await
        .unwrap()
        .get(key)
        .map(|e| e.fingerprint)
}

async fn status_of(store: &dyn StateStore, run: i64) -> RunStatus {
    store.run(run).await.unwrap().expect("run exists").status
}

fn assert_rfc3339(text: &str) {
    assert!(
        chrono::DateTime::parse_from_rfc3339(text).is_ok(),
        "`{text}` is not RFC 3339"
    );
}

async fn run_lifecycle_and_history(store: Box<dyn StateStore>) {
    let cursor = json!({"orders": {"updated_at": "2024-01-01T00:00:00Z", "id": 17}});
    let a1 = store.start_run("orders", Some(&cursor)).await.unwrap();
    let b1 = store.start_run("customers", None).await.unwrap();
    let a2 = store.start_run("orders", None).await.unwrap();
    assert!(a1 < b1 && b1 < a2, "ids grow: {a1} {b1} {a2}");

    let fresh = store.run(a1).await.unwrap().expect("run a1 exists");
    assert_eq!(fresh.sync, "orders");
    assert_eq!(fresh.status, RunStatus::Running);
    assert_eq!(fresh.cursor_before.as_ref(), Some(&cursor));
    assert_eq!(fresh.finished_at, None);
    assert_eq!(fresh.metrics, RunMetrics::default());
    assert_rfc3339(&fresh.started_at);

    let metrics = RunMetrics {
        read: 10,
        added: 4,
        updated: 3,
        unchanged: 3,
        ..Default::default()
    };
    let after = json!({"orders": {"updated_at": "2024-02-01T00:00:00Z", "id": 99}});
    let end = RunEnd {
        cursor_after: Some(after.clone()),
        ..RunEnd::new(RunStatus::Succeeded, metrics)
    };
    store.finish_run(a1, &end).await.unwrap();
    let failed = RunEnd {
        error_kind: Some(RunErrorKind::Transient),
        error: Some("connection reset by peer".into()),
        exit_detail: Some("killed by signal 9; stderr tail: out of memory".into()),
        ..RunEnd::new(RunStatus::Failed, RunMetrics::default())
    };
    store.finish_run(a2, &failed).await.unwrap();

    let orders = store.runs(Some("orders"), 10).await.unwrap();
    let ids: Vec<i64> = orders.iter().map(|r| r.id).collect();
    assert_eq!(ids, [a2, a1], "newest first, only this sync");
    let newest_two: Vec<i64> = store
        .runs(None, 2)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(newest_two, [a2, b1]);
    assert!(store.runs(None, 0).await.unwrap().is_empty());
    assert!(store.runs(Some("nobody"), 10).await.unwrap().is_empty());

    let done = &orders[1];
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(done.metrics, metrics);
    assert_eq!(done.cursor_before.as_ref(), Some(&cursor));
    assert_eq!(done.cursor_after.as_ref(), Some(&after));
    assert_eq!(done.error, None);
    let finished = done.finished_at.as_deref().expect("finished_at is set");
    assert_rfc3339(finished);
    assert!(finished >= done.started_at.as_str());
    assert!(done.duration_ms.is_some_and(|d| d >= 0), "{done:?}");

    let broken = &orders[0];
    assert_eq!(broken.status, RunStatus::Failed);
    assert_eq!(broken.error_kind.as_deref(), Some("transient"));
    assert_eq!(broken.error.as_deref(), Some("connection reset by peer"));
    assert_eq!(
        store.run_exit_detail(a2).await.unwrap().as_deref(),
        Some("killed by signal 9; stderr tail: out of memory")
    );
    assert_eq!(store.run_exit_detail(a1).await.unwrap(), None);

    assert_eq!(store.run(a2 + 1000).await.unwrap(), None);
    assert!(matches!(
        store.finish_run(a2 + 1000, &end).await,
        Err(StateError::UnknownRun { run }) if run == a2 + 1000
    ));
    let still_running = RunEnd::new(RunStatus::Running, RunMetrics::default());
    assert!(matches!(
        store.finish_run(b1, &still_running).await,
        Err(StateError::InvalidArgument(_))
    ));
    assert_eq!(status_of(&*store, b1).await, RunStatus::Running);
}

async fn mark_abandoned_spares_runs_under_the_live_lease(store: Box<dyn StateStore>) {
    let stale = store.start_run("s", None).await.unwrap();
    let finished = store.start_run("s", None).await.unwrap();
    store
        .finish_run(
            finished,
            &RunEnd::new(RunStatus::Succeeded, RunMetrics::default()),
        )
        .await
        .unwrap();
    let elsewhere = store.start_run("t", None).await.unwrap();
    let lease = store
        .acquire_lease("s", &holder("a", 1), MINUTE)
        .await
        .unwrap();
    let current = store.start_run("s", None).await.unwrap();

    assert_eq!(store.mark_abandoned("s").await.unwrap(), 1);
    let abandoned = store.run(stale).await.unwrap().unwrap();
    assert_eq!(abandoned.status, RunStatus::Abandoned);
    assert!(abandoned.finished_at.is_some() && abandoned.error.is_some());
    assert_eq!(status_of(&*store, finished).await, RunStatus::Succeeded);
    assert_eq!(status_of(&*store, elsewhere).await, RunStatus::Running);
    assert_eq!(status_of(&*store, current).await, RunStatus::Running);

    store.release_lease(&lease).await.unwrap();
    assert_eq!(store.mark_abandoned("s").await.unwrap(), 1);
    assert_eq!(status_of(&*store, current).await, RunStatus::Abandoned);
    assert_eq!(store.mark_abandoned("s").await.unwrap(), 0);
}

async fn commit_batch_writes_ledger_checkpoint_progress_and_rejects(store: Box<dyn StateStore>) {
    let run = store.start_run("s", None).await.unwrap();
    let k1 = LedgerEntry {
        key: "k1".into(),
        dest_key: Some("crm-001".into()),
        fingerprint: u128::MAX,
        source_version: Some("2024-01-01T00:00:00Z".into()),
        synced_at: Some("2024-01-02T03:04:05.000000Z".into()),
    };
    let first = [k1.clone(), entry("k2", 0), entry("k3", 3)];
    let metrics = RunMetrics {
        read: 4,
        added: 3,
        rejected: 1,
        ..Default::default()
    };
    let bad = [rejected(
        Some("k9"),
        Some("email"),
        "not an email",
        json!({"email": "x"}),
    )];
    let checkpoint = json!({"cursor": 5});
    store
        .commit_batch(&BatchCommit {
            ledger_upserts: &first,
            checkpoint: Some(&checkpoint),
            rejected: &bad,
            ..batch("s", run, &metrics)
        })
        .await
        .unwrap();

    assert_eq!(store.ledger_count("s").await.unwrap(), 3);
    let found = store
        .ledger_lookup("s", &keys(&["k1", "k2", "k3", "missing"]))
        .await
        .unwrap();
    assert_eq!(found.len(), 3);
    assert_eq!(found["k1"], k1);
    let k2 = &found["k2"];
    assert_eq!((k2.fingerprint, k2.dest_key.as_deref()), (0, None));
    assert_rfc3339(k2.synced_at.as_deref().expect("the store fills synced_at"));
    assert_eq!(store.checkpoint("s").await.unwrap(), Some(checkpoint));
    assert_eq!(store.run(run).await.unwrap().unwrap().metrics, metrics);
    let stored = store
        .rejected(&RejectedFilter {
            run: Some(run),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);

    // Updates, a duplicate key (the last one wins) and deletes, one of an unknown key. No
    // entry has a destination key or a time of its own: the compact form on SQLite.
    let versioned = LedgerEntry {
        source_version: Some("2024-05-06T00:00:00Z".into()),
        ..entry("k4", 44)
    };
    let second = [entry("k2", 22), entry("k4", 40), versioned.clone()];
    let deletes = keys(&["k1", "never-there"]);
    let later = RunMetrics {
        read: 9,
        updated: 1,
        added: 4,
        deleted: 1,
        rejected: 1,
        ..Default::default()
    };
    let moved = json!({"cursor": 9});
    store
        .commit_batch(&BatchCommit {
            ledger_upserts: &second,
            ledger_deletes: &deletes,
            checkpoint: Some(&moved),
            ..batch("s", run, &later)
        })
        .await
        .unwrap();
    assert_eq!(fingerprint_of(&*store, "s", "k1").await, None);
    assert_eq!(fingerprint_of(&*store, "s", "k2").await, Some(22));
    assert_eq!(fingerprint_of(&*store, "s", "k4").await, Some(44));
    let found = store
        .ledger_lookup("s", &keys(&["k2", "k4"]))
        .await
        .unwrap();
    assert_eq!(found["k4"].source_version, versioned.source_version);
    assert_eq!(
        (
            found["k2"].dest_key.as_deref(),
            found["k2"].source_version.as_deref()
        ),
        (None, None)
    );
    for key in ["k2", "k4"] {
        assert_rfc3339(
            found[key]
                .synced_at
                .as_deref()
                .expect("the store fills synced_at"),
        );
    }
    assert_eq!(store.ledger_count("s").await.unwrap(), 3);
    assert_eq!(store.checkpoint("s").await.unwrap(), Some(moved.clone()));
    assert_eq!(store.run(run).await.unwrap().unwrap().metrics, later);

    // A commit to a run that does not exist is refused whole.
    let orphan = [entry("k5", 5)];
    let elsewhere = json!({"cursor": 100});
    let refused = store
        .commit_batch(&BatchCommit {
            ledger_upserts: &orphan,
            checkpoint: Some(&elsewhere),
            ..batch("s", run + 1000, &later)
        })
        .await;
    assert!(
        matches!(refused, Err(StateError::UnknownRun { .. })),
        "{refused:?}"
    );
    assert_eq!(fingerprint_of(&*store, "s", "k5").await, None);
    assert_eq!(store.checkpoint("s").await.unwrap(), Some(moved));
}

async fn lease_lost_commit_writes_nothing(store: Box<dyn StateStore>) {
    // A zero ttl expires at once, but until someone takes over the token is still current.
    let old = store
        .acquire_lease("s", &holder("old-host", 1), Duration::ZERO)
        .await
        .unwrap();
    let run = store.start_run("s", None).await.unwrap();
    let committed = RunMetrics {
        read: 1,
        added: 1,
        ..Default::default()
    };
    let first = [entry("k1", 1)];
    let checkpoint = json!({"c": 1});
    store
        .commit_batch(&BatchCommit {
            lease_token: Some(old.token),
            ledger_upserts: &first,
            checkpoint: Some(&checkpoint),
            ..batch("s", run, &committed)
        })
        .await
        .unwrap();

    let new = store
        .acquire_lease("s", &holder("new-host", 2), MINUTE)
        .await
        .unwrap();
    assert!(new.token > old.token);

    let upserts = [entry("k1", 2), entry("k2", 2)];
    let deletes = keys(&["k1"]);
    let stale_checkpoint = json!({"c": 2});
    let stale_metrics = RunMetrics {
        read: 99,
        ..Default::default()
    };
    let bad = [rejected(Some("k3"), None, "refused", json!(3))];
    let refused = store
        .commit_batch(&BatchCommit {
            lease_token: Some(old.token),
            ledger_upserts: &upserts,
            ledger_deletes: &deletes,
            checkpoint: Some(&stale_checkpoint),
            rejected: &bad,
            ..batch("s", run, &stale_metrics)
        })
        .await;
    match refused {
        Err(StateError::LeaseLost { sync }) => assert_eq!(sync, "s"),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    assert_eq!(fingerprint_of(&*store, "s", "k1").await, Some(1));
    assert_eq!(fingerprint_of(&*store, "s", "k2").await, None);
    assert_eq!(store.ledger_count("s").await.unwrap(), 1);
    assert_eq!(store.checkpoint("s").await.unwrap(), Some(checkpoint));
    assert_eq!(store.run(run).await.unwrap().unwrap().metrics, committed);
    assert!(store
        .rejected(&RejectedFilter::default())
        .await
        .unwrap()
        .is_empty());

    // The new holder's commit goes through.
    store
        .commit_batch(&BatchCommit {
            lease_token: Some(new.token),
            ledger_upserts: &upserts,
            ..batch("s", run, &stale_metrics)
        })
        .await
        .unwrap();
    assert_eq!(fingerprint_of(&*store, "s", "k2").await, Some(2));
}

async fn expired_lease_is_taken_over_with_a_higher_token(store: Box<dyn StateStore>) {
    let first = store
        .acquire_lease("s", &holder("a", 1), Duration::from_millis(50))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = store
        .acquire_lease("s", &holder("b", 2), MINUTE)
        .await
        .expect("an expired lease is taken over");
    assert!(second.token > first.token, "{second:?} after {first:?}");
    assert_eq!(second.holder, holder("b", 2));

    assert!(matches!(
        store.renew_lease(&first, MINUTE).await,
        Err(StateError::LeaseLost { .. })
    ));
    let run = store.start_run("s", None).await.unwrap();
    let metrics = RunMetrics::default();
    let upserts = [entry("k", 1)];
    let stale = store
        .commit_batch(&BatchCommit {
            lease_token: Some(first.token),
            ledger_upserts: &upserts,
            ..batch("s", run, &metrics)
        })
        .await;
    assert!(
        matches!(stale, Err(StateError::LeaseLost { .. })),
        "{stale:?}"
    );
    assert_eq!(store.ledger_count("s").await.unwrap(), 0);
    store
        .commit_batch(&BatchCommit {
            lease_token: Some(second.token),
            ledger_upserts: &upserts,
            ..batch("s", run, &metrics)
        })
        .await
        .unwrap();
    assert_eq!(store.ledger_count("s").await.unwrap(), 1);

    // Releasing keeps the row, so the next token is higher still.
    store.release_lease(&first).await.unwrap();
    assert!(store
        .acquire_lease("s", &holder("c", 3), MINUTE)
        .await
        .is_err());
    store.release_lease(&second).await.unwrap();
    let third = store
        .acquire_lease("s", &holder("c", 3), MINUTE)
        .await
        .unwrap();
    assert!(third.token > second.token);
}

async fn held_lease_names_its_holder(store: Box<dyn StateStore>) {
    let alpha = holder("alpha.example", 4242);
    let lease = store.acquire_lease("s", &alpha, MINUTE).await.unwrap();
    assert_eq!((lease.sync.as_str(), &lease.holder), ("s", &alpha));
    assert!(lease.token >= 1);
    assert_rfc3339(&lease.since);

    let err = store
        .acquire_lease("s", &holder("beta.example", 7), MINUTE)
        .await
        .unwrap_err();
    let message = err.to_string();
    match err {
        StateError::LeaseHeld {
            sync,
            holder,
            since,
        } => {
            assert_eq!(sync, "s");
            assert_eq!(holder, alpha);
            assert_eq!(since, lease.since);
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    assert!(
        message.contains("alpha.example") && message.contains("4242"),
        "{message}"
    );
    assert!(matches!(
        store.acquire_lease("s", &alpha, MINUTE).await,
        Err(StateError::LeaseHeld { .. })
    ));
    // Leases are per sync.
    store
        .acquire_lease("t", &holder("beta.example", 7), MINUTE)
        .await
        .unwrap();

    store.renew_lease(&lease, MINUTE).await.unwrap();
    store.release_lease(&lease).await.unwrap();
    let next = store
        .acquire_lease("s", &holder("beta.example", 7), MINUTE)
        .await
        .unwrap();
    assert!(next.token > lease.token);
    assert!(matches!(
        store.renew_lease(&lease, MINUTE).await,
        Err(StateError::LeaseLost { .. })
    ));
}

async fn a_gone_holders_lease_can_be_expired_at_once(store: Box<dyn StateStore>) {
    let gone = holder("alpha.example", 4242);
    let lease = store.acquire_lease("s", &gone, MINUTE).await.unwrap();
    // Only the named holder's lease is expired.
    assert!(!store
        .expire_lease("s", &holder("alpha.example", 1))
        .await
        .unwrap());
    assert!(matches!(
        store
            .acquire_lease("s", &holder("beta.example", 7), MINUTE)
            .await,
        Err(StateError::LeaseHeld { .. })
    ));
    assert!(store.expire_lease("s", &gone).await.unwrap());
    let next = store
        .acquire_lease("s", &holder("beta.example", 7), MINUTE)
        .await
        .unwrap();
    assert!(next.token > lease.token);
}

async fn put_checkpoint_stores_bookkeeping_beside_the_source_position(store: Box<dyn StateStore>) {
    let value = serde_json::json!({ "run": 7 });
    store
        .put_checkpoint("s/reconciled", Some(7), &value)
        .await
        .unwrap();
    assert_eq!(store.checkpoint("s/reconciled").await.unwrap(), Some(value));
    assert_eq!(store.checkpoint("s").await.unwrap(), None);
    let newer = serde_json::json!({ "run": 9 });
    store
        .put_checkpoint("s/reconciled", None, &newer)
        .await
        .unwrap();
    assert_eq!(store.checkpoint("s/reconciled").await.unwrap(), Some(newer));
}

async fn concurrent_acquires_grant_one_lease(store: Box<dyn StateStore>) {
    let store: Arc<dyn StateStore> = Arc::from(store);
    let tasks: Vec<_> = (0..8u32)
        .map(|pid| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.acquire_lease("s", &holder("h", pid), MINUTE).await })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => granted += 1,
            Err(StateError::LeaseHeld { .. }) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(granted, 1);
}

async fn ledger_lookup_of_10k_keys(store: Box<dyn StateStore>) {
    const N: usize = 10_000;
    let entries: Vec<LedgerEntry> = (0..N)
        .map(|i| LedgerEntry {
            key: format!("key-{i:05}"),
            dest_key: (i % 2 == 0).then(|| format!("dest-{i}")),
            fingerprint: (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
            source_version: Some(i.to_string()),
            synced_at: None,
        })
        .collect();
    let run = store.start_run("big", None).await.unwrap();
    let metrics = RunMetrics::default();
    store
        .commit_batch(&BatchCommit {
            ledger_upserts: &entries,
            ..batch("big", run, &metrics)
        })
        .await
        .unwrap();
    assert_eq!(store.ledger_count("big").await.unwrap(), N as u64);
    // A bounded count stops at its bound, and is exact below it.
    assert_eq!(store.ledger_count_at_most("big", 17).await.unwrap(), 17);
    assert_eq!(
        store
            .ledger_count_at_most("big", N as u64 + 5)
            .await
            .unwrap(),
        N as u64
    );
    assert_eq!(
        store.ledger_count_at_most("big", u64::MAX).await.unwrap(),
        N as u64
    );
    assert_eq!(store.ledger_count_at_most("other", 10).await.unwrap(), 0);

    let mut wanted: Vec<String> = entries.iter().map(|e| e.key.clone()).collect();
    wanted.extend((0..100).map(|i| format!("absent-{i}")));
    let started = Instant::now();
    let found = store.ledger_lookup("big", &wanted).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(found.len(), N);
    for e in &entries {
        let got = &found[&e.key];
        assert_eq!(
            (got.fingerprint, &got.dest_key, &got.source_version),
            (e.fingerprint, &e.dest_key, &e.source_version)
        );
    }
    // Generous, for a loaded machine; one query per key would take far longer.
    assert!(elapsed < Duration::from_secs(10), "lookup took {elapsed:?}");

    // Paging through the key set returns every key once, in order.
    let mut paged = Vec::new();
    let mut pages = 0;
    loop {
        let page = store
            .ledger_keys("big", paged.last().map(String::as_str), 3000)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        pages += 1;
        paged.extend(page);
    }
    let expected: Vec<String> = entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(paged, expected);
    assert_eq!(pages, 4);
    assert!(store
        .ledger_keys("other", None, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn ledger_keys_sort_in_byte_order(store: Box<dyn StateStore>) {
    let mixed = [
        "b", "Zebra", "apple", "Äpfel", "a b", "a", "10", "9", "émile",
    ];
    let entries: Vec<LedgerEntry> = mixed.iter().map(|k| entry(k, 1)).collect();
    let run = store.start_run("s", None).await.unwrap();
    let metrics = RunMetrics::default();
    store
        .commit_batch(&BatchCommit {
            ledger_upserts: &entries,
            ..batch("s", run, &metrics)
        })
        .await
        .unwrap();
    let expected: Vec<String> = mixed
        .iter()
        .map(|k| (*k).to_owned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(store.ledger_keys("s", None, 100).await.unwrap(), expected);
    assert_eq!(
        store.ledger_keys("s", Some("a"), 2).await.unwrap(),
        expected[expected.iter().position(|k| k == "a").unwrap() + 1..][..2]
    );
}

async fn reset_sync_forgets_checkpoint_and_ledger(store: Box<dyn StateStore>) {
    let metrics = RunMetrics::default();
    let mut runs = Vec::new();
    for sync in ["a", "b"] {
        let run = store.start_run(sync, None).await.unwrap();
        let upserts = [entry("k1", 1), entry("k2", 2)];
        let checkpoint = json!({"sync": sync});
        store
            .commit_batch(&BatchCommit {
                ledger_upserts: &upserts,
                checkpoint: Some(&checkpoint),
                ..batch(sync, run, &metrics)
            })
            .await
            .unwrap();
        runs.push(run);
    }
    store.reset_sync("a").await.unwrap();
    assert_eq!(store.checkpoint("a").await.unwrap(), None);
    assert_eq!(store.ledger_count("a").await.unwrap(), 0);
    assert!(store
        .ledger_lookup("a", &keys(&["k1", "k2"]))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.checkpoint("b").await.unwrap(),
        Some(json!({"sync": "b"}))
    );
    assert_eq!(store.ledger_count("b").await.unwrap(), 2);
    assert!(
        store.run(runs[0]).await.unwrap().is_some(),
        "history is kept"
    );

    let again = [entry("k1", 11)];
    store
        .commit_batch(&BatchCommit {
            ledger_upserts: &again,
            ..batch("a", runs[0], &metrics)
        })
        .await
        .unwrap();
    assert_eq!(fingerprint_of(&*store, "a", "k1").await, Some(11));
}

async fn rejected_records_round_trip(store: Box<dyn StateStore>) {
    let raw = json!({
        "id": 7,
        "name": "Zoë \"quoted\" \\ 🚀",
        "tags": ["a", null, 1.5, true],
        "nested": {"big": 12_345_678_901_234_567_i64, "neg": -3, "empty": {}}
    });
    let metrics = RunMetrics::default();
    let run1 = store.start_run("s", None).await.unwrap();
    let run2 = store.start_run("s", None).await.unwrap();
    let run3 = store.start_run("t", None).await.unwrap();
    let mut first = rejected(Some("k1"), Some("email"), "not an email", raw.clone());
    // The commit, not the record, says which sync and run it belongs to.
    first.sync = "ignored".into();
    first.run = 12345;
    let batch1 = [
        first,
        rejected(None, None, "no key", json!("just a string")),
    ];
    let batch2 = [rejected(Some("k3"), None, "too long", json!([1, 2]))];
    let batch3 = [rejected(Some("k4"), None, "elsewhere", json!(null))];
    for (sync, run, records) in [
        ("s", run1, &batch1[..]),
        ("s", run2, &batch2[..]),
        ("t", run3, &batch3[..]),
    ] {
        store
            .commit_batch(&BatchCommit {
                rejected: records,
                ..batch(sync, run, &metrics)
            })
            .await
            .unwrap();
    }

    let of_s = store
        .rejected(&RejectedFilter {
            sync: Some("s".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let reasons: Vec<&str> = of_s.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["too long", "no key", "not an email"],
        "newest first"
    );
    assert!(of_s.windows(2).all(|w| w[0].id > w[1].id));
    let r1 = &of_s[2];
    assert_eq!(r1.raw, raw);
    assert_eq!((r1.sync.as_str(), r1.run), ("s", run1));
    assert_eq!(r1.key.as_deref(), Some("k1"));
    assert_eq!(r1.field.as_deref(), Some("email"));
    assert_eq!(r1.retried, None);
    assert_rfc3339(r1.created_at.as_deref().expect("created_at is set"));
    assert_eq!(of_s[1].raw, json!("just a string"));
    assert_eq!(
        (of_s[1].key.as_deref(), of_s[1].field.as_deref()),
        (None, None)
    );

    let by_run = |run| RejectedFilter {
        run: Some(run),
        ..Default::default()
    };
    assert_eq!(store.rejected(&by_run(run1)).await.unwrap().len(), 2);
    let by_id = store
        .rejected(&RejectedFilter {
            id: Some(r1.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_id, vec![r1.clone()]);
    let newest = store
        .rejected(&RejectedFilter {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].reason, "elsewhere");

    store
        .mark_rejected_retried(&[r1.id, r1.id + 1000], "succeeded")
        .await
        .unwrap();
    store.mark_rejected_retried(&[], "nothing").await.unwrap();
    let retried = store.rejected(&by_run(run1)).await.unwrap();
    assert_eq!(retried[1].retried.as_deref(), Some("succeeded"));
    assert_eq!(retried[0].retried, None);
    let pending: Vec<i64> = store
        .rejected(&RejectedFilter {
            sync: Some("s".into()),
            pending_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(pending, [of_s[0].id, of_s[1].id]);
}

async fn a_ledger_write_of_a_key_resolves_its_pending_rejects(store: Box<dyn StateStore>) {
    let metrics = RunMetrics::default();
    let run1 = store.start_run("s", None).await.unwrap();
    let refused = [
        rejected(Some("[1]"), Some("qty"), "check failed", json!({"id": 1})),
        rejected(Some("[2]"), Some("qty"), "check failed", json!({"id": 2})),
        rejected(None, Some("code"), "null key", json!({"id": 3})),
    ];
    store
        .commit_batch(&BatchCommit {
            rejected: &refused,
            ..batch("s", run1, &metrics)
        })
        .await
        .unwrap();
    let other = store.start_run("t", None).await.unwrap();
    store
        .commit_batch(&BatchCommit {
            rejected: &[rejected(Some("[1]"), None, "elsewhere", json!({}))],
            ..batch("t", other, &metrics)
        })
        .await
        .unwrap();

    // A later run writes key [1] and refuses key [2] again in the same commit.
    let run2 = store.start_run("s", None).await.unwrap();
    store
        .commit_batch(&BatchCommit {
            ledger_upserts: &[entry("[1]", 1)],
            rejected: &[rejected(
                Some("[2]"),
                None,
                "still refused",
                json!({"id": 2}),
            )],
            ..batch("s", run2, &metrics)
        })
        .await
        .unwrap();
    let pending = |sync: &str| RejectedFilter {
        sync: Some(sync.into()),
        pending_only: true,
        ..Default::default()
    };
    let left: Vec<(Option<String>, String)> = store
        .rejected(&pending("s"))
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.key, r.reason))
        .collect();
    assert_eq!(
        left,
        [
            (Some("[2]".to_owned()), "still refused".to_owned()),
            (None, "null key".to_owned()),
            (Some("[2]".to_owned()), "check failed".to_owned()),
        ]
    );
    let all = store
        .rejected(&RejectedFilter {
            run: Some(run1),
            ..Default::default()
        })
        .await
        .unwrap();
    let first = all
        .iter()
        .find(|r| r.key.as_deref() == Some("[1]"))
        .unwrap();
    assert_eq!(
        first.retried.as_deref(),
        Some(format!("resolved in run {run2}: a newer version of the record was written").as_str())
    );
    // Another sync's record of the same key is left alone.
    assert_eq!(store.rejected(&pending("t")).await.unwrap().len(), 1);
}

/// Keys committed as new are inserted; should one be present after all, the commit replaces
/// it as an upsert would, and the rest of the commit (the other keys, the checkpoint) lands.
async fn keys_committed_as_new_that_are_present_are_replaced(store: Box<dyn StateStore>) {
    let run = store.start_run("s", None).await.unwrap();
    let metrics = RunMetrics::default();
    let first = [entry("k1", 1), entry("k2", 2)];
    store
        .commit_batch(&BatchCommit {
            ledger_upserts: &first,
            ledger_keys_new: true,
            ..batch("s", run, &metrics)
        })
        .await
        .unwrap();
    assert_eq!(fingerprint_of(&*store, "s", "k1").await, Some(1));
    assert_eq!(fingerprint_of(&*store, "s", "k2").await, Some(2));

    // `k2` is not new: the flag is wrong, the result is still an upsert's.
    let second = [entry("k2", 22), entry("k3", 3)];
    let checkpoint = json!({"cursor": 2});
    store
        .commit_batch(&BatchCommit {
            ledger_upserts: &second,
            ledger_keys_new: true,
            checkpoint: Some(&checkpoint),
            ..batch("s", run, &metrics)
        })
        .await
        .unwrap();
    assert_eq!(fingerprint_of(&*store, "s", "k1").await, Some(1));
    assert_eq!(fingerprint_of(&*store, "s", "k2").await, Some(22));
    assert_eq!(fingerprint_of(&*store, "s", "k3").await, Some(3));
    assert_eq!(store.ledger_count("s").await.unwrap(), 3);
    assert_eq!(store.checkpoint("s").await.unwrap(), Some(checkpoint));
}

on_both_backends!(
    keys_committed_as_new_that_are_present_are_replaced,
    run_lifecycle_and_history,
    a_ledger_write_of_a_key_resolves_its_pending_rejects,
    mark_abandoned_spares_runs_under_the_live_lease,
    commit_batch_writes_ledger_checkpoint_progress_and_rejects,
    lease_lost_commit_writes_nothing,
    expired_lease_is_taken_over_with_a_higher_token,
    held_lease_names_its_holder,
    a_gone_holders_lease_can_be_expired_at_once,
    put_checkpoint_stores_bookkeeping_beside_the_source_position,
    concurrent_acquires_grant_one_lease,
    ledger_lookup_of_10k_keys,
    ledger_keys_sort_in_byte_order,
    reset_sync_forgets_checkpoint_and_ledger,
    rejected_records_round_trip,
);

#[tokio::test]
async fn errors_never_show_passwords() {
    const SECRET: &str = "Sup3rSecret";
    let mut urls = vec![
        // Nothing listens on port 1: connection refused.
        format!("postgres://lockstep:{SECRET}@127.0.0.1:1/state"),
        format!("postgresql://lockstep:{SECRET}%21@127.0.0.1:1/state?password={SECRET}x"),
        format!("postgres://lockstep:{SECRET}@127.0.0.1:notaport/state"),
        format!("postgres://lockstep:{SECRET}@[::1/state"),
        format!("mysql://root:{SECRET}@db.example/state"),
    ];
    if support::postgres_available().await {
        // The server answers (trust auth ignores the password) that the database is missing.
        let server = support::postgres_url();
        let host = server
            .split_once('@')
            .map_or("127.0.0.1:5432", |(_, rest)| {
                rest.split('/').next().unwrap()
            });
        urls.push(format!(
            "postgres://postgres:{SECRET}@{host}/lockstep_state_no_such_database"
        ));
    }
    for url in &urls {
        let err = match open(url).await {
            Ok(_) => panic!("opening {url} should fail"),
            Err(e) => e,
        };
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(SECRET), "password leaked: {text}");
            assert!(!text.contains("lockstep:"), "userinfo leaked: {text}");
        }
        let message = err.to_string();
        assert!(
            message.contains("127.0.0.1")
                || message.contains("db.example")
                || message.contains("[::1"),
            "the message names the server: {message}"
        );
    }
}

#[tokio::test]
async fn bad_urls_name_the_accepted_forms() {
    for url in [
        "",
        "   ",
        "mysql://db/state",
        "sqlite://",
        "sqlite://x.db?mode=ro",
    ] {
        let err = match open(url).await {
            Ok(_) => panic!("opening `{url}` should fail"),
            Err(e) => e,
        };
        assert!(matches!(err, StateError::InvalidUrl { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("sqlite://path/to/state.db") && message.contains("postgres://"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn sqlite_store_is_created_with_its_directory_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/state.db");
    let url = path.display().to_string();
    {
        let store = open(&url).await.unwrap();
        let run = store.start_run("s", None).await.unwrap();
        let checkpoint = json!({"kept": true});
        let metrics = RunMetrics::default();
        store
            .commit_batch(&BatchCommit {
                checkpoint: Some(&checkpoint),
                ..batch("s", run, &metrics)
            })
            .await
            .unwrap();
        store.close().await;
    }
    assert!(path.is_file(), "{} was created", path.display());
    // The same file through the URL form: migrations are not applied twice.
    let store = open(&format!("sqlite://{url}")).await.unwrap();
    assert_eq!(
        store.checkpoint("s").await.unwrap(),
        Some(json!({"kept": true}))
    );

    // A path below a regular file cannot be created; the error names it.
    let blocked = dir.path().join("a/b/state.db/inner.db");
    let err = match open(&blocked.display().to_string()).await {
        Ok(_) => panic!("a database below a file cannot open"),
        Err(e) => e,
    };
    assert!(matches!(err, StateError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("state.db/inner.db"), "{err}");
}

#[tokio::test]
async fn in_memory_sqlite_keeps_its_data_while_open() {
    let store = open("sqlite::memory:").await.unwrap();
    let run = store.start_run("s", None).await.unwrap();
    let metrics = RunMetrics::default();
    let upserts = [entry("k", 7)];
    store
        .commit_batch(&BatchCommit {
            ledger_upserts: &upserts,
            ..batch("s", run, &metrics)
        })
        .await
        .unwrap();
    assert_eq!(fingerprint_of(&*store, "s", "k").await, Some(7));
    assert_eq!(store.runs(None, 10).await.unwrap().len(), 1);
}
