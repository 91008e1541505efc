//! Tidy checks: the architecture's dependency rules and code conventions, checked on every
//! test run (docs/architecture.md, "Architecture invariant" lines).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lockstep_e2e::workspace_root;

fn manifest(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The normal (not dev) dependency names of a crate.
fn dependencies(crate_dir: &Path) -> BTreeSet<String> {
    let m = manifest(&crate_dir.join("Cargo.toml"));
    m.get("dependencies")
        .and_then(|d| d.as_table())
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

fn crate_dirs(parent: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(workspace_root().join(parent))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn the_plugin_api_depends_on_abi_stable_alone() {
    let deps = dependencies(&workspace_root().join("crates/lockstep-plugin-api"));
    assert_eq!(deps, BTreeSet::from(["abi_stable".to_owned()]));
}

#[test]
fn connectors_depend_on_the_sdk_and_never_on_host_crates() {
    let mut dirs = crate_dirs("connectors");
    dirs.extend(crate_dirs("tests/plugins"));
    assert!(
        dirs.len() >= 4,
        "expected the connectors and test plugins, found {dirs:?}"
    );
    for dir in dirs {
        for dep in dependencies(&dir) {
            if dep.starts_with("lockstep-") {
                // The HTTP kit depends on the SDK alone, so it keeps connectors buildable
                // out of tree.
                assert!(
                    ["lockstep-plugin-sdk", "lockstep-http-kit"].contains(&dep.as_str()),
                    "{} depends on {dep}; connectors may use lockstep-plugin-sdk and \
                     lockstep-http-kit only",
                    dir.display()
                );
            }
            assert!(
                !["abi_stable", "libloading"].contains(&dep.as_str()),
                "{} depends on {dep} directly; use the SDK",
                dir.display()
            );
        }
    }
}

#[test]
fn pure_crates_do_no_io() {
    let io_crates = [
        "sqlx",
        "tokio",
        "reqwest",
        "libloading",
        "abi_stable",
        "axum",
        "lettre",
    ];
    for name in [
        "lockstep-core",
        "lockstep-config",
        "lockstep-mapping",
        "lockstep-protocol",
    ] {
        let deps = dependencies(&workspace_root().join("crates").join(name));
        for dep in io_crates {
            assert!(
                !deps.contains(dep),
                "{name} must do no I/O but depends on {dep}"
            );
        }
    }
}

#[test]
fn only_the_host_loads_libraries() {
    for dir in crate_dirs("crates") {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let deps = dependencies(&dir);
        if ![
            "lockstep-plugin-api",
            "lockstep-plugin-sdk",
            "lockstep-plugin-host",
        ]
        .contains(&name.as_str())
        {
            assert!(
                !deps.contains("abi_stable"),
                "{name} depends on abi_stable; keep it inside api, sdk and host"
            );
            assert!(
                !deps.contains("libloading"),
                "{name} depends on libloading; only the host loads libraries"
            );
        }
    }
}

#[test]
fn every_crate_root_opens_with_a_purpose_paragraph() {
    let mut dirs = crate_dirs("crates");
    dirs.extend(crate_dirs("connectors"));
    dirs.push(workspace_root().join("xtask"));
    for dir in dirs {
        let root = ["src/lib.rs", "src/main.rs"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{} has no src/lib.rs or src/main.rs", dir.display()));
        let text = std::fs::read_to_string(&root).unwrap();
        assert!(
            text.starts_with("//!") && !text.starts_with("//! TODO"),
            "{} must open with a `//!` paragraph saying what the crate is for",
            root.display()
        );
    }
}

#[test]
fn the_engine_side_never_depends_on_the_author_sdk() {
    // The SDK is what connector authors write against. What the host and the plugins share
    // lives in lockstep-plugin-core; the engine side depends on that, so that the author's
    // surface can change without touching the engine (docs/architecture.md).
    let engine = [
        "lockstep-plugin-core",
        "lockstep-plugin-host",
        "lockstep-orchestrator",
        "lockstep-daemon",
        "lockstep-cli",
        "lockstep-state",
        "lockstep-core",
        "lockstep-config",
        "lockstep-mapping",
        "lockstep-protocol",
        "lockstep-plugin-api",
    ];
    for name in engine {
        let dir = workspace_root().join("crates").join(name);
        assert!(
            dir.join("Cargo.toml").exists(),
            "{name} is not in crates/; update this list"
        );
        let deps = dependencies(&dir);
        assert!(
            !deps.contains("lockstep-plugin-sdk"),
            "{name} depends on lockstep-plugin-sdk, the crate for connector authors; use \
             lockstep-plugin-core for what the host and plugins share"
        );
    }
}
