//! Runs the conformance kit against the `keystore` plugin that `cargo test` built.

use lockstep_test_support::{cdylib_path, checks, Conformance};
use serde_json::json;

#[tokio::test]
async fn the_plugin_passes_the_conformance_kit() {
    let dir = tempfile::tempdir().unwrap();
    // ANCHOR: conformance
    let report = Conformance::new(cdylib_path("lockstep_connector_keystore"))
        // A destination-only connector needs a destination config only. The kit writes a
        // stream of its own (`lockstep_conformance_<unique>`): point it at scratch space.
        .destination_config(json!({ "dir": dir.path() }))
        .bad_config(json!({ "dir": dir.path().join("missing") }))
        .run()
        .await
        .assert_passed();
    // ANCHOR_END: conformance
    println!("{report}");
    // The checks that need no source role ran and passed.
    for name in [checks::DESTINATION_OPEN_STREAM, checks::DESTINATION_UPSERT] {
        assert!(report.check(name).is_some_and(|c| c.passed()), "{report}");
    }
}
