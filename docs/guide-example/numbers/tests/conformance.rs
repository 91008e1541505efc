//! Runs the conformance kit against the `numbers` plugin that `cargo test` built.

// ANCHOR: conformance
use lockstep_test_support::{cdylib_path, Conformance};
use serde_json::json;

#[tokio::test]
async fn the_plugin_passes_the_conformance_kit() {
    let report = Conformance::new(cdylib_path("lockstep_connector_numbers"))
        // A source-only connector needs a source config only.
        .source_config(json!({ "count": 7 }))
        .stream("numbers")
        // Configs it must refuse with a config error (besides the kit's own).
        .bad_config(json!({ "count": 0 }))
        .bad_config(json!({ "cuont": 7 }))
        .run()
        .await
        // Fails the test, listing every check with its reason, if any check failed.
        .assert_passed();
    println!("{report}");
}
// ANCHOR_END: conformance
