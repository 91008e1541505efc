//! Runs the Lockstep conformance kit against the library `cargo test` just built.

use std::fs;

use lockstep_test_support::{cdylib_path, Conformance};
use serde_json::json;

#[tokio::test]
async fn the_built_plugin_passes_the_conformance_kit() {
    // A source directory with one inferred stream and one described by a schema file.
    let source = tempfile::tempdir().unwrap();
    let contacts = (1..=7)
        .rev()
        .map(|id| {
            json!({"id": id, "name": format!("contact {id}"), "score": id as f64 / 4.0}).to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(source.path().join("contacts.jsonl"), contacts).unwrap();
    fs::write(
        source.path().join("tags.schema.json"),
        json!({
            "name": "tags",
            "fields": [{"name": "tag", "type": "text", "nullable": false}],
            "primary_key": ["tag"]
        })
        .to_string(),
    )
    .unwrap();
    fs::write(
        source.path().join("tags.jsonl"),
        "{\"tag\": \"b\"}\n{\"tag\": \"a\"}\n",
    )
    .unwrap();

    // The destination checks write a new stream of their own into an empty directory.
    let destination = tempfile::tempdir().unwrap();

    let report = Conformance::new(cdylib_path("lockstep_connector_example"))
        .source_config(json!({ "dir": source.path() }))
        .stream("contacts")
        .bad_config(json!({ "dir": source.path().join("missing") }))
        .bad_config(json!({ "directory": source.path() }))
        .destination_config(json!({ "dir": destination.path() }))
        .run()
        .await
        .assert_passed();
    println!("{report}");
}
