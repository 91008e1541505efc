//! The state of two-way syncs: the base ledger and the conflict queue. Every test body runs on
//! SQLite in a file and in memory, and on PostgreSQL (see the macros at the end).

// Not every helper of the shared support module is used here.
#[macro_use]
#[allow(dead_code)]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use lockstep_core::RunMetrics;
use lockstep_state::{
    BaseEntry, BaseFingerprints, Conflict, ConflictFilter, ConflictResolution, ConflictStatus,
    LeaseHolder, RejectedFilter, RejectedRecord, StateError, StateStore, TwoWayCommit,
    TwoWayRejects,
};
use serde_json::{json, Map, Value};

/// More keys than one statement carries (the store's chunk is 10,000).
const MANY: usize = 10_050;

fn map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not a JSON object: {other}"),
    }
}

fn base(key: &str, values: Value, fingerprint_a: u128, fingerprint_b: u128) -> BaseEntry {
    BaseEntry {
        key: key.to_owned(),
        base: map(values),
        fingerprint_a,
        fingerprint_b,
    }
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|k| (*k).to_owned()).collect()
}

/// A conflict as a run finds it; the store fills in its id, sync, run and creation time.
fn conflict(key: &str, status: ConflictStatus, a: Option<Value>, b: Option<Value>) -> Conflict {
    let (policy, decision) = match status {
        ConflictStatus::Open => ("manual", "queued"),
        _ => ("newest-wins", "b"),
    };
    Conflict {
        id: 0,
        sync: String::new(),
        run: 0,
        key: key.to_owned(),
        base: Some(map(json!({"name": "base", "n": 0}))),
        resolution: match status {
            ConflictStatus::Auto => b.clone().map(map),
            _ => None,
        },
        a: a.map(map),
        b: b.map(map),
        fields: vec!["name".into(), "n".into()],
        policy: policy.into(),
        decision: decision.into(),
        resolution_deletes: false,
        status,
        created_at: String::new(),
        resolved_by: None,
        resolved_at: None,
    }
}

/// A commit of nothing but progress; tests fill in what they need.
fn commit<'a>(sync: &'a str, run: i64, metrics: &'a RunMetrics) -> TwoWayCommit<'a> {
    TwoWayCommit {
        sync,
        run,
        lease_token: None,
        metrics,
        upserts: &[],
        deletes: &[],
        conflicts: &[],
        applied: &[],
        checkpoint: None,
    }
}

fn resolution(decision: &str, values: Option<Value>) -> ConflictResolution {
    ConflictResolution {
        decision: decision.into(),
        values: values.map(map),
        by: "ada@workstation".into(),
    }
}

fn of_sync(sync: &str) -> ConflictFilter {
    ConflictFilter {
        sync: Some(sync.into()),
        ..Default::default()
    }
}

async fn conflict_by_id(store: &dyn StateStore, id: i64) -> Conflict {
    store
        .conflict(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("conflict {id} exists"))
}

fn assert_rfc3339(text: &str) {
    assert!(
        chrono::DateTime::parse_from_rfc3339(text).is_ok(),
        "`{text}` is not RFC 3339"
    );
}

fn assert_invalid(outcome: lockstep_state::Result<()>, needles: &[&str]) {
    match outcome {
        Err(StateError::InvalidArgument(message)) => {
            for needle in needles {
                assert!(message.contains(needle), "`{needle}` not in: {message}");
            }
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

async fn base_ledger_round_trips_fingerprints_and_json(store: Box<dyn StateStore>) {
    let run = store.start_run("s", None).await.unwrap();
    let metrics = RunMetrics::default();
    let top = 1u128 << 127;
    let rich = json!({
        "name": "Zoë \"the\" tester\n",
        "n": 1,
        "price": 12.5,
        "big": 9_007_199_254_740_993_i64,
        "negative": -3,
        "tags": ["x", "y", 3, null],
        "nested": {"deep": null, "flag": true, "list": [{"a": 1}]},
        "nothing": null
    });
    let entries = vec![
        base("[1]", rich.clone(), 0, u128::MAX),
        base("[2]", json!({}), top, top + 12_345),
        base("[3]", json!({"n": 3}), u128::MAX - 1, 1),
        // The same key twice in one commit: the last entry wins.
        base("[4]", json!({"n": 4}), 1, 1),
        base("[4]", json!({"n": 40}), top + 1, u128::MAX >> 1),
        base(r#"["B"]"#, json!({"n": 5}), 5, 5),
        base(r#"["a"]"#, json!({"n": 6}), 6, 6),
    ];
    store
        .commit_two_way(&TwoWayCommit {
            upserts: &entries,
            ..commit("s", run, &metrics)
        })
        .await
        .unwrap();

    let wanted = keys(&["[1]", "[2]", "[3]", "[4]", r#"["B"]"#, r#"["a"]"#, "[404]"]);
    let found = store.base_lookup("s", &wanted).await.unwrap();
    assert_eq!(found.len(), 6, "{found:?}");
    let mut expected: HashMap<String, BaseEntry> = HashMap::new();
    for entry in entries.iter().filter(|e| e.base != map(json!({"n": 4}))) {
        expected.insert(entry.key.clone(), entry.clone());
    }
    assert_eq!(found, expected);
    assert_eq!(found["[1]"].base, map(rich));
    assert_eq!(found["[1]"].fingerprint_b, u128::MAX);
    assert_eq!(found["[2]"].fingerprint_a, top);
    assert_eq!(found["[2]"].fingerprint_b, top + 12_345);
    assert_eq!(found["[4]"].fingerprint_a, top + 1);
    assert_eq!(store.base_count("s").await.unwrap(), 6);
    assert!(store
        .base_lookup("other", &wanted)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.base_count("other").await.unwrap(), 0);

    // Keys page in byte order (`"` < `1` < `B`... and `B` before `a`).
    let mut all: Vec<String> = expected.keys().cloned().collect();
    all.sort();
    assert_eq!(all[..2], keys(&[r#"["B"]"#, r#"["a"]"#]));
    assert_eq!(store.base_keys("s", None, 3).await.unwrap(), all[..3]);
    assert_eq!(
        store.base_keys("s", Some(&all[2]), 100).await.unwrap(),
        all[3..]
    );
    assert!(store
        .base_keys("s", Some(&all[5]), 10)
        .await
        .unwrap()
        .is_empty());

    // A second commit replaces a row and forgets two; a key upserted and deleted in one
    // commit is gone.
    let replaced = [
        base("[1]", json!({"n": 10}), top + 7, 7),
        base("[5]", json!({"n": 5}), 5, 5),
    ];
    store
        .commit_two_way(&TwoWayCommit {
            upserts: &replaced,
            deletes: &keys(&["[2]", "[5]", "[404]"]),
            ..commit("s", run, &metrics)
        })
        .await
        .unwrap();
    let found = store.base_lookup("s", &wanted).await.unwrap();
    assert_eq!(found["[1]"], replaced[0]);
    assert!(!found.contains_key("[2]") && !found.contains_key("[5]"));
    assert_eq!(store.base_count("s").await.unwrap(), 5);
}

async fn base_ledger_handles_more_keys_than_one_statement_holds(store: Box<dyn StateStore>) {
    let run = store.start_run("s", None).await.unwrap();
    let metrics = RunMetrics::default();
    let entries: Vec<BaseEntry> = (0..MANY)
        .map(|i| {
            let n = i as u128;
            base(
                &format!("[{i:05}]"),
                json!({ "i": i }),
                u128::MAX - n,
                (1 << 127) | n,
            )
        })
        .collect();
    store
        .commit_two_way(&TwoWayCommit {
            upserts: &entries,
            ..commit("s", run, &metrics)
        })
        .await
        .unwrap();
    assert_eq!(store.base_count("s").await.unwrap(), MANY as u64);
    let all: Vec<String> = entries.iter().map(|e| e.key.clone()).collect();
    let found = store.base_lookup("s", &all).await.unwrap();
    assert_eq!(found.len(), MANY);
    assert_eq!(found[&all[MANY - 1]], entries[MANY - 1]);
    store
        .commit_two_way(&TwoWayCommit {
            deletes: &all[1..],
            ..commit("s", run, &metrics)
        })
        .await
        .unwrap();
    assert_eq!(store.base_keys("s", None, 10).await.unwrap(), all[..1]);
}

/// The fingerprints-only lookup gives each stored key's two fingerprints as stored (the top
/// bit and all-ones included), nothing for keys without a base or of another sync, follows
/// replaced and forgotten rows, and carries more keys than one statement holds.
async fn base_fingerprints_are_looked_up_without_the_values(store: Box<dyn StateStore>) {
    let run = store.start_run("s", None).await.unwrap();
    let metrics = RunMetrics::default();
    let top = 1u128 << 127;
    let mut entries: Vec<BaseEntry> = (0..MANY)
        .map(|i| {
            let n = i as u128;
            base(
                &format!("[{i:05}]"),
                json!({ "i": i, "name": format!("n{i}") }),
                top | n,
                u128::MAX - n,
            )
        })
        .collect();
    entries.push(base(r#"["x"]"#, json!({}), u128::MAX, 0));
    store
        .commit_two_way(&TwoWayCommit {
            upserts: &entries,
            ..commit("s", run, &metrics)
        })
        .await
        .unwrap();
    // The other sync's row of a shared key must not be found for "s", nor "s"'s for it.
    let other_run = store.start_run("other", None).await.unwrap();
    store
        .commit_two_way(&TwoWayCommit {
            upserts: &[base("[404]", json!({"n": 1}), 4, 4)],
            ..commit("other", other_run, &metrics)
        })
        .await
        .unwrap();

    let mut wanted: Vec<String> = entries.iter().map(|e| e.key.clone()).collect();
    wanted.push("[404]".to_owned());
    let found = store.base_fingerprints("s", &wanted).await.unwrap();
    assert_eq!(
        found.len(),
        entries.len(),
        "keys without a base are left out"
    );
    for entry in &entries {
        assert_eq!(
            found.get(&entry.key),
            Some(&BaseFingerprints {
                a: entry.fingerprint_a,
                b: entry.fingerprint_b
            }),
            "key {}",
            entry.key
        );
    }
    // The same fingerprints as the full lookup's.
    let full = store.base_lookup("s", &wanted[..3]).await.unwrap();
    for (key, entry) in &full {
        assert_eq!(
            (found[key].a, found[key].b),
            (entry.fingerprint_a, entry.fingerprint_b)
        );
    }
    assert_eq!(
        store
            .base_fingerprints("other", &keys(&["[404]", "[00001]"]))
            .await
            .unwrap(),
        HashMap::from([("[404]".to_owned(), BaseFingerprints { a: 4, b: 4 })])
    );
    assert!(store.base_fingerprints("s", &[]).await.unwrap().is_empty());

    // A replaced row gives its new fingerprints, a forgotten one none.
    store
        .commit_two_way(&TwoWayCommit {
            upserts: &[base("[00000]", json!({"i": 0}), 7, top + 7)],
            deletes: &keys(&["[00001]"]),
            ..commit("s", run, &metrics)
        })
        .await
        .unwrap();
    let found = store
        .base_fingerprints("s", &keys(&["[00000]", "[00001]", "[00002]"]))
        .await
        .unwrap();
    assert_eq!(
        found,
        HashMap::from([
            ("[00000]".to_owned(), BaseFingerprints { a: 7, b: top + 7 }),
            (
                "[00002]".to_owned(),
                BaseFingerprints {
                    a: top | 2,
                    b: u128::MAX - 2
                }
            ),
        ])
    );
}

async fn commit_two_way_records_progress_and_checkpoint(store: Box<dyn StateStore>) {
    let run = store.start_run("s", None).await.unwrap();
    let metrics = RunMetrics {
        read: 7,
        updated: 2,
        conflicts: 1,
        ..Default::default()
    };
    let checkpoint = json!({"a": {"cursor": "2024-01-01"}, "b": {"cursor": 17}});
    let conflicts = [conflict(
        "[1]",
        ConflictStatus::Open,
        Some(json!({"n": 1})),
        None,
    )];
    store
        .commit_two_way(&TwoWayCommit {
            checkpoint: Some(&checkpoint),
            upserts: &[base("[2]", json!({"n": 2}), 2, 2)],
            conflicts: &conflicts,
            ..commit("s", run, &metrics)
        })
        .await
        .unwrap();
    assert_eq!(store.run(run).await.unwrap().unwrap().metrics, metrics);
    assert_eq!(store.checkpoint("s").await.unwrap(), Some(checkpoint));
    let stored = store.conflicts(&of_sync("s")).await.unwrap();
    assert_eq!(stored.len(), 1);
    let found = &stored[0];
    assert!(found.id > 0);
    assert_eq!((found.sync.as_str(), found.run), ("s", run));
    assert_eq!(found.a, Some(map(json!({"n": 1}))));
    assert_eq!(found.b, None, "side b deleted the record");
    assert_eq!(found.base, conflicts[0].base);
    assert_eq!(found.fields, ["name", "n"]);
    assert_eq!(
        (found.policy.as_str(), found.decision.as_str()),
        ("manual", "queued")
    );
    assert_eq!(found.status, ConflictStatus::Open);
    assert_eq!(
        (found.resolution.as_ref(), found.resolution_deletes),
        (None, false)
    );
    assert_eq!(
        (found.resolved_by.as_ref(), found.resolved_at.as_ref()),
        (None, None)
    );
    assert_rfc3339(&found.created_at);

    // A run that does not exist, or belongs to another sync, records nothing.
    let other = store.start_run("other", None).await.unwrap();
    for bad_run in [other, run + 1000] {
        let outcome = store
            .commit_two_way(&TwoWayCommit {
                upserts: &[base("[9]", json!({}), 9, 9)],
                conflicts: &conflicts,
                ..commit("s", bad_run, &metrics)
            })
            .await;
        assert!(
            matches!(outcome, Err(StateError::UnknownRun { run }) if run == bad_run),
            "{outcome:?}"
        );
    }
    assert_eq!(store.base_count("s").await.unwrap(), 1);
    assert_eq!(store.conflicts(&of_sync("s")).await.unwrap().len(), 1);

    // Only open and auto conflicts can be committed; a refused commit writes nothing.
    let mut resolved = conflict("[3]", ConflictStatus::Resolved, None, None);
    resolved.decision = "take a".into();
    let refused = store
        .commit_two_way(&TwoWayCommit {
            upserts: &[base("[9]", json!({}), 9, 9)],
            conflicts: &[resolved],
            ..commit("s", run, &RunMetrics::default())
        })
        .await;
    assert_invalid(refused, &["[3]", "resolved"]);
    assert_eq!(store.run(run).await.unwrap().unwrap().metrics, metrics);
    assert_eq!(store.base_count("s").await.unwrap(), 1);
}

async fn an_open_conflict_found_again_is_updated_in_place(store: Box<dyn StateStore>) {
    let metrics = RunMetrics::default();
    let first = store.start_run("s", None).await.unwrap();
    store
        .commit_two_way(&TwoWayCommit {
            conflicts: &[
                conflict(
                    "[1]",
                    ConflictStatus::Open,
                    Some(json!({"name": "a1", "n": 1})),
                    Some(json!({"name": "b1", "n": 1})),
                ),
                conflict(
                    "[2]",
                    ConflictStatus::Auto,
                    Some(json!({"name": "a", "n": 2})),
                    Some(json!({"name": "b", "n": 2})),
                ),
            ],
            ..commit("s", first, &metrics)
        })
        .await
        .unwrap();
    let listed = store.conflicts(&of_sync("s")).await.unwrap();
    assert_eq!(
        listed.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        ["[2]", "[1]"],
        "newest first"
    );
    let (auto, open) = (listed[0].clone(), listed[1].clone());
    assert_eq!(auto.status, ConflictStatus::Auto);
    assert_eq!(auto.resolution, Some(map(json!({"name": "b", "n": 2}))));
    assert_rfc3339(
        auto.resolved_at
            .as_deref()
            .expect("an auto conflict was resolved"),
    );

    // The first run ends, settling its automatic conflict. The next run finds both records in
    // conflict again: the open conflict is updated in place, the auto one is history and gets
    // a new row. Within one commit, the key's later
    // conflict updates its earlier one too.
    store
        .finish_run(
            first,
            &lockstep_state::RunEnd::new(lockstep_core::RunStatus::Succeeded, metrics),
        )
        .await
        .unwrap();
    let second = store.start_run("s", None).await.unwrap();
    let mut again = conflict(
        "[1]",
        ConflictStatus::Open,
        Some(json!({"name": "a2", "n": 1})),
        None,
    );
    again.fields = vec!["name".into()];
    again.policy = "changed".into();
    let mut last = again.clone();
    last.a = Some(map(json!({"name": "a3", "n": 1})));
    last.fields = vec!["name".into(), "n".into(), "extra".into()];
    store
        .commit_two_way(&TwoWayCommit {
            conflicts: &[
                again,
                conflict("[2]", ConflictStatus::Auto, None, Some(json!({"n": 3}))),
                last,
            ],
            ..commit("s", second, &metrics)
        })
        .await
        .unwrap();
    let listed = store.conflicts(&of_sync("s")).await.unwrap();
    assert_eq!(listed.len(), 3, "{listed:#?}");
    let updated = conflict_by_id(store.as_ref(), open.id).await;
    assert_eq!(updated.run, second);
    assert_eq!(updated.a, Some(map(json!({"name": "a3", "n": 1}))));
    assert_eq!(updated.b, None);
    assert_eq!(updated.fields, ["name", "n", "extra"]);
    // What the first run found and decided stays.
    assert_eq!(updated.base, open.base);
    assert_eq!(updated.policy, "manual");
    assert_eq!(updated.decision, "queued");
    assert_eq!(updated.created_at, open.created_at);
    assert_eq!(updated.status, ConflictStatus::Open);
    assert_eq!(conflict_by_id(store.as_ref(), auto.id).await, auto);

    // Another sync's conflict on the same key is its own.
    let other = store.start_run("t", None).await.unwrap();
    store
        .commit_two_way(&TwoWayCommit {
            conflicts: &[conflict("[1]", ConflictStatus::Open, None, None)],
            ..commit("t", other, &metrics)
        })
        .await
        .unwrap();
    assert_eq!(conflict_by_id(store.as_ref(), open.id).await, updated);

    let unsettled = store.unsettled_conflicts("s").await.unwrap();
    assert_eq!(unsettled.len(), 1);
    assert_eq!(unsettled["[1]"], updated);
    assert_eq!(
        store.open_conflict_counts().await.unwrap(),
        HashMap::from([("s".to_owned(), 1), ("t".to_owned(), 1)])
    );

    // Once resolved, the key's next conflict is a new row, and the newest is the one a run
    // sees; applying the resolution settles the old one.
    store
        .resolve_conflict(open.id, &resolution("take a", Some(json!({"name": "a3"}))))
        .await
        .unwrap();
    let unsettled = store.unsettled_conflicts("s").await.unwrap();
    assert_eq!(unsettled["[1]"].status, ConflictStatus::Resolved);
    let third = store.start_run("s", None).await.unwrap();
    store
        .commit_two_way(&TwoWayCommit {
            conflicts: &[conflict(
                "[1]",
                ConflictStatus::Open,
                Some(json!({"n": 9})),
                Some(json!({"n": 8})),
            )],
            ..commit("s", third, &metrics)
        })
        .await
        .unwrap();
    let unsettled = store.unsettled_conflicts("s").await.unwrap();
    let newest = &unsettled["[1]"];
    assert!(newest.id > open.id);
    assert_eq!((newest.status, newest.run), (ConflictStatus::Open, third));
    store
        .commit_two_way(&TwoWayCommit {
            applied: &[open.id],
            ..commit("s", third, &metrics)
        })
        .await
        .unwrap();
    assert_eq!(
        conflict_by_id(store.as_ref(), open.id).await.status,
        ConflictStatus::Applied
    );
    assert_eq!(store.unsettled_conflicts("s").await.unwrap().len(), 1);
    assert_eq!(store.conflicts(&of_sync("s")).await.unwrap().len(), 4);
}

async fn a_stale_lease_token_writes_nothing(store: Box<dyn StateStore>) {
    let metrics = RunMetrics {
        read: 1,
        ..Default::default()
    };
    let run = store.start_run("s", None).await.unwrap();
    let before = json!({"a": 1, "b": 1});
    let kept = base("[1]", json!({"n": 1}), 1, 1);
    store
        .commit_two_way(&TwoWayCommit {
            upserts: std::slice::from_ref(&kept),
            conflicts: &[
                conflict("[2]", ConflictStatus::Open, None, None),
                conflict("[3]", ConflictStatus::Open, None, None),
            ],
            checkpoint: Some(&before),
            ..commit("s", run, &metrics)
        })
        .await
        .unwrap();
    let open = store.unsettled_conflicts("s").await.unwrap();
    let (two, three) = (open["[2]"].clone(), open["[3]"].clone());
    store
        .resolve_conflict(two.id, &resolution("take b", None))
        .await
        .unwrap();
    let resolved = conflict_by_id(store.as_ref(), two.id).await;

    let holder = LeaseHolder {
        host: "h".into(),
        pid: 1,
    };
    let ttl = Duration::from_secs(60);
    let stale = store.acquire_lease("s", &holder, ttl).await.unwrap();
    store.release_lease(&stale).await.unwrap();
    let current = store.acquire_lease("s", &holder, ttl).await.unwrap();
    assert!(current.token > stale.token);

    let after = json!({"a": 2, "b": 2});
    let more = RunMetrics {
        read: 50,
        ..Default::default()
    };
    let upserts = [
        base("[1]", json!({"n": 100}), u128::MAX, 1 << 127),
        base("[4]", json!({"n": 4}), 4, 4),
    ];
    let conflicts = [
        conflict("[3]", ConflictStatus::Open, Some(json!({"n": 33})), None),
        conflict("[5]", ConflictStatus::Auto, None, Some(json!({"n": 5}))),
    ];
    let applied = [two.id];
    let change = |token| TwoWayCommit {
        lease_token: Some(token),
        upserts: &upserts,
        deletes: &[],
        conflicts: &conflicts,
        applied: &applied,
        checkpoint: Some(&after),
        ..commit("s", run, &more)
    };
    match store.commit_two_way(&change(stale.token)).await {
        Err(StateError::LeaseLost { sync }) => assert_eq!(sync, "s"),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    // Nothing of the refused commit is there.
    assert_eq!(store.run(run).await.unwrap().unwrap().metrics, metrics);
    assert_eq!(store.checkpoint("s").await.unwrap(), Some(before.clone()));
    let all = keys(&["[1]", "[4]"]);
    assert_eq!(
        store.base_lookup("s", &all).await.unwrap(),
        HashMap::from([("[1]".to_owned(), kept.clone())])
    );
    assert_eq!(conflict_by_id(store.as_ref(), two.id).await, resolved);
    assert_eq!(conflict_by_id(store.as_ref(), three.id).await, three);
    assert_eq!(store.conflicts(&of_sync("s")).await.unwrap().len(), 2);

    // The current token commits all of it.
    store.commit_two_way(&change(current.token)).await.unwrap();
    assert_eq!(store.run(run).await.unwrap().unwrap().metrics, more);
    assert_eq!(store.checkpoint("s").await.unwrap(), Some(after));
    let found = store.base_lookup("s", &all).await.unwrap();
    assert_eq!(found["[1]"], upserts[0]);
    assert_eq!(found["[4]"], upserts[1]);
    assert_eq!(
        conflict_by_id(store.as_ref(), two.id).await.status,
        ConflictStatus::Applied
    );
    assert_eq!(
        conflict_by_id(store.as_ref(), three.id).await.a,
        Some(map(json!({"n": 33})))
    );
    assert_eq!(store.conflicts(&of_sync("s")).await.unwrap().len(), 3);
}

async fn only_an_open_conflict_can_be_resolved(store: Box<dyn StateStore>) {
    let metrics = RunMetrics::default();
    let run = store.start_run("s", None).await.unwrap();
    store
        .commit_two_way(&TwoWayCommit {
            conflicts: &[
                conflict("[1]", ConflictStatus::Open, Some(json!({"n": 1})), None),
                conflict("[2]", ConflictStatus::Open, None, Some(json!({"n": 2}))),
                conflict("[3]", ConflictStatus::Auto, None, Some(json!({"n": 3}))),
            ],
            ..commit("s", run, &metrics)
        })
        .await
        .unwrap();
    let unsettled = store.unsettled_conflicts("s").await.unwrap();
    let (one, two) = (unsettled["[1]"].id, unsettled["[2]"].id);
    let auto = store.conflicts(&of_sync("s")).await.unwrap()[0].clone();
    assert_eq!(auto.status, ConflictStatus::Auto);

    let values = json!({"name": "chosen", "n": 1.5, "nested": {"list": [1, "two", null]}});
    store
        .resolve_conflict(one, &resolution("set", Some(values.clone())))
        .await
        .unwrap();
    let resolved = conflict_by_id(store.as_ref(), one).await;
    assert_eq!(resolved.status, ConflictStatus::Resolved);
    assert_eq!(resolved.decision, "set");
    assert_eq!(resolved.resolution, Some(map(values)));
    assert!(!resolved.resolution_deletes);
    assert_eq!(resolved.resolved_by.as_deref(), Some("ada@workstation"));
    assert_rfc3339(resolved.resolved_at.as_deref().expect("a resolution time"));
    // What the run found stays.
    assert_eq!(resolved.a, Some(map(json!({"n": 1}))));
    assert_eq!(resolved.policy, "manual");

    // No values: the resolution deletes the record on both sides.
    store
        .resolve_conflict(two, &resolution("take a", None))
        .await
        .unwrap();
    let deleting = conflict_by_id(store.as_ref(), two).await;
    assert_eq!(deleting.status, ConflictStatus::Resolved);
    assert_eq!(
        (deleting.resolution, deleting.resolution_deletes),
        (None, true)
    );

    // Resolved, auto, applied and missing conflicts are refused, and stay as they were.
    let again = store
        .resolve_conflict(one, &resolution("take b", Some(json!({}))))
        .await;
    assert_invalid(again, &[&one.to_string(), "resolved"]);
    assert_eq!(conflict_by_id(store.as_ref(), one).await, resolved);
    let decided = store
        .resolve_conflict(auto.id, &resolution("take a", None))
        .await;
    assert_invalid(decided, &[&auto.id.to_string(), "auto"]);
    assert_eq!(conflict_by_id(store.as_ref(), auto.id).await, auto);
    store
        .commit_two_way(&TwoWayCommit {
            applied: &[one],
            ..commit("s", run, &metrics)
        })
        .await
        .unwrap();
    let applied = store
        .resolve_conflict(one, &resolution("set", Some(json!({}))))
        .await;
    assert_invalid(applied, &[&one.to_string(), "applied"]);
    let missing = one + two + auto.id + 1000;
    let outcome = store
        .resolve_conflict(missing, &resolution("set", None))
        .await;
    assert_invalid(outcome, &[&missing.to_string(), "does not exist"]);
    assert!(store.conflict(missing).await.unwrap().is_none());
    assert!(store.open_conflict_counts().await.unwrap().is_empty());
}

async fn conflicts_are_listed_newest_first_by_filter(store: Box<dyn StateStore>) {
    let metrics = RunMetrics::default();
    let s = store.start_run("s", None).await.unwrap();
    let t = store.start_run("t", None).await.unwrap();
    for (sync, run, status, key) in [
        ("s", s, ConflictStatus::Open, "[1]"),
        ("t", t, ConflictStatus::Open, "[1]"),
        ("s", s, ConflictStatus::Auto, "[2]"),
        ("s", s, ConflictStatus::Open, "[3]"),
        ("t", t, ConflictStatus::Auto, "[4]"),
        ("s", s, ConflictStatus::Open, "[5]"),
    ] {
        store
            .commit_two_way(&TwoWayCommit {
                conflicts: &[conflict(key, status, None, None)],
                ..commit(sync, run, &metrics)
            })
            .await
            .unwrap();
    }
    let unsettled = store.unsettled_conflicts("s").await.unwrap();
    store
        .resolve_conflict(unsettled["[3]"].id, &resolution("take a", None))
        .await
        .unwrap();

    let listed = |filter: ConflictFilter| {
        let store = &store;
        async move {
            store
                .conflicts(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|c| format!("{} {} {}", c.sync, c.key, c.status))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed(ConflictFilter::default()).await,
        [
            "s [5] open",
            "t [4] auto",
            "s [3] resolved",
            "s [2] auto",
            "t [1] open",
            "s [1] open"
        ]
    );
    assert_eq!(
        listed(ConflictFilter {
            limit: 2,
            ..of_sync("s")
        })
        .await,
        ["s [5] open", "s [3] resolved"]
    );
    assert_eq!(
        listed(ConflictFilter {
            statuses: vec![ConflictStatus::Open, ConflictStatus::Resolved],
            ..of_sync("s")
        })
        .await,
        ["s [5] open", "s [3] resolved", "s [1] open"]
    );
    assert_eq!(
        listed(ConflictFilter {
            statuses: vec![ConflictStatus::Auto],
            ..Default::default()
        })
        .await,
        ["t [4] auto", "s [2] auto"]
    );
    assert!(listed(of_sync("nobody")).await.is_empty());
    let unsettled = store.unsettled_conflicts("s").await.unwrap();
    let mut unsettled_keys: Vec<&str> = unsettled.keys().map(String::as_str).collect();
    unsettled_keys.sort_unstable();
    assert_eq!(unsettled_keys, ["[1]", "[3]", "[5]"]);
    assert!(store
        .unsettled_conflicts("nobody")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.open_conflict_counts().await.unwrap(),
        HashMap::from([("s".to_owned(), 2), ("t".to_owned(), 1)])
    );

    // Marking conflicts applied touches only the commit's sync's resolved ones.
    let every: Vec<i64> = store
        .conflicts(&ConflictFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    store
        .commit_two_way(&TwoWayCommit {
            applied: &every,
            ..commit("s", s, &metrics)
        })
        .await
        .unwrap();
    assert_eq!(
        listed(ConflictFilter::default()).await,
        [
            "s [5] open",
            "t [4] auto",
            "s [3] applied",
            "s [2] auto",
            "t [1] open",
            "s [1] open"
        ]
    );
}

async fn reset_sync_forgets_the_base_ledger_but_not_conflicts(store: Box<dyn StateStore>) {
    let metrics = RunMetrics::default();
    let checkpoint = json!({"a": 1});
    for sync in ["s", "t"] {
        let run = store.start_run(sync, None).await.unwrap();
        store
            .commit_two_way(&TwoWayCommit {
                upserts: &[
                    base("[1]", json!({"n": 1}), 1, 2),
                    base("[2]", json!({"n": 2}), 3, 4),
                ],
                conflicts: &[conflict("[3]", ConflictStatus::Open, None, None)],
                checkpoint: Some(&checkpoint),
                ..commit(sync, run, &metrics)
            })
            .await
            .unwrap();
    }
    store.reset_sync("s").await.unwrap();
    assert_eq!(store.base_count("s").await.unwrap(), 0);
    assert!(store
        .base_lookup("s", &keys(&["[1]", "[2]"]))
        .await
        .unwrap()
        .is_empty());
    assert!(store.base_keys("s", None, 10).await.unwrap().is_empty());
    assert_eq!(store.checkpoint("s").await.unwrap(), None);
    // Conflicts are history, and other syncs keep everything.
    assert_eq!(store.unsettled_conflicts("s").await.unwrap().len(), 1);
    assert_eq!(store.conflicts(&of_sync("s")).await.unwrap().len(), 1);
    assert_eq!(store.base_count("t").await.unwrap(), 2);
    assert_eq!(store.checkpoint("t").await.unwrap(), Some(checkpoint));
}

/// A conflict recorded by a run that was killed before its final commit is found again by
/// its rerun (adopted: one row). Once a run of the sync has committed, even one that found the
/// record agreeing (the killed run had written both sides), that conflict is history: a
/// conflict with an equal base many runs later is a new row, not the old one moved.
async fn a_killed_runs_conflict_is_adopted_only_until_a_later_run_commits(
    store: Box<dyn StateStore>,
) {
    let metrics = RunMetrics::default();
    let found = |a: i64| {
        conflict(
            "[1]",
            ConflictStatus::Auto,
            Some(json!({"name": "a", "n": a})),
            Some(json!({"name": "b", "n": 1})),
        )
    };
    let succeeded = lockstep_state::RunEnd::new(lockstep_core::RunStatus::Succeeded, metrics);

    // Run 1 records the conflict, then is killed (it never ends). Its rerun finds it again.
    let killed = store.start_run("s", None).await.unwrap();
    store
        .commit_two_way(&TwoWayCommit {
            conflicts: &[found(1)],
            ..commit("s", killed, &metrics)
        })
        .await
        .unwrap();
    let rerun = store.start_run("s", None).await.unwrap();
    store
        .commit_two_way(&TwoWayCommit {
            conflicts: &[found(2)],
            ..commit("s", rerun, &metrics)
        })
        .await
        .unwrap();
    let listed = store.conflicts(&of_sync("s")).await.unwrap();
    assert_eq!(
        listed.len(),
        1,
        "the rerun adopts the killed run's conflict"
    );
    assert_eq!(listed[0].run, rerun);
    assert_eq!(
        listed[0].a,
        Some(map(json!({"name": "a", "n": 1}))),
        "kept as first recorded"
    );
    store.finish_run(rerun, &succeeded).await.unwrap();

    // Run 3 records a conflict on another key and is killed; run 4 finds that record agreeing
    // (no conflict) and succeeds. Run 5 finds a conflict on that key with the same base.
    let killed = store.start_run("s", None).await.unwrap();
    let mut other = found(1);
    other.key = "[2]".into();
    store
        .commit_two_way(&TwoWayCommit {
            conflicts: &[other.clone()],
            ..commit("s", killed, &metrics)
        })
        .await
        .unwrap();
    let agreeing = store.start_run("s", None).await.unwrap();
    store
        .commit_two_way(&commit("s", agreeing, &metrics))
        .await
        .unwrap();
    store.finish_run(agreeing, &succeeded).await.unwrap();
    let later = store.start_run("s", None).await.unwrap();
    store
        .commit_two_way(&TwoWayCommit {
            conflicts: &[other],
            ..commit("s", later, &metrics)
        })
        .await
        .unwrap();
    let mut runs: Vec<i64> = store
        .conflicts(&of_sync("s"))
        .await
        .unwrap()
        .iter()
        .filter(|c| c.key == "[2]")
        .map(|c| c.run)
        .collect();
    runs.sort_unstable();
    assert_eq!(
        runs,
        [killed, later],
        "a later conflict with an equal base is a new conflict once a run committed"
    );
}

fn refused(key: &str, reason: &str, name: &str) -> RejectedRecord {
    RejectedRecord {
        id: 0,
        sync: String::new(),
        run: 0,
        key: Some(key.to_owned()),
        field: Some("name".into()),
        reason: reason.to_owned(),
        raw: json!({ "name": name }),
        created_at: None,
        retried: None,
    }
}

fn rejects<'a>(
    run: i64,
    metrics: &'a RunMetrics,
    refused: &'a [RejectedRecord],
    resolved: &'a [String],
    lease_token: Option<i64>,
) -> TwoWayRejects<'a> {
    TwoWayRejects {
        sync: "s",
        run,
        lease_token,
        metrics,
        refused,
        resolved,
        note: "resolved in a test",
    }
}

async fn pending_of(store: &dyn StateStore, sync: &str) -> Vec<RejectedRecord> {
    let mut records = store
        .rejected(&RejectedFilter {
            sync: Some(sync.into()),
            pending_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    records.reverse();
    records
}

/// A two-way run's refusals: new keys get a pending reject, a key refused again has its
/// pending one updated in place (older duplicates superseded), resolved keys are resolved,
/// and a stale lease token writes none of it.
async fn two_way_rejects_are_kept_once_per_key_and_resolved(store: Box<dyn StateStore>) {
    let metrics = RunMetrics {
        rejected: 2,
        ..Default::default()
    };
    let first = store.start_run("s", None).await.unwrap();
    store
        .commit_two_way_rejects(&rejects(
            first,
            &metrics,
            &[
                refused("[1]", "too long", "Annabelle"),
                refused("[2]", "no", "Roberto"),
            ],
            &[],
            None,
        ))
        .await
        .unwrap();
    // Another sync's reject of the same key.
    let other = store.start_run("other", None).await.unwrap();
    store
        .commit_two_way_rejects(&TwoWayRejects {
            sync: "other",
            ..rejects(other, &metrics, &[refused("[1]", "x", "X")], &[], None)
        })
        .await
        .unwrap();
    let stored = pending_of(store.as_ref(), "s").await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].run, first);
    assert_eq!(stored[0].raw, json!({"name": "Annabelle"}));
    assert_eq!(stored[0].field.as_deref(), Some("name"));
    assert_eq!(store.run(first).await.unwrap().unwrap().metrics, metrics);

    // Run 2: [1] refused again, [2] resolved, [3] new.
    let second = store.start_run("s", None).await.unwrap();
    store
        .commit_two_way_rejects(&rejects(
            second,
            &metrics,
            &[
                refused("[1]", "again (attempt 2)", "Annabel"),
                refused("[3]", "new", "C"),
            ],
            &keys(&["[2]"]),
            None,
        ))
        .await
        .unwrap();
    let now = pending_of(store.as_ref(), "s").await;
    let seen: Vec<(&str, i64, &str)> = now
        .iter()
        .map(|r| (r.key.as_deref().unwrap(), r.run, r.reason.as_str()))
        .collect();
    assert_eq!(
        seen,
        [("[1]", second, "again (attempt 2)"), ("[3]", second, "new")]
    );
    assert_eq!(now[0].id, stored[0].id, "updated in place");
    assert_eq!(now[0].created_at, stored[0].created_at);
    assert_eq!(now[0].raw, json!({"name": "Annabel"}));
    let all = store
        .rejected(&RejectedFilter {
            sync: Some("s".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let two = all
        .iter()
        .find(|r| r.key.as_deref() == Some("[2]"))
        .unwrap();
    assert_eq!(two.retried.as_deref(), Some("resolved in a test"));
    assert_eq!(pending_of(store.as_ref(), "other").await.len(), 1);

    // A stale lease token writes nothing; the current one resolves and refuses together
    // (resolved first, so a key in both stays pending).
    let holder = LeaseHolder {
        host: "h".into(),
        pid: 1,
    };
    let ttl = Duration::from_secs(60);
    let stale = store.acquire_lease("s", &holder, ttl).await.unwrap();
    store.release_lease(&stale).await.unwrap();
    let current = store.acquire_lease("s", &holder, ttl).await.unwrap();
    let third = store.start_run("s", None).await.unwrap();
    let resolved = keys(&["[1]", "[3]"]);
    let refusals = [refused("[3]", "still no", "C")];
    match store
        .commit_two_way_rejects(&rejects(
            third,
            &metrics,
            &refusals,
            &resolved,
            Some(stale.token),
        ))
        .await
    {
        Err(StateError::LeaseLost { sync }) => assert_eq!(sync, "s"),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    assert_eq!(pending_of(store.as_ref(), "s").await, now);
    store
        .commit_two_way_rejects(&rejects(
            third,
            &metrics,
            &refusals,
            &resolved,
            Some(current.token),
        ))
        .await
        .unwrap();
    let last = pending_of(store.as_ref(), "s").await;
    assert_eq!(last.len(), 1, "{last:?}");
    assert_eq!(
        (last[0].key.as_deref(), last[0].run, last[0].reason.as_str()),
        (Some("[3]"), third, "still no")
    );
    // A keyless refusal is refused.
    let keyless = [RejectedRecord {
        key: None,
        ..refused("[9]", "x", "x")
    }];
    assert_invalid(
        store
            .commit_two_way_rejects(&rejects(third, &metrics, &keyless, &[], None))
            .await,
        &["no key"],
    );
}

on_both_backends!(
    base_ledger_round_trips_fingerprints_and_json,
    base_ledger_handles_more_keys_than_one_statement_holds,
    base_fingerprints_are_looked_up_without_the_values,
    commit_two_way_records_progress_and_checkpoint,
    an_open_conflict_found_again_is_updated_in_place,
    a_stale_lease_token_writes_nothing,
    only_an_open_conflict_can_be_resolved,
    conflicts_are_listed_newest_first_by_filter,
    reset_sync_forgets_the_base_ledger_but_not_conflicts,
    a_killed_runs_conflict_is_adopted_only_until_a_later_run_commits,
    two_way_rejects_are_kept_once_per_key_and_resolved,
);

/// Generates, for each named test body, a test on an in-memory SQLite store
/// (`sqlite_memory::<name>`): a pool of one connection, which a statement run on the pool
/// inside a transaction would deadlock.
macro_rules! on_sqlite_in_memory {
    ($($name:ident),* $(,)?) => {
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let store = lockstep_state::open("sqlite::memory:")
                        .await
                        .expect("cannot open an in-memory store");
                    let outcome = tokio::time::timeout(
                        std::time::Duration::from_secs(60),
                        super::$name(store),
                    )
                    .await;
                    assert!(outcome.is_ok(), "the test did not finish within a minute");
                }
            )*
        }
    };
}

on_sqlite_in_memory!(
    base_ledger_round_trips_fingerprints_and_json,
    base_ledger_handles_more_keys_than_one_statement_holds,
    base_fingerprints_are_looked_up_without_the_values,
    commit_two_way_records_progress_and_checkpoint,
    an_open_conflict_found_again_is_updated_in_place,
    a_stale_lease_token_writes_nothing,
    only_an_open_conflict_can_be_resolved,
    conflicts_are_listed_newest_first_by_filter,
    reset_sync_forgets_the_base_ledger_but_not_conflicts,
    a_killed_runs_conflict_is_adopted_only_until_a_later_run_commits,
    two_way_rejects_are_kept_once_per_key_and_resolved,
);
