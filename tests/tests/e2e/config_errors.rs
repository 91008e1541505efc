//! Bad config files through `lockstep validate`: every error is reported, each with the
//! file, the line and a hint, and secrets never show.

use std::path::Path;

use lockstep_e2e::{lockstep, run};

const GOOD: &str = r#"[state]
url = "sqlite://state.db"

[connections.crm]
connector = "sqlite"
config = { path = "crm.db" }

[connections.mkt]
connector = "sqlite"
config = { path = "mkt.db", note = "${LOCKSTEP_TEST_SECRET}" }

[syncs.contacts]
source = "crm.contacts"
destination = "mkt.subscribers"
mode = "incremental"
cursor = "updated_at"
"#;

/// Runs `validate --offline` on `text` and returns (exit code, stderr).
fn validate(dir: &Path, text: &str) -> (i32, String) {
    std::fs::write(dir.join("lockstep.toml"), text).unwrap();
    let (out, stdout, stderr) = run(lockstep(dir)
        .args(["validate", "--offline"])
        .env("LOCKSTEP_TEST_SECRET", "hunter2-very-secret"));
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "a secret leaked:\n{stdout}\n{stderr}"
    );
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

#[test]
fn a_good_file_validates() {
    let dir = tempfile::tempdir().unwrap();
    let (code, output) = validate(dir.path(), GOOD);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("valid (2 connections, 1 syncs"), "{output}");
}

#[test]
fn each_documented_error_names_file_line_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    // (what to break, expected message fragment, expected line)
    let cases: &[(&str, &str, &str, usize)] = &[
        (
            "cursor = \"updated_at\"",
            "curser = \"updated_at\"",
            "did you mean `cursor`",
            16,
        ),
        (
            "source = \"crm.contacts\"",
            "source = \"crn.contacts\"",
            "crn",
            13,
        ),
        (
            "mode = \"incremental\"",
            "mode = \"sometimes\"",
            "sometimes",
            15,
        ),
        (
            "${LOCKSTEP_TEST_SECRET}",
            "${LOCKSTEP_UNSET_VARIABLE}",
            "LOCKSTEP_UNSET_VARIABLE",
            10,
        ),
        (
            "connector = \"sqlite\"\nconfig = { path = \"crm.db\" }",
            "connector = \"salesforce\"\nconfig = { path = \"crm.db\" }",
            "salesforce",
            5,
        ),
        ("[syncs.contacts]", "[syncs.contacts", "", 12),
    ];
    for (from, to, fragment, line) in cases {
        let text = GOOD.replacen(from, to, 1);
        let (code, output) = validate(dir.path(), &text);
        assert_eq!(
            code, 2,
            "breaking `{from}` should fail validation:\n{output}"
        );
        assert!(
            output.contains(fragment),
            "breaking `{from}`: expected `{fragment}` in:\n{output}"
        );
        assert!(
            output.contains(&format!("lockstep.toml:{line}:")),
            "breaking `{from}`: expected line {line} in:\n{output}"
        );
        assert!(
            output.to_lowercase().contains("hint") || output.contains("help"),
            "breaking `{from}`: no hint in:\n{output}"
        );
    }
}

#[test]
fn every_error_in_a_file_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD
        .replacen("cursor = \"updated_at\"", "curser = \"updated_at\"", 1)
        .replacen("source = \"crm.contacts\"", "source = \"crn.contacts\"", 1)
        .replacen("${LOCKSTEP_TEST_SECRET}", "${LOCKSTEP_UNSET_VARIABLE}", 1);
    let (code, output) = validate(dir.path(), &text);
    assert_eq!(code, 2);
    for fragment in ["curser", "crn", "LOCKSTEP_UNSET_VARIABLE"] {
        assert!(
            output.contains(fragment),
            "missing `{fragment}` in:\n{output}"
        );
    }
}

#[test]
fn a_missing_config_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _, stderr) = run(lockstep(dir.path()).args(["--config", "nope.toml", "validate"]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nope.toml"), "{stderr}");
    assert!(
        stderr.contains("--config"),
        "the hint says how to pass a config: {stderr}"
    );
}
