//! ABI compatibility, tested rather than promised: the example connector, built against the
//! SDK and API crates as they were at the ABI baseline (`tests/abi-baseline.toml`, the tag
//! `v0.1.0`), is loaded and run through the current host, as a source and as a destination.
//! An ABI change that would break plugins already in users' hands fails here.
//!
//! The baseline's tree is extracted with `git archive` into
//! `target/abi-baseline/src-<commit>` and built there with a target directory of its own
//! (`target/abi-baseline/target`); both are kept, so only the first run pays for the build.
//! Without git, or in a clone that lacks the baseline commit, the test is skipped with a
//! notice, and fails under CI (`lockstep_test_support::skip`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lockstep_e2e::{lockstep, run, sqlite_count, sqlite_exec, workspace_root};
use lockstep_plugin_host::LoadedPlugin;
use lockstep_test_support::skip::skip_or_fail;
use lockstep_test_support::Conformance;
use serde_json::{json, Value};

use crate::plugins::cargo;

/// The baseline named by `tests/abi-baseline.toml`.
struct Baseline {
    tag: String,
    commit: String,
}

impl Baseline {
    fn read() -> Baseline {
        let path = workspace_root().join("tests/abi-baseline.toml");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let table: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let field = |key: &str| {
            table
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or_else(|| {
                    panic!(
                        "{}: `{key}` is missing or not a string; it needs `tag` and `commit`",
                        path.display()
                    )
                })
                .to_owned()
        };
        Baseline {
            tag: field("tag"),
            commit: field("commit"),
        }
    }

    /// A short name for messages: `v0.1.0 (b67ed7b80bb0)`.
    fn label(&self) -> String {
        format!("{} ({})", self.tag, &self.commit[..12])
    }
}

/// `git` in the workspace, with its output captured.
fn git(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("git")
        .args(args)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
}

/// The baseline's commit: the tag's when the tag exists (it must be the recorded one), the
/// recorded commit otherwise. `None` after a skip notice when git or the commit is missing.
fn resolve(baseline: &Baseline) -> Option<String> {
    let tag_ref = format!("refs/tags/{}^{{commit}}", baseline.tag);
    let tagged = match git(&["rev-parse", "--verify", "--quiet", &tag_ref]) {
        Ok(out) => out,
        Err(e) => {
            skip_or_fail(format!(
                "git cannot run ({e}), so the ABI baseline {} cannot be extracted; install git",
                baseline.label()
            ));
            return None;
        }
    };
    if tagged.status.success() {
        let commit = String::from_utf8_lossy(&tagged.stdout).trim().to_owned();
        assert_eq!(
            commit, baseline.commit,
            "the tag {} points at {commit}, but tests/abi-baseline.toml records {}; the \
             baseline must not move: restore the tag, or change both together with a new \
             lockstep-plugin-api major",
            baseline.tag, baseline.commit
        );
        return Some(commit);
    }
    let object = format!("{}^{{commit}}", baseline.commit);
    match git(&["cat-file", "-e", &object]) {
        Ok(out) if out.status.success() => Some(baseline.commit.clone()),
        Ok(out) => {
            skip_or_fail(format!(
                "neither the tag {} nor the commit {} of tests/abi-baseline.toml is in this \
                 clone of {} ({}); fetch the history (`git fetch --tags --unshallow`)",
                baseline.tag,
                baseline.commit,
                workspace_root().display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            None
        }
        Err(e) => {
            skip_or_fail(format!("git cannot run ({e}); install git"));
            None
        }
    }
}

/// Extracts the tree of `commit` into `dir` unless an earlier run completed that already.
fn extract(commit: &str, dir: &Path) {
    let done = dir.join(".lockstep-abi-baseline-complete");
    if done.exists() {
        return;
    }
    if dir.exists() {
        // An extraction that was interrupted: start again.
        std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let archive = dir.join("tree.tar");
    let out = git(&[
        "archive",
        "--format=tar",
        "-o",
        archive.to_str().expect("a UTF-8 target directory"),
        commit,
    ])
    .expect("git ran a moment ago");
    assert!(
        out.status.success(),
        "`git archive {commit}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, stdout, stderr) = run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(dir));
    assert!(
        out.status.success(),
        "extracting {} failed:\n{stdout}\n{stderr}",
        archive.display()
    );
    std::fs::remove_file(&archive).unwrap();
    std::fs::write(&done, commit).unwrap();
}

/// The `package.version` of the crate in `crate_dir` of the tree at `root`, following
/// `version.workspace = true` to the root manifest.
fn package_version(root: &Path, crate_dir: &str) -> String {
    let read = |path: PathBuf| -> toml::Table {
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let manifest = read(root.join(crate_dir).join("Cargo.toml"));
    let version = &manifest["package"]["version"];
    if let Some(version) = version.as_str() {
        return version.to_owned();
    }
    let workspace = read(root.join("Cargo.toml"));
    workspace["workspace"]["package"]["version"]
        .as_str()
        .expect("the workspace's package version")
        .to_owned()
}

/// Builds the baseline's example connector and returns the library's path.
fn build_example(src: &Path, target: &Path) -> PathBuf {
    let manifest = src.join("connectors/example/Cargo.toml");
    // `--locked`: the baseline's own lock file pins every dependency, as it did for users.
    // Without debug info the build links faster and its target directory is under half the
    // size (about 0.5 GB instead of 1.1 GB); the ABI does not depend on it.
    let (out, stdout, stderr) = run(cargo(src)
        .args(["build", "--locked", "--lib", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target)
        .env("CARGO_PROFILE_DEV_DEBUG", "false"));
    assert!(
        out.status.success(),
        "building the example connector of the ABI baseline ({}) failed:\n{stdout}\n{stderr}",
        manifest.display()
    );
    let library = target.join("debug").join(format!(
        "{}lockstep_connector_example{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(library.exists(), "{} was not built", library.display());
    library
}

/// The baseline, its extracted tree and its built example connector; `None` after a skip
/// notice when git or the commit is missing. Both tests of this file may call it at once:
/// the extraction is serialised by a lock, the build by cargo's lock on its target directory.
fn baseline_example() -> Option<(Baseline, PathBuf, PathBuf)> {
    static EXTRACTION: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let baseline = Baseline::read();
    let commit = resolve(&baseline)?;
    let cache = workspace_root().join("target/abi-baseline");
    let src = cache.join(format!("src-{}", &commit[..12]));
    {
        let _guard = EXTRACTION.lock().unwrap_or_else(|e| e.into_inner());
        extract(&commit, &src);
    }
    let built = build_example(&src, &cache.join("target"));
    Some((baseline, src, built))
}

/// `lockstep run <sync> --output json` in `dir`: the report of a run that must succeed.
fn run_sync(dir: &Path, sync: &str, label: &str) -> Value {
    let (out, stdout, stderr) = run(lockstep(dir).args(["run", sync, "--output", "json"]));
    assert!(
        out.status.success(),
        "sync `{sync}` with the example connector of the ABI baseline {label} failed in the \
         current host, an ABI break:\n{stdout}\n{stderr}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn the_example_connector_built_at_the_abi_baseline_runs_in_the_current_host() {
    let Some((baseline, src, built)) = baseline_example() else {
        return;
    };
    let label = baseline.label();

    // The plugin goes into a connector directory of its own, as a user would install it.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plugins = d.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let library = plugins.join(built.file_name().unwrap());
    std::fs::copy(&built, &library).unwrap();

    // The current host loads it and reads the manifest the baseline's SDK filled in.
    let plugin = LoadedPlugin::load(&library).unwrap_or_else(|e| {
        panic!(
            "the example connector built at the ABI baseline {label} no longer loads in the \
             current host, an ABI break that would strand plugins already in users' hands: \
             {e}\n(keep lockstep-plugin-api compatible within its major; see \
             docs/architecture.md)"
        )
    });
    assert_eq!(plugin.manifest.name, "example");
    assert_eq!(
        plugin.manifest.sdk_version,
        package_version(&src, "crates/lockstep-plugin-sdk"),
        "the manifest reports the baseline's SDK version"
    );
    assert_eq!(
        plugin.manifest.abi_version,
        package_version(&src, "crates/lockstep-plugin-api"),
        "the manifest reports the baseline's API version"
    );

    // A sync from the baseline's plugin (as a source) into SQLite.
    let input = d.join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("contacts.schema.json"),
        json!({
            "name": "contacts",
            "fields": [
                {"name": "id", "type": "int64", "nullable": false},
                {"name": "email", "type": "text"},
                {"name": "score", "type": "float64"}
            ],
            "primary_key": ["id"]
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        input.join("contacts.jsonl"),
        "{\"id\": 2, \"email\": \"bob@example.com\", \"score\": null}\n\
         {\"id\": 1, \"email\": \"ada@example.com\", \"score\": 9.5}\n\
         {\"id\": 3, \"email\": \"cy@example.com\", \"score\": 7.25}\n",
    )
    .unwrap();
    std::fs::create_dir_all(d.join("out")).unwrap();
    std::fs::write(
        d.join("lockstep.toml"),
        r#"[state]
url = "sqlite://state.db"

[connectors]
paths = ["plugins"]

[connections.files]
connector = "example"
config = { dir = "in" }

[connections.db]
connector = "sqlite"
config = { path = "db.sqlite" }

[connections.outfiles]
connector = "example"
config = { dir = "out" }

[syncs.into_db]
source = "files.contacts"
destination = "db.contacts"

[syncs.back_to_files]
source = "db.contacts"
destination = "outfiles.contacts"
"#,
    )
    .unwrap();

    // The configured directory wins over anything next to the binary.
    let (out, stdout, stderr) = run(lockstep(d).args(["connectors", "list", "--output", "json"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let listed: Value = serde_json::from_str(&stdout).unwrap();
    let example = listed["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "example")
        .unwrap_or_else(|| panic!("the baseline's example connector is not listed: {listed}"));
    assert_eq!(
        Path::new(example["path"].as_str().unwrap())
            .canonicalize()
            .ok(),
        library.canonicalize().ok(),
        "{listed}"
    );

    let report = run_sync(d, "into_db", &label);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["metrics"]["read"], 3, "{report}");
    assert_eq!(report["metrics"]["added"], 3, "{report}");
    let db = d.join("db.sqlite");
    assert_eq!(sqlite_count(&db, "SELECT count(*) FROM contacts"), 3);
    assert_eq!(
        sqlite_count(
            &db,
            "SELECT count(*) FROM contacts WHERE (id = 1 AND email = 'ada@example.com' \
             AND score = 9.5) OR (id = 2 AND email = 'bob@example.com' AND score IS NULL) \
             OR (id = 3 AND email = 'cy@example.com' AND score = 7.25)"
        ),
        3,
        "every row arrives with its values"
    );

    // And back, with the baseline's plugin as the destination, after a change in SQLite.
    sqlite_exec(
        &db,
        &["UPDATE contacts SET email = 'ada@example.org' WHERE id = 1"],
    );
    let report = run_sync(d, "back_to_files", &label);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["metrics"]["added"], 3, "{report}");
    let written = std::fs::read_to_string(d.join("out/contacts.jsonl")).unwrap();
    let mut rows: Vec<Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    rows.sort_by_key(|r| r["id"].as_i64());
    assert_eq!(
        rows,
        vec![
            json!({"id": 1, "email": "ada@example.org", "score": 9.5}),
            json!({"id": 2, "email": "bob@example.com", "score": null}),
            json!({"id": 3, "email": "cy@example.com", "score": 7.25}),
        ],
        "{written}"
    );
}

#[tokio::test]
async fn the_example_connector_built_at_the_abi_baseline_passes_the_current_conformance_kit() {
    let Some((baseline, _, built)) = baseline_example() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join(built.file_name().unwrap());
    std::fs::copy(&built, &library).unwrap();

    let source = dir.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    let contacts: Vec<String> = (1..=7)
        .map(|id| {
            json!({"id": id, "name": format!("contact {id}"), "score": id as f64 / 4.0}).to_string()
        })
        .collect();
    std::fs::write(source.join("contacts.jsonl"), contacts.join("\n")).unwrap();
    let destination = dir.path().join("destination");
    std::fs::create_dir_all(&destination).unwrap();

    // Every entry point of both roles, through the current host.
    let report = Conformance::new(library)
        .source_config(json!({ "dir": source }))
        .stream("contacts")
        .bad_config(json!({ "dir": source.join("missing") }))
        .destination_config(json!({ "dir": destination }))
        .run()
        .await
        .into_result()
        .unwrap_or_else(|failures| {
            panic!(
                "the example connector built at the ABI baseline {} fails the current \
                 conformance kit:\n{failures}",
                baseline.label()
            )
        });
    println!("{report}");
}
