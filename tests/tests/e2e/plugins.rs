//! Plugin loading, panics, ABI versions and out-of-tree connectors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use lockstep_e2e::{plugin_library, run, workspace_root};
use lockstep_plugin_host::{no_redaction, ErrorKind, HostError, LoadedPlugin};
use lockstep_protocol::arrow_types::arrow_schema;
use lockstep_protocol::{DataType, FieldInfo, OpenStreamRequest, ReadRequest, SchemaEvolution};
use lockstep_test_support::arrow::array::{Int64Array, RecordBatch, StringArray};
use lockstep_test_support::Conformance;
use serde_json::json;

fn panicky() -> LoadedPlugin {
    LoadedPlugin::load(&plugin_library("lockstep_testplugin_panicky")).expect("panicky loads")
}

fn fields() -> Vec<FieldInfo> {
    let field = |name: &str, data_type, nullable| FieldInfo {
        name: name.into(),
        data_type,
        nullable,
        native_type: None,
    };
    vec![
        field("id", DataType::Int64, false),
        field("name", DataType::Text, true),
    ]
}

fn items() -> ReadRequest {
    ReadRequest {
        stream: "items".into(),
        ..Default::default()
    }
}

fn open_request() -> OpenStreamRequest {
    OpenStreamRequest {
        stream: "items".into(),
        fields: fields(),
        key: vec!["id".into()],
        create_if_missing: true,
        schema_evolution: SchemaEvolution::AddColumns,
    }
}

fn batch() -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(arrow_schema(&fields())),
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![Some("a"), None])),
        ],
    )
    .unwrap()
}

fn keys() -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(arrow_schema(&fields()[..1])),
        vec![Arc::new(Int64Array::from(vec![1]))],
    )
    .unwrap()
}

/// Makes a panicky instance panic in `entry` of `role`. Returns the error of that call and,
/// when an instance exists to call again, the error of one more call on it.
async fn panic_in(
    plugin: &LoadedPlugin,
    role: &str,
    entry: &str,
) -> (HostError, Option<HostError>) {
    let config = json!({ "panic_in": entry });
    let r = no_redaction;
    match (role, entry) {
        ("source", "open_source") => (plugin.open_source(&config, r()).await.err().unwrap(), None),
        ("source", _) => {
            let mut source = plugin.open_source(&config, r()).await.unwrap();
            let error = match entry {
                "check" => source.check().await.unwrap_err(),
                "discover" => source.discover().await.unwrap_err(),
                "read" => source.read(&items()).await.err().unwrap(),
                "next_batch" => {
                    let mut batches = source.read(&items()).await.unwrap();
                    let error = batches.next().await.unwrap_err();
                    // The reader is part of the poisoned instance too.
                    let again = batches.next().await.unwrap_err();
                    return (error, Some(again));
                }
                other => unreachable!("no source entry point {other}"),
            };
            (error, Some(source.check().await.unwrap_err()))
        }
        ("destination", "open_destination") => (
            plugin.open_destination(&config, r()).await.err().unwrap(),
            None,
        ),
        ("destination", "check" | "discover" | "open_stream") => {
            let mut destination = plugin.open_destination(&config, r()).await.unwrap();
            let error = match entry {
                "check" => destination.check().await.unwrap_err(),
                "discover" => destination.discover().await.unwrap_err(),
                _ => destination
                    .open_stream(&open_request())
                    .await
                    .err()
                    .unwrap(),
            };
            (error, Some(destination.check().await.unwrap_err()))
        }
        ("destination", _) => {
            let mut destination = plugin.open_destination(&config, r()).await.unwrap();
            let mut writer = destination.open_stream(&open_request()).await.unwrap();
            let error = match entry {
                "upsert" => writer.upsert(batch()).await.unwrap_err(),
                "delete" => writer.delete(keys()).await.unwrap_err(),
                "flush" => {
                    writer.upsert(batch()).await.unwrap();
                    writer.flush().await.unwrap_err()
                }
                other => unreachable!("no destination entry point {other}"),
            };
            (error, Some(writer.upsert(batch()).await.unwrap_err()))
        }
        other => unreachable!("no role {other:?}"),
    }
}

/// A new instance with a harmless config still works after a panic in another one.
async fn fresh_instances_work(plugin: &LoadedPlugin) {
    let mut source = plugin
        .open_source(&json!({}), no_redaction())
        .await
        .unwrap();
    let mut batches = source.read(&items()).await.unwrap();
    let mut rows = 0;
    while let Some((batch, _)) = batches.next().await.unwrap() {
        rows += batch.num_rows();
    }
    assert_eq!(rows, 3);
    let mut destination = plugin
        .open_destination(&json!({}), no_redaction())
        .await
        .unwrap();
    let mut writer = destination.open_stream(&open_request()).await.unwrap();
    assert_eq!(writer.upsert(batch()).await.unwrap().inserted, Some(2));
    writer.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_any_entry_point_fails_the_call_and_poisons_only_its_instance() {
    let plugin = panicky();
    let cases = [
        ("source", "open_source"),
        ("source", "check"),
        ("source", "discover"),
        ("source", "read"),
        ("source", "next_batch"),
        ("destination", "open_destination"),
        ("destination", "check"),
        ("destination", "discover"),
        ("destination", "open_stream"),
        ("destination", "upsert"),
        ("destination", "delete"),
        ("destination", "flush"),
    ];
    for (role, entry) in cases {
        let (error, again) = panic_in(&plugin, role, entry).await;
        // The SDK names the ABI entry point; the panic's own message names panicky's.
        let abi_entry = match entry {
            "open_source" => "new_source",
            "open_destination" => "new_destination",
            other => other,
        };
        let message = error.to_string();
        assert_eq!(error.kind(), ErrorKind::PANIC, "{role} {entry}: {message}");
        assert!(
            message.contains(&format!("panicked in `{abi_entry}`")),
            "{role} {entry}: {message}"
        );
        assert!(
            message.contains(&format!("deliberate panic in {entry}")),
            "{role} {entry}: {message}"
        );
        if let Some(again) = again {
            let message = again.to_string();
            assert_eq!(
                again.kind(),
                ErrorKind::PANIC,
                "{role} {entry}, again: {message}"
            );
            assert!(
                message.contains("panicked earlier"),
                "{role} {entry}, again: {message}"
            );
        }
        fresh_instances_work(&plugin).await;
    }
}

#[tokio::test]
async fn a_bad_panicky_config_is_a_config_error_naming_the_entry_points() {
    let error = panicky()
        .open_source(&json!({ "panic_in": "nowhere" }), no_redaction())
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind(), ErrorKind::CONFIG, "{error}");
    assert!(error.to_string().contains("next_batch"), "{error}");
}

/// `cargo`, as the one running these tests, with nothing inherited that would redirect it.
pub(crate) fn cargo(dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    cmd
}

/// The minimal plugin built against the copy of the API crate whose version is 2.0.0.
const API_V2_PLUGIN: &str = r##"
use abi_stable::export_root_module;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RResult, RStr, RString};
use lockstep_plugin_api::{
    ConnectorModule, ConnectorModuleRef, DestinationBox, ErrorKind, HostContextBox, PluginError,
    SourceBox,
};

extern "C" fn manifest() -> RString {
    r#"{"name": "apiv2", "version": "2.0.0", "roles": ["source"]}"#.into()
}

extern "C" fn new_source(_: RStr<'_>, _: HostContextBox) -> RResult<SourceBox, PluginError> {
    RResult::RErr(PluginError::new(ErrorKind::UNSUPPORTED, "a fixture"))
}

extern "C" fn new_destination(
    _: RStr<'_>,
    _: HostContextBox,
) -> RResult<DestinationBox, PluginError> {
    RResult::RErr(PluginError::new(ErrorKind::UNSUPPORTED, "a fixture"))
}

#[export_root_module]
pub fn root_module() -> ConnectorModuleRef {
    ConnectorModule { manifest, new_source, new_destination }.leak_into_prefix()
}
"##;

/// Builds a plugin against a copy of `lockstep-plugin-api` whose version is 2.0.0, in a
/// scratch workspace, with its target directory under the workspace's `target/fixtures` so
/// that its dependencies compile once across runs.
fn build_api_v2_plugin(scratch: &Path) -> PathBuf {
    let root = workspace_root();
    let api = scratch.join("lockstep-plugin-api");
    let plugin = scratch.join("plugin");
    std::fs::create_dir_all(api.join("src")).unwrap();
    std::fs::create_dir_all(plugin.join("src")).unwrap();
    std::fs::copy(
        root.join("crates/lockstep-plugin-api/src/lib.rs"),
        api.join("src/lib.rs"),
    )
    .unwrap();
    // The API's manifest inherits from the workspace; this copy spells it out, as 2.0.0.
    std::fs::write(
        api.join("Cargo.toml"),
        r#"[package]
name = "lockstep-plugin-api"
version = "2.0.0"
edition = "2021"

[dependencies]
abi_stable = { version = "0.11.3", default-features = false }
"#,
    )
    .unwrap();
    std::fs::write(
        plugin.join("Cargo.toml"),
        r#"[package]
name = "lockstep-fixture-api-v2"
version = "0.1.0"
edition = "2021"

[lib]
name = "lockstep_connector_apiv2"
crate-type = ["cdylib"]

[dependencies]
lockstep-plugin-api = { path = "../lockstep-plugin-api" }
abi_stable = { version = "0.11.3", default-features = false }
"#,
    )
    .unwrap();
    std::fs::write(plugin.join("src/lib.rs"), API_V2_PLUGIN).unwrap();
    std::fs::write(
        scratch.join("Cargo.toml"),
        "[workspace]\nresolver = \"2\"\nmembers = [\"lockstep-plugin-api\", \"plugin\"]\n",
    )
    .unwrap();
    // The workspace's lock file pins the same dependency versions, already downloaded.
    std::fs::copy(root.join("Cargo.lock"), scratch.join("Cargo.lock")).unwrap();

    let target = root.join("target/fixtures");
    let (output, stdout, stderr) = run(cargo(scratch)
        .args(["build", "-p", "lockstep-fixture-api-v2"])
        .env("CARGO_TARGET_DIR", &target));
    assert!(
        output.status.success(),
        "building the API 2.0.0 fixture failed:\n{stdout}\n{stderr}"
    );
    target.join("debug").join(format!(
        "{}lockstep_connector_apiv2{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

#[test]
fn a_plugin_built_against_another_api_major_is_refused_with_what_to_do() {
    let scratch = tempfile::tempdir().unwrap();
    let library = build_api_v2_plugin(scratch.path());
    // Load a copy with a name of its own: the file in target/fixtures is rebuilt by later runs.
    let copy = scratch.path().join(library.file_name().unwrap());
    std::fs::copy(&library, &copy).unwrap();
    let error = LoadedPlugin::load(&copy).unwrap_err();
    assert!(
        matches!(error, HostError::IncompatibleAbi { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    for expected in [copy.to_str().unwrap(), "2.0.0", "1.x", "rebuild"] {
        assert!(
            message.contains(expected),
            "`{expected}` is missing from: {message}"
        );
    }
}

#[test]
fn the_example_connector_builds_out_of_tree_and_passes_its_conformance_tests() {
    let example = workspace_root().join("connectors/example");
    let (output, stdout, stderr) = run(cargo(&example)
        .arg("test")
        .env("CARGO_TARGET_DIR", example.join("target")));
    assert!(
        output.status.success(),
        "`cargo test` in {} failed:\n{stdout}\n{stderr}",
        example.display()
    );
    assert!(
        stdout.contains("the_built_plugin_passes_the_conformance_kit ... ok"),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_sqlite_connector_passes_the_conformance_kit() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&source)
        .create_if_missing(true);
    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
        .await
        .unwrap();
    // Rows share cursor values, so that resuming between equal cursors is checked too.
    sqlx::query(
        "CREATE TABLE contacts (id INTEGER PRIMARY KEY, name TEXT, score REAL,
                                updated_at TIMESTAMP NOT NULL)",
    )
    .execute(&mut db)
    .await
    .unwrap();
    for id in 1..=7i64 {
        sqlx::query("INSERT INTO contacts VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(format!("Contact {id} «ü»"))
            .bind(id as f64 / 4.0)
            .bind(format!("2026-01-0{} 10:00:00", 1 + id / 3))
            .execute(&mut db)
            .await
            .unwrap();
    }
    sqlx::Connection::close(db).await.unwrap();

    let destination = dir.path().join("destination.db");
    let report = Conformance::new(plugin_library("lockstep_connector_sqlite"))
        .source_config(json!({ "path": source }))
        .stream("contacts")
        .cursor_field("updated_at")
        .bad_config(json!({ "path": "a.db", "url": "sqlite://b.db" }))
        .bad_config(json!({ "path": source, "no_such_key": 1 }))
        .destination_config(json!({ "path": destination }))
        .run()
        .await
        .assert_passed();
    println!("{report}");
}

#[tokio::test]
async fn the_conformance_kit_catches_a_destination_that_loses_writes() {
    // Panicky's destination accepts everything and keeps nothing: what it was given cannot be
    // read back, and the kit must say so rather than pass.
    let report = Conformance::new(plugin_library("lockstep_testplugin_panicky"))
        .destination_config(json!({}))
        .run()
        .await;
    let read_back = report
        .check(lockstep_test_support::checks::DESTINATION_READ_BACK)
        .unwrap();
    assert!(read_back.failed(), "{report}");
    let open_stream = report
        .check(lockstep_test_support::checks::DESTINATION_OPEN_STREAM)
        .unwrap();
    assert!(open_stream.failed(), "{report}");
}

#[tokio::test]
async fn the_conformance_kit_reports_a_panic_as_a_failed_check() {
    let report = Conformance::new(plugin_library("lockstep_testplugin_panicky"))
        .source_config(json!({ "panic_in": "discover" }))
        .run()
        .await;
    let discover = report
        .check(lockstep_test_support::checks::SOURCE_DISCOVER)
        .unwrap();
    assert!(discover.failed(), "{report}");
    assert!(
        format!("{report}").contains("panicked in `discover`"),
        "{report}"
    );
    assert!(!report.passed());
}
