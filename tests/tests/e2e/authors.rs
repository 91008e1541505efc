//! The host-free loop for connector authors and operators, through the built binary:
//! `lockstep connectors check|discover|read` against a connection of the config file or a
//! connector named on the command line, and `lockstep validate` refusing syncs whose mode
//! needs a feature their connectors do not declare.

use std::path::Path;

use lockstep_e2e::{lockstep, run, sqlite_exec};
use serde_json::json;

/// Creates `crm.db` with three contacts.
fn create_crm(dir: &Path) {
    sqlite_exec(
        &dir.join("crm.db"),
        &[
            "CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT NOT NULL, score REAL, \
             updated_at TIMESTAMP NOT NULL)",
            "INSERT INTO contacts VALUES \
             (1, 'ada@example.com', 9.5, '2026-01-01 10:00:00'), \
             (2, 'bob@example.com', NULL, '2026-01-02 10:00:00'), \
             (3, 'cy@example.com', 7.0, '2026-01-03 10:00:00')",
        ],
    );
}

/// Writes `lockstep.toml` with the connections (and syncs) in `body`.
fn write_config(dir: &Path, body: &str) {
    std::fs::write(
        dir.join("lockstep.toml"),
        format!("[state]\nurl = \"sqlite://state.db\"\n\n{body}"),
    )
    .unwrap();
}

const CRM: &str = "[connections.crm]\nconnector = \"sqlite\"\nconfig = { path = \"crm.db\" }\n";

#[test]
fn check_reports_ok_and_a_file_that_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    create_crm(dir.path());
    write_config(
        dir.path(),
        &format!(
            "{CRM}\n[connections.broken]\nconnector = \"sqlite\"\nconfig = {{ path = \"no-such-dir/crm.db\" }}\n"
        ),
    );

    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["connectors", "check", "crm"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.trim(),
        "connection `crm` (sqlite) as a source: ok",
        "{stderr}"
    );

    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["connectors", "check", "broken"]));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("connection `broken` (sqlite) as a source: failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("no-such-dir/crm.db") && stdout.contains("does not exist"),
        "the error names the file: {stdout}"
    );
    assert!(
        stdout.contains("hint: fix [connections.broken.config] in"),
        "the hint says where to fix it: {stdout}"
    );

    let (out, stdout, _) =
        run(lockstep(dir.path()).args(["connectors", "check", "broken", "--output", "json"]));
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["checks"][0]["kind"], "config", "{report}");

    let (out, _, stderr) = run(lockstep(dir.path()).args(["connectors", "check", "crn"]));
    assert!(!out.status.success());
    assert!(
        stderr.contains("no connection named `crn`; defined connections: broken, crm"),
        "{stderr}"
    );
}

#[test]
fn discover_prints_the_catalog_as_json() {
    let dir = tempfile::tempdir().unwrap();
    create_crm(dir.path());
    write_config(dir.path(), CRM);
    let (out, stdout, stderr) =
        run(lockstep(dir.path()).args(["connectors", "discover", "crm", "--output", "json"]));
    assert!(out.status.success(), "{stderr}");
    let catalog: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        catalog,
        json!({
            "connection": "crm",
            "connector": "sqlite",
            "role": "source",
            "features": ["incremental", "upsert", "delete", "create-stream", "add-columns", "read-by-keys"],
            "streams": [{
                "name": "contacts",
                "fields": [
                    { "name": "id", "type": "int64", "nullable": false, "native_type": "INTEGER" },
                    { "name": "email", "type": "text", "nullable": false, "native_type": "TEXT" },
                    { "name": "score", "type": "float64", "nullable": true, "native_type": "REAL" },
                    { "name": "updated_at", "type": "timestamp", "nullable": false, "native_type": "TIMESTAMP" },
                ],
                "primary_key": ["id"],
                "cursor_candidates": ["updated_at", "id"],
            }],
        })
    );

    // The text form shows the same, for people.
    let (out, stdout, _) = run(lockstep(dir.path()).args(["connectors", "discover", "crm"]));
    assert!(out.status.success());
    assert!(
        stdout.contains("stream contacts  (key: id; cursor candidates: updated_at, id)"),
        "{stdout}"
    );
    assert!(stdout.contains("score       float64"), "{stdout}");
}

#[test]
fn read_stops_at_the_limit_and_leaves_the_state_store_alone() {
    let dir = tempfile::tempdir().unwrap();
    create_crm(dir.path());
    write_config(dir.path(), CRM);
    let (out, stdout, stderr) = run(lockstep(dir.path()).args([
        "connectors",
        "read",
        "crm.contacts",
        "--limit",
        "2",
        "--output",
        "json",
    ]));
    assert!(out.status.success(), "{stderr}");
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(records.len(), 2, "{stdout}");
    assert_eq!(records[0]["id"], 1);
    assert_eq!(records[0]["email"], "ada@example.com");
    assert_eq!(records[0]["score"], 9.5);
    assert_eq!(records[1]["id"], 2);
    assert_eq!(records[1]["score"], serde_json::Value::Null);
    assert!(
        stderr.contains("2 record(s) read from stream `contacts` (stopped at --limit 2)"),
        "{stderr}"
    );

    // A table without --output json, every record without a limit.
    let (out, stdout, stderr) =
        run(lockstep(dir.path()).args(["connectors", "read", "crm.contacts", "--limit", "0"]));
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three records:\n{stdout}");
    assert!(
        lines[0].starts_with("id") && lines[3].contains("cy@example.com"),
        "{stdout}"
    );

    let (out, _, stderr) = run(lockstep(dir.path()).args(["connectors", "read", "crm.people"]));
    assert!(!out.status.success());
    assert!(
        stderr.contains("has no stream `people`; its streams are: contacts"),
        "{stderr}"
    );

    assert!(
        !dir.path().join("state.db").exists() && !dir.path().join(".lockstep").exists(),
        "reading must not open the state store"
    );
}

#[test]
fn a_connector_and_its_config_work_without_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    create_crm(dir.path());
    let config = r#"{"path": "crm.db"}"#;
    let (out, stdout, stderr) = run(lockstep(dir.path()).args([
        "connectors",
        "check",
        "--connector",
        "sqlite",
        "--config",
        config,
    ]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "connector `sqlite` as a source: ok");

    let (out, stdout, stderr) = run(lockstep(dir.path()).args([
        "connectors",
        "read",
        "contacts",
        "--connector",
        "sqlite",
        "--config",
        config,
        "--limit",
        "1",
        "--output",
        "json",
    ]));
    assert!(out.status.success(), "{stderr}");
    let record: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(record["email"], "ada@example.com", "{stdout}");

    let (out, _, stderr) = run(lockstep(dir.path()).args([
        "connectors",
        "discover",
        "--connector",
        "sqlite",
        "--config",
        "{path:",
    ]));
    assert!(!out.status.success());
    assert!(stderr.contains("--config is not valid JSON"), "{stderr}");

    // A connection name and --connector together are ambiguous, and refused.
    let (out, _, stderr) = run(lockstep(dir.path()).args([
        "connectors",
        "check",
        "crm",
        "--connector",
        "sqlite",
        "--config",
        config,
    ]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn a_secret_from_the_environment_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cret-vault-dir-9431";
    write_config(
        dir.path(),
        "[connections.vault]\nconnector = \"sqlite\"\nconfig = { path = \"${VAULT_DIR}/vault.db\" }\n",
    );
    for output in ["text", "json"] {
        let (out, stdout, stderr) = run(lockstep(dir.path()).env("VAULT_DIR", secret).args([
            "connectors",
            "check",
            "vault",
            "--output",
            output,
        ]));
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "the secret leaked:\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains("***/vault.db"),
            "the error still names the file, redacted: {stdout}"
        );
    }
}

#[test]
fn validate_refuses_a_mirror_sync_into_a_destination_without_delete() {
    let dir = tempfile::tempdir().unwrap();
    create_crm(dir.path());
    write_config(
        dir.path(),
        &format!(
            "{CRM}\n[connections.outbox]\nconnector = \"files\"\nconfig = {{ dir = \"outbox\", format = \"csv\" }}\n\n\
             [syncs.contacts]\nsource = \"crm.contacts\"\ndestination = \"outbox.contacts\"\n\
             mode = \"mirror\"\ncursor = \"updated_at\"\n"
        ),
    );
    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["validate", "--offline"]));
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "lockstep.toml:15:8: error: sync `contacts` uses mode `mirror`, which deletes from \
             its destination the records deleted in the source, but its destination connector \
             `files` (connection `outbox`) does not declare the `delete` feature"
        ),
        "{stderr}"
    );
    // The files connector is a source too, so reconciliation could read its keys: only the
    // missing feature is reported.
    assert!(!stderr.contains("cannot be read"), "{stderr}");
    assert!(stderr.contains("use mode = \"incremental\""), "{stderr}");

    // The same sync in incremental mode passes: nothing it does needs `delete`.
    let text = std::fs::read_to_string(dir.path().join("lockstep.toml")).unwrap();
    std::fs::write(
        dir.path().join("lockstep.toml"),
        text.replace("mode = \"mirror\"", "mode = \"incremental\""),
    )
    .unwrap();
    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["validate", "--offline"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
}

#[test]
fn validate_refuses_an_incremental_sync_from_a_source_without_incremental() {
    // The panicky test plugin reads, but declares no `incremental` feature.
    let dir = crate::daemon::scratch();
    write_config(
        dir.path(),
        "[connectors]\npaths = [\"plugins\"]\n\n[connections.src]\nconnector = \"panicky\"\n\n\
         [connections.dst]\nconnector = \"sqlite\"\nconfig = { path = \"dst.db\" }\n\n\
         [syncs.items]\nsource = \"src.items\"\ndestination = \"dst.items\"\n\
         mode = \"incremental\"\ncursor = \"updated_at\"\n",
    );
    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["validate", "--offline"]));
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "lockstep.toml:17:8: error: sync `items` uses mode `incremental`, which reads only \
             what changed since the last run, but its source connector `panicky` (connection \
             `src`) does not declare the `incremental` feature"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("use mode = \"full\""), "{stderr}");
    assert!(stderr.contains("1 error"), "only this error: {stderr}");
}

/// The conformance kit takes the roles from the manifest: the sqlite connector plays both,
/// so checking it as a source only reports the destination checks as skipped (visible, not
/// passed), and the report still passes.
#[test]
fn the_kit_reports_a_role_without_a_config_as_skipped() {
    use lockstep_test_support::{checks, Conformance, Outcome};
    let dir = tempfile::tempdir().unwrap();
    create_crm(dir.path());
    let report = Conformance::new(lockstep_e2e::plugin_library("lockstep_connector_sqlite"))
        .source_config(json!({ "path": dir.path().join("crm.db") }))
        .stream("contacts")
        .run_blocking()
        .assert_passed();
    let destination = report.check(checks::DESTINATION_OPEN).unwrap();
    match &destination.outcome {
        Outcome::Skip(reason) => assert!(
            reason.contains("declares the destination role")
                && reason.contains(".destination_config("),
            "{report}"
        ),
        other => panic!("expected a skip, got {other:?}\n{report}"),
    }
    assert!(report.check(checks::SOURCE_RESUME_FULL).unwrap().passed());
}

/// `assert_passed` fails the test that calls it when any check failed, and its message lists
/// every check with its outcome and reason.
#[tokio::test]
async fn assert_passed_panics_listing_every_check() {
    use lockstep_test_support::Conformance;
    // Panicky's destination keeps nothing it is given: the read-back check fails.
    let report = Conformance::new(lockstep_e2e::plugin_library("lockstep_testplugin_panicky"))
        .destination_config(json!({}))
        .run()
        .await;
    assert!(!report.passed(), "{report}");
    let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
    let panic = std::panic::catch_unwind(|| report.assert_passed()).unwrap_err();
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("connector conformance failed"),
        "{message}"
    );
    assert!(message.contains("FAIL  destination:"), "{message}");
    for name in names {
        assert!(
            message.contains(name),
            "`{name}` is missing from:\n{message}"
        );
    }
}

/// A run loads only its sync's connectors: an installed plugin that other syncs use (or a
/// broken file) is neither mapped nor initialized. A plugin whose file name is not its
/// connector's name is still found, by loading everything.
#[test]
fn a_registry_for_some_connectors_loads_only_their_plugins() {
    use lockstep_plugin_host::PluginRegistry;

    let dir = tempfile::tempdir().unwrap();
    let so = std::env::consts::DLL_SUFFIX;
    std::fs::copy(
        lockstep_e2e::plugin_library("lockstep_connector_sqlite"),
        dir.path().join(format!("liblockstep_connector_sqlite{so}")),
    )
    .unwrap();
    std::fs::write(
        dir.path().join(format!("liblockstep_connector_junk{so}")),
        b"not a library",
    )
    .unwrap();
    let dirs = [dir.path().to_owned()];

    let some = PluginRegistry::scan_for(&dirs, &["sqlite"]);
    let names: Vec<&str> = some.plugins().iter().map(|p| p.name()).collect();
    assert_eq!(names, ["sqlite"]);
    assert!(
        some.failures().is_empty(),
        "the junk file was loaded: {:?}",
        some.failures()
    );

    let all = PluginRegistry::scan(&dirs);
    assert_eq!(all.plugins().len(), 1);
    assert_eq!(all.failures().len(), 1, "{:?}", all.failures());

    // The SQLite plugin under another file name: found by the fallback to a full scan.
    std::fs::rename(
        dir.path().join(format!("liblockstep_connector_sqlite{so}")),
        dir.path()
            .join(format!("liblockstep_connector_embedded_db{so}")),
    )
    .unwrap();
    let renamed = PluginRegistry::scan_for(&dirs, &["sqlite"]);
    assert!(renamed.get("sqlite").is_ok(), "{:?}", renamed.failures());
    assert_eq!(renamed.failures().len(), 1, "{:?}", renamed.failures());
}
