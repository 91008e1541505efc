//! Deletes waiting behind the mass-delete guard: recorded, cancelled, held, approved,
//! listed and discarded, on both backends.

// Not every helper of the shared support module is used here.
#[macro_use]
#[allow(dead_code)]
mod support;

use std::time::Duration;

use lockstep_state::{
    DeleteOrigin, DeleteStatus, LeaseHolder, PendingDeleteChange, StateError, StateStore,
};

fn keys(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|k| format!("[{k:04}]")).collect()
}

fn change<'a>(
    run: i64,
    token: Option<i64>,
    add: &'a [String],
    cancel: &'a [String],
) -> PendingDeleteChange<'a> {
    PendingDeleteChange {
        sync: "s",
        run,
        lease_token: token,
        origin: DeleteOrigin::Tombstone,
        add,
        cancel,
    }
}

async fn pending_deletes_move_from_pending_to_held_to_approved_and_go(store: Box<dyn StateStore>) {
    let run = store.start_run("s", None).await.unwrap();
    let holder = LeaseHolder {
        host: "h".into(),
        pid: 1,
    };
    let lease = store
        .acquire_lease("s", &holder, Duration::from_secs(60))
        .await
        .unwrap();
    // 1,500 keys: more than one statement's worth.
    let found = keys(0..1500);
    let cancelled = store
        .change_pending_deletes(&change(run, Some(lease.token), &found, &[]))
        .await
        .unwrap();
    assert_eq!(cancelled, 0);
    // Recording a key again keeps its row; a key seen again in the source cancels its row.
    let again = store
        .change_pending_deletes(&change(
            run,
            Some(lease.token),
            &found[..10],
            &found[10..20],
        ))
        .await
        .unwrap();
    assert_eq!(again, 10);
    let summary = store.pending_deletes("s", 3).await.unwrap();
    assert_eq!(
        (summary.pending, summary.held, summary.approved),
        (1490, 0, 0)
    );
    assert_eq!(summary.sample, ["[0000]", "[0001]", "[0002]"]);
    assert_eq!(summary.first_run, Some(run));
    assert!(summary.since.is_some());

    // Past the guard: pending becomes held, and survives further runs' changes.
    let held = store
        .set_pending_delete_status("s", &[DeleteStatus::Pending], DeleteStatus::Held, None)
        .await
        .unwrap();
    assert_eq!(held, 1490);
    store
        .change_pending_deletes(&change(run, Some(lease.token), &found[..5], &[]))
        .await
        .unwrap();
    assert_eq!(store.pending_deletes("s", 0).await.unwrap().held, 1490);

    // Paging through held keys in byte order.
    let first = store
        .pending_delete_keys("s", Some(DeleteStatus::Held), None, None, 1000)
        .await
        .unwrap();
    let rest = store
        .pending_delete_keys(
            "s",
            Some(DeleteStatus::Held),
            Some(DeleteOrigin::Tombstone),
            first.last().map(|k| k.as_str()),
            1000,
        )
        .await
        .unwrap();
    assert_eq!(first.len() + rest.len(), 1490);
    let by_reconciliation = store
        .pending_delete_keys("s", None, Some(DeleteOrigin::Reconcile), None, 10)
        .await
        .unwrap();
    assert!(by_reconciliation.is_empty(), "{by_reconciliation:?}");
    assert!(first.windows(2).all(|w| w[0] < w[1]) && first.last() < rest.first());

    // A stale lease token changes nothing.
    let taken = store.expire_lease("s", &holder).await.unwrap();
    assert!(taken);
    let newer = store
        .acquire_lease("s", &holder, Duration::from_secs(60))
        .await
        .unwrap();
    let refused = store
        .change_pending_deletes(&change(run, Some(lease.token), &[], &found))
        .await;
    assert!(
        matches!(refused, Err(StateError::LeaseLost { .. })),
        "{refused:?}"
    );
    let refused = store
        .set_pending_delete_status(
            "s",
            &[DeleteStatus::Held],
            DeleteStatus::Approved,
            Some(lease.token),
        )
        .await;
    assert!(matches!(refused, Err(StateError::LeaseLost { .. })));
    assert_eq!(store.pending_deletes("s", 0).await.unwrap().held, 1490);

    // Approved, then applied in part; the rest discarded.
    let approved = store
        .set_pending_delete_status(
            "s",
            &[DeleteStatus::Held, DeleteStatus::Pending],
            DeleteStatus::Approved,
            Some(newer.token),
        )
        .await
        .unwrap();
    assert_eq!(approved, 1490);
    store
        .change_pending_deletes(&change(run, Some(newer.token), &[], &first))
        .await
        .unwrap();
    let left = store.pending_deletes("s", 1).await.unwrap();
    assert_eq!((left.held, left.approved), (0, 490));
    assert_eq!(
        store
            .discard_pending_deletes("s", DeleteStatus::Approved)
            .await
            .unwrap(),
        490
    );
    assert_eq!(store.pending_deletes("s", 5).await.unwrap().total(), 0);
    // Other syncs are untouched by all of this.
    assert_eq!(store.pending_deletes("other", 5).await.unwrap().total(), 0);
}

on_both_backends!(pending_deletes_move_from_pending_to_held_to_approved_and_go);
