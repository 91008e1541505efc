//! Runs the Lockstep conformance kit against the library `cargo test` just built.

use std::fs;
use std::time::{Duration, SystemTime};

use lockstep_test_support::{cdylib_path, checks, Conformance, Outcome};
use serde_json::json;

#[tokio::test]
async fn the_source_passes_the_conformance_kit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("contacts-1.csv");
    let mut text = String::from("id,name,score\n");
    for id in 1..=7 {
        text.push_str(&format!("{id},\"Contact {id}, «ü»\",{}\n", id as f64 / 4.0));
    }
    fs::write(&path, text).unwrap();
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    let report = Conformance::new(cdylib_path("lockstep_connector_files"))
        .source_config(json!({ "streams": { "contacts": {
            "path": format!("{}/contacts-*.csv", dir.path().display()),
            "primary_key": ["id"],
            "modified_field": "_modified",
        }}}))
        .stream("contacts")
        .bad_config(json!({ "dir": 5 }))
        .bad_config(json!({ "streams": { "s": { "path": "a.csv", "encodingg": "utf-8" } } }))
        .run()
        .await
        .assert_passed();
    println!("{report}");
    for name in [
        checks::SOURCE_FULL_READ,
        checks::SOURCE_RESUME_FULL,
        checks::SOURCE_RESUME_INCREMENTAL,
    ] {
        assert!(report.check(name).unwrap().passed(), "{report}");
    }
}

/// The kit knows no append-only destination: it expects a second upsert of the same keys to
/// update them and a delete to remove them. A files destination adds records (and refuses
/// deletes as unsupported), so those two checks cannot pass; every other one must.
#[tokio::test]
async fn the_destination_passes_every_check_an_append_only_destination_can() {
    let dir = tempfile::tempdir().unwrap();
    let report = Conformance::new(cdylib_path("lockstep_connector_files"))
        .destination_config(json!({ "dir": dir.path(), "format": "jsonl" }))
        .bad_config(json!({ "dir": "" }))
        .bad_config(json!({ "dir": dir.path(), "file_name": "{stream}.csv" }))
        .run()
        .await;
    println!("{report}");
    for check in &report.checks {
        match check.name {
            checks::DESTINATION_UPSERT_AGAIN => match &check.outcome {
                Outcome::Fail(reason) => {
                    // Five more records were added, not updated.
                    assert!(reason.contains("reported 5 inserted"), "{report}")
                }
                other => panic!("expected the append-only failure, got {other:?}\n{report}"),
            },
            // The source role is checked by the test above; without a source config the kit
            // says so as a skip.
            checks::SOURCE_OPEN => match &check.outcome {
                Outcome::Skip(reason) => {
                    assert!(reason.contains("no source config was given"), "{report}")
                }
                other => panic!("expected the source check to be skipped, got {other:?}\n{report}"),
            },
            checks::DESTINATION_DELETE => match &check.outcome {
                Outcome::Skip(reason) => {
                    assert!(reason.contains("cannot delete records"), "{report}")
                }
                other => panic!("expected delete to be unsupported, got {other:?}\n{report}"),
            },
            _ => assert!(
                check.passed(),
                "{}: {:?}\n{report}",
                check.name,
                check.outcome
            ),
        }
    }
    assert!(report.check(checks::DESTINATION_READ_BACK).is_some());
}
