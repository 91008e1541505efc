//! The action log (what people did through the daemon's status page, with who and when), on
//! both backends.

// Not every helper of the shared support module is used here.
#[macro_use]
#[allow(dead_code)]
mod support;

use lockstep_state::{NewAction, StateStore};

async fn actions_are_recorded_with_actor_and_time_newest_first(store: Box<dyn StateStore>) {
    let first = store
        .record_action(&NewAction {
            actor: "ops",
            action: "deletes-approve",
            sync: "items",
            detail: "approved 3 held deletes",
        })
        .await
        .unwrap();
    let second = store
        .record_action(&NewAction {
            actor: "token",
            action: "conflict-resolve",
            sync: "contacts",
            detail: "resolved conflict 4 (take a)",
        })
        .await
        .unwrap();
    assert!(second.id > first.id);
    assert!(
        first.at.ends_with('Z') && first.at <= second.at,
        "{first:?} {second:?}"
    );
    assert_eq!(
        store.actions(None, 10).await.unwrap(),
        vec![second.clone(), first.clone()]
    );
    assert_eq!(store.actions(Some("items"), 10).await.unwrap(), vec![first]);
    assert_eq!(store.actions(None, 1).await.unwrap(), vec![second]);
    assert!(store.actions(Some("none"), 10).await.unwrap().is_empty());
}

on_both_backends!(actions_are_recorded_with_actor_and_time_newest_first);
