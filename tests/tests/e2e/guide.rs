//! What a connector author starts from, built and run as the author would: the crate that
//! `lockstep connectors new` writes, and the connector guide's example crates, each built out
//! of the workspace with `cargo test` (which runs their conformance tests); the generated
//! connector then syncs for real through the `lockstep` binary. The guide's code blocks are
//! checked to be copies of those crates' code, so that the guide cannot drift from what
//! compiles.
//!
//! The builds share one target directory, `target/authors`, so that the dependencies compile
//! once and later runs are incremental; the generated crate gets the workspace's lock file,
//! so that it builds offline with the versions already downloaded.

use std::path::{Path, PathBuf};

use lockstep_e2e::{lockstep, run, sqlite_count, workspace_root};
use serde_json::Value;

use crate::plugins::cargo;

/// The target directory the author crates share.
fn shared_target() -> PathBuf {
    workspace_root().join("target/authors")
}

/// `cargo ARGS` in `dir` with the shared target directory; panics with the output on failure.
fn cargo_in(dir: &Path, args: &[&str]) -> String {
    let (output, stdout, stderr) = run(cargo(dir)
        .args(args)
        .env("CARGO_TARGET_DIR", shared_target()));
    assert!(
        output.status.success(),
        "`cargo {}` in {} failed:\n{stdout}\n{stderr}",
        args.join(" "),
        dir.display()
    );
    stdout
}

#[test]
fn a_generated_connector_builds_passes_the_kit_and_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = workspace_root();
    let krate = d.join("acme");
    let sdk = format!("path:{}", root.display());
    let (out, stdout, stderr) = run(lockstep(d).args([
        "connectors",
        "new",
        "acme",
        "--path",
        krate.to_str().unwrap(),
        "--sdk",
        &sdk,
    ]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("created connector `acme` (source and destination)"),
        "{stdout}"
    );
    let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&format!(
            "lockstep-plugin-sdk = {{ path = \"{}\" }}",
            root.join("crates/lockstep-plugin-sdk").display()
        )),
        "{manifest}"
    );

    // The generated crate, unchanged: its conformance test passes.
    std::fs::copy(root.join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    let tested = cargo_in(&krate, &["test", "--offline"]);
    assert!(
        tested.contains("the_built_plugin_passes_the_conformance_kit ... ok"),
        "{tested}"
    );
    cargo_in(&krate, &["build", "--offline", "--lib"]);
    let library = shared_target().join("debug").join(format!(
        "{}lockstep_connector_acme{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(library.exists(), "{} was not built", library.display());

    // Installed in a connector directory, it syncs both ways through the binary.
    let plugins = d.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(&library, plugins.join(library.file_name().unwrap())).unwrap();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::create_dir_all(d.join("out")).unwrap();
    std::fs::write(
        d.join("in/contacts.jsonl"),
        "{\"id\": 2, \"email\": \"bob@example.com\", \"score\": 1.5}\n\
         {\"id\": 1, \"email\": \"ada@example.com\", \"score\": 9.5}\n\
         {\"id\": 3, \"email\": \"cy@example.com\", \"score\": null}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("lockstep.toml"),
        r#"[state]
url = "sqlite://state.db"

[connectors]
paths = ["plugins"]

[connections.files]
connector = "acme"
config = { dir = "in" }

[connections.db]
connector = "sqlite"
config = { path = "db.sqlite" }

[connections.outfiles]
connector = "acme"
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
    let (out, stdout, stderr) = run(lockstep(d).args(["validate", "--offline"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for sync in ["into_db", "back_to_files"] {
        let (out, stdout, stderr) = run(lockstep(d).args(["run", sync, "--output", "json"]));
        assert!(out.status.success(), "sync {sync}:\n{stdout}\n{stderr}");
    }
    assert_eq!(
        sqlite_count(&d.join("db.sqlite"), "SELECT count(*) FROM contacts"),
        3
    );
    let written = std::fs::read_to_string(d.join("out/contacts.jsonl")).unwrap();
    let mut rows: Vec<Value> = written
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    rows.sort_by_key(|row| row["id"].as_i64());
    let emails: Vec<&str> = rows.iter().map(|r| r["email"].as_str().unwrap()).collect();
    assert_eq!(
        emails,
        ["ada@example.com", "bob@example.com", "cy@example.com"],
        "{written}"
    );
    assert_eq!(rows[1]["score"], 1.5, "{written}");
    assert!(rows[2]["score"].is_null(), "{written}");
}

#[test]
fn connectors_new_refuses_a_bad_name_and_a_directory_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (out, _, stderr) = run(lockstep(d).args(["connectors", "new", "Acme-CRM"]));
    assert!(!out.status.success());
    assert!(
        stderr.contains("`Acme-CRM` cannot be a connector name") && stderr.contains("`acme_crm`"),
        "{stderr}"
    );
    std::fs::create_dir_all(d.join("taken")).unwrap();
    std::fs::write(d.join("taken/notes.txt"), "mine").unwrap();
    let (out, _, stderr) = run(lockstep(d).args(["connectors", "new", "acme", "--path", "taken"]));
    assert!(!out.status.success());
    assert!(
        stderr.contains("already exists and is not empty"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("taken/notes.txt")).unwrap(),
        "mine"
    );
    let (out, _, stderr) = run(lockstep(d).args([
        "connectors",
        "new",
        "acme",
        "--sdk",
        &format!("path:{}", d.display()),
    ]));
    assert!(!out.status.success());
    assert!(
        stderr.contains("is not the root of a Lockstep checkout"),
        "{stderr}"
    );
    assert!(!d.join("lockstep-connector-acme").exists());
}

#[test]
fn the_guides_example_crates_build_and_pass_the_kit() {
    let examples = workspace_root().join("docs/guide-example");
    let tested = cargo_in(&examples, &["test"]);
    // One conformance test per crate: the source-only `numbers`, the destination-only
    // `keystore`.
    assert_eq!(
        tested
            .matches("the_plugin_passes_the_conformance_kit ... ok")
            .count(),
        2,
        "{tested}"
    );
}

/// The guide marks each code block copied from an example file with a comment naming the
/// file and the anchor: `<!-- snippet: numbers/src/lib.rs#source -->` right before the block.
#[test]
fn the_guides_code_blocks_are_the_example_crates_code() {
    let root = workspace_root();
    let guide_path = root.join("docs/connector-guide.md");
    let guide = std::fs::read_to_string(&guide_path).unwrap();
    let mut checked = 0;
    let mut lines = guide.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(reference) = line
            .trim()
            .strip_prefix("<!-- snippet: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        let (file, anchor) = reference
            .split_once('#')
            .unwrap_or_else(|| panic!("line {}: `{reference}` lacks #anchor", n + 1));
        let fence = lines.next().map(|(_, l)| l).unwrap_or_default();
        assert!(
            fence.starts_with("```"),
            "line {}: a snippet comment must be followed by a code block",
            n + 2
        );
        let block: Vec<&str> = lines
            .by_ref()
            .map(|(_, l)| l)
            .take_while(|l| !l.starts_with("```"))
            .collect();
        let source_path = root.join("docs/guide-example").join(file);
        let source = std::fs::read_to_string(&source_path)
            .unwrap_or_else(|e| panic!("{}: {e}", source_path.display()));
        let region = anchor_region(&source, anchor)
            .unwrap_or_else(|| panic!("{}: no anchor `{anchor}`", source_path.display()));
        assert_eq!(
            block.join("\n"),
            region.join("\n"),
            "the code block after line {} of docs/connector-guide.md differs from \
             {}#{anchor}: copy the file's region into the guide",
            n + 1,
            source_path.display()
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} snippets found in the guide");
}

/// The lines between `ANCHOR: name` and `ANCHOR_END: name` (in a `//` or `#` comment),
/// without the lines of other anchors' markers.
fn anchor_region<'a>(source: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let is_marker = |line: &str, kind: &str| {
        let line = line.trim();
        let text = line
            .strip_prefix("//")
            .or_else(|| line.strip_prefix('#'))
            .map(str::trim);
        text.and_then(|t| t.strip_prefix(kind))
            .is_some_and(|rest| rest.trim() == name)
    };
    let start = source.lines().position(|l| is_marker(l, "ANCHOR:"))?;
    let region: Vec<&str> = source
        .lines()
        .skip(start + 1)
        .take_while(|l| !is_marker(l, "ANCHOR_END:"))
        .filter(|l| !l.contains("ANCHOR:") && !l.contains("ANCHOR_END:"))
        .collect();
    // Dedent by the region's common indentation, so that a block inside a function reads
    // from its left margin.
    let indent = region
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    Some(
        region
            .into_iter()
            .map(|l| {
                if l.len() >= indent {
                    &l[indent..]
                } else {
                    l.trim_start()
                }
            })
            .collect(),
    )
}
