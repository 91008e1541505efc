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
        "lockstep-expr",
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

/// The string literals of every `*_KEYS: &[&str] = &[...]` const in `text`: the keys a section
/// of the config validator accepts.
fn accepted_key_lists(text: &str) -> Vec<(String, Vec<String>)> {
    let mut lists = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("_KEYS: &[&str] =") {
        let name_start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .map_or(0, |i| i + 1);
        let name = format!("{}_KEYS", &rest[name_start..at]);
        let body_start = at + rest[at..].find("&[").expect("a key list starts") + 2;
        let body_end = body_start + rest[body_start..].find("];").expect("a key list ends");
        let keys = rest[body_start..body_end]
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        lists.push((name, keys));
        rest = &rest[body_end..];
    }
    lists
}

#[test]
fn docs_config_names_every_key_the_validator_accepts() {
    let root = workspace_root();
    let validate = root.join("crates/lockstep-config/src/validate");
    let mut sources = vec![root.join("crates/lockstep-config/src/validate.rs")];
    sources.extend(
        std::fs::read_dir(&validate)
            .unwrap_or_else(|e| panic!("{}: {e}", validate.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rs")),
    );
    sources.sort();
    let mut keys = BTreeSet::new();
    let mut list_names = BTreeSet::new();
    for source in &sources {
        let text =
            std::fs::read_to_string(source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        for (name, list) in accepted_key_lists(&text) {
            list_names.insert(name);
            keys.extend(list);
        }
    }
    // Every section's rules own a key list; finding fewer means the lists moved and this test
    // would check nothing.
    for section in [
        "ROOT_KEYS",
        "STATE_KEYS",
        "CONNECTORS_KEYS",
        "CONNECTION_KEYS",
        "SYNC_KEYS",
        "FIELD_KEYS",
        "SCHEDULE_KEYS",
        "RETRY_KEYS",
        "DAEMON_KEYS",
        "ALERTS_KEYS",
        "EMAIL_KEYS",
    ] {
        assert!(
            list_names.contains(section),
            "no `const {section}: &[&str]` found in {sources:?}; the tidy test reads the \
             accepted keys from these lists"
        );
    }

    let docs_path = root.join("docs/config.md");
    let docs = std::fs::read_to_string(&docs_path)
        .unwrap_or_else(|e| panic!("{}: {e}", docs_path.display()));
    // A key is documented when the reference names it in backticks (`cursor`, or with its
    // value: `cast = "type"`), or as a table (`[connections.NAME]`, `[[alerts.webhook]]`).
    let missing: Vec<&String> = keys
        .iter()
        .filter(|key| {
            ![
                format!("`{key}`"),
                format!("`{key} ="),
                format!("[{key}]"),
                format!("[{key}."),
                format!(".{key}]"),
            ]
            .iter()
            .any(|form| docs.contains(form.as_str()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/config.md does not name these keys that the config validator accepts: {missing:?}; \
         document each in the reference table of its section"
    );
}
