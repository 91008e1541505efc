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
                // The HTTP and SQL kits depend on the SDK alone, so they keep connectors
                // buildable out of tree.
                assert!(
                    [
                        "lockstep-plugin-sdk",
                        "lockstep-http-kit",
                        "lockstep-sql-kit"
                    ]
                    .contains(&dep.as_str()),
                    "{} depends on {dep}; connectors may use lockstep-plugin-sdk, \
                     lockstep-http-kit and lockstep-sql-kit only",
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

/// Every crate of the repository: the workspace's members and the crates it excludes on
/// purpose (the example connector, built out of tree).
fn repository_crates() -> Vec<PathBuf> {
    let root = workspace_root();
    let workspace = manifest(&root.join("Cargo.toml"));
    let list = |key: &str| -> Vec<PathBuf> {
        workspace["workspace"]
            .get(key)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .map(|m| root.join(m.as_str().expect("a member path")))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut dirs = list("members");
    // An excluded directory may be a workspace of its own without a package (the guide's
    // examples): its members are the crates.
    for excluded in list("exclude") {
        let nested = manifest(&excluded.join("Cargo.toml"));
        match nested.get("package") {
            Some(_) => dirs.push(excluded),
            None => dirs.extend(
                nested["workspace"]["members"]
                    .as_array()
                    .expect("a workspace without a package lists its members")
                    .iter()
                    .map(|m| excluded.join(m.as_str().expect("a member path"))),
            ),
        }
    }
    assert!(
        dirs.len() >= 10,
        "expected the workspace's crates in Cargo.toml, found {dirs:?}"
    );
    dirs
}

/// The Rust files of the crate in `dir`: everything under it but build output, Node modules
/// and crates nested inside it (`tests/plugins/*` inside `tests/`), which are checked as
/// crates of their own.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, top: bool, out: &mut Vec<PathBuf>) {
        if !top && dir.join("Cargo.toml").exists() {
            return;
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if path.is_dir() {
                if !["target", "node_modules"].contains(&name.as_ref()) && !name.starts_with('.') {
                    walk(&path, false, out);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, true, &mut files);
    files
}

/// Whether `text` opens with `//!` docs once blank lines and attributes (`#![...]`,
/// `#[...]`, possibly over several lines) are skipped.
fn opens_with_module_docs(text: &str) -> bool {
    let mut open_brackets = 0i32;
    for line in text.lines() {
        let trimmed = line.trim();
        if open_brackets > 0 || trimmed.starts_with("#[") || trimmed.starts_with("#![") {
            open_brackets += trimmed.matches('[').count() as i32;
            open_brackets -= trimmed.matches(']').count() as i32;
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        return trimmed.starts_with("//!");
    }
    false
}

#[test]
fn every_module_opens_with_module_docs() {
    let mut missing = Vec::new();
    let mut checked = 0;
    for dir in repository_crates() {
        for file in rust_files(&dir) {
            checked += 1;
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if !opens_with_module_docs(&text) {
                missing.push(file.display().to_string());
            }
        }
    }
    assert!(checked >= 100, "only {checked} Rust files found");
    assert!(
        missing.is_empty(),
        "these files must open with `//!` docs (after attributes) saying what the module is \
         for and what must hold in it:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_module_docs_check_skips_attributes_and_blank_lines_only() {
    assert!(opens_with_module_docs("//! Docs.\nfn f() {}"));
    assert!(opens_with_module_docs(
        "\n#![allow(\n    dead_code,\n)]\n#[cfg(test)]\n\n//! Docs."
    ));
    assert!(!opens_with_module_docs("use std::fs;\n//! Docs."));
    assert!(!opens_with_module_docs("// A comment.\n//! Docs."));
    assert!(!opens_with_module_docs("/// An item's docs.\nfn f() {}"));
    assert!(!opens_with_module_docs(""));
}

/// Dependencies a crate declares without naming them in its code, with the reason. Each is
/// used through a feature or a macro's expansion only. Keep this list short and commented.
const DEPENDENCIES_USED_WITHOUT_A_PATH: &[(&str, &str)] = &[];

/// Whether `name` (a crate's name as code spells it) appears in `code` as the first segment
/// of a path (`name::`, `use name;`, `use name as`, `extern crate name`), outside `//`
/// comments.
fn names_crate(code: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    code.lines()
        .map(str::trim_start)
        .filter(|line| !line.starts_with("//"))
        .any(|line| {
            line.match_indices(name).any(|(at, _)| {
                let before = line[..at].chars().next_back();
                if before.is_some_and(|c| is_ident(c) || c == ':') {
                    return false;
                }
                let after = line[at + name.len()..].trim_start();
                if after.starts_with("::") {
                    return true;
                }
                let head = line[..at].trim_end();
                let as_item = head.ends_with("use") || head.ends_with("extern crate");
                as_item && (after.starts_with(';') || after.starts_with("as ") || after.is_empty())
            })
        })
}

/// The dependency keys of every dependency table of a manifest: `[dependencies]`,
/// `[dev-dependencies]`, `[build-dependencies]` and their `[target.*]` forms. A renamed
/// dependency (`key = { package = "..." }`) is used in code under its key.
fn declared_dependencies(manifest: &toml::Table) -> Vec<(String, String)> {
    let tables = ["dependencies", "dev-dependencies", "build-dependencies"];
    let mut found = Vec::new();
    let mut collect = |table: &toml::Table, prefix: &str| {
        for kind in tables {
            if let Some(deps) = table.get(kind).and_then(|d| d.as_table()) {
                for key in deps.keys() {
                    found.push((format!("{prefix}{kind}"), key.clone()));
                }
            }
        }
    };
    collect(manifest, "");
    if let Some(targets) = manifest.get("target").and_then(|t| t.as_table()) {
        for (cfg, table) in targets {
            if let Some(table) = table.as_table() {
                collect(table, &format!("target.{cfg}."));
            }
        }
    }
    found
}

#[test]
fn no_crate_declares_a_dependency_it_does_not_use() {
    let mut unused = Vec::new();
    for dir in repository_crates() {
        let manifest = manifest(&dir.join("Cargo.toml"));
        let package = manifest["package"]["name"]
            .as_str()
            .expect("a package name")
            .to_owned();
        let code: String = rust_files(&dir)
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
            .collect::<Vec<_>>()
            .join("\n");
        for (table, key) in declared_dependencies(&manifest) {
            let excepted = DEPENDENCIES_USED_WITHOUT_A_PATH
                .iter()
                .any(|(name, _)| *name == format!("{package}/{key}"));
            if !excepted && !names_crate(&code, &key.replace('-', "_")) {
                unused.push(format!(
                    "{}: [{table}] {key}",
                    dir.join("Cargo.toml").display()
                ));
            }
        }
    }
    assert!(
        unused.is_empty(),
        "these dependencies are declared but no code of their crate names them; remove them, \
         or, when one is needed for a feature or a macro only, add `<crate>/<dependency>` with \
         the reason to DEPENDENCIES_USED_WITHOUT_A_PATH in tests/tests/e2e/tidy.rs:\n  {}",
        unused.join("\n  ")
    );
}

#[test]
fn the_dependency_check_recognises_paths_only() {
    assert!(names_crate("use serde_json::Value;", "serde_json"));
    assert!(names_crate(
        "    let v = serde_json :: json!({});",
        "serde_json"
    ));
    assert!(names_crate("#[tokio::test]", "tokio"));
    assert!(names_crate("use libc;", "libc"));
    assert!(names_crate("extern crate abi_stable as abi;", "abi_stable"));
    assert!(!names_crate(
        "use lockstep_test_support::arrow::array;",
        "arrow"
    ));
    assert!(!names_crate("// serde::Deserialize is not needed", "serde"));
    assert!(!names_crate("use my_serde::X;", "serde"));
    assert!(!names_crate("let serde = 1;", "serde"));
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
        "TWO_WAY_KEYS",
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

/// The `crate::module` paths a module file refers to: `crate::engine::Engine`,
/// `crate::{deletes, reconcile}` and `crate::lease::{FencedWriter, HeldLease}` name the
/// modules `engine`, `deletes`, `reconcile` and `lease`. Line comments are skipped.
fn crate_module_references(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let identifier = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut modules = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        // `lockstep_state::crate_x` or `my_crate::` are not `crate::` paths.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // A group: the first segment of each top-level item names a module.
            let mut depth = 0usize;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    _ if item_start && !c.is_whitespace() => {
                        modules.insert(identifier(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            modules.insert(identifier(rest));
        }
    }
    modules.remove("");
    modules
}

/// The cycles among the module files of `src`: each as the path of modules from one module
/// back to itself, every step a `crate::module` reference.
fn module_cycles(src: &Path) -> Vec<Vec<String>> {
    let mut graph: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for entry in std::fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
        let path = entry.unwrap().path();
        let Some(name) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        if path.extension().is_none_or(|e| e != "rs") || name == "lib" || name == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        graph.insert(name, crate_module_references(&text));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for references in graph.values_mut() {
        // Only module files count: `crate::SomeReexport` names the crate root.
        references.retain(|m| modules.contains(m));
    }
    // From each module, search for a path that comes back to it (shortest first).
    let mut cycles: Vec<Vec<String>> = Vec::new();
    let mut reported: BTreeSet<BTreeSet<String>> = BTreeSet::new();
    for start in graph.keys() {
        let mut came_from: std::collections::BTreeMap<&str, &str> = Default::default();
        let mut queue = std::collections::VecDeque::from([start.as_str()]);
        let mut closing = None;
        while let Some(module) = queue.pop_front() {
            for next in &graph[module] {
                if next == start {
                    closing = Some(module);
                    break;
                }
                if !came_from.contains_key(next.as_str()) {
                    came_from.insert(next, module);
                    queue.push_back(next);
                }
            }
            if closing.is_some() {
                break;
            }
        }
        let Some(mut at) = closing else { continue };
        // Walk back from the module that closes the circle to the start, then read forward.
        let mut back = Vec::new();
        while at != start {
            back.push(at.to_owned());
            at = came_from[at];
        }
        let mut path = vec![start.clone()];
        path.extend(back.into_iter().rev());
        path.push(start.clone());
        if reported.insert(path.iter().cloned().collect()) {
            cycles.push(path);
        }
    }
    cycles
}

#[test]
fn no_module_of_the_orchestrator_or_the_daemon_imports_one_that_imports_it_back() {
    assert_eq!(
        crate_module_references(
            "use crate::{deletes, lease::{A, B}};\nuse crate::engine::Engine; // crate::not_this\n\
             let x = lockstep_crate::y; crate::faults::fault_point(p, 1);"
        ),
        BTreeSet::from(["deletes", "lease", "engine", "faults"].map(String::from)),
        "the reference parser itself"
    );
    let mut problems = Vec::new();
    for krate in ["crates/lockstep-orchestrator", "crates/lockstep-daemon"] {
        let src = workspace_root().join(krate).join("src");
        for cycle in module_cycles(&src) {
            problems.push(format!("{krate}: {}", cycle.join(" -> ")));
        }
    }
    assert!(
        problems.is_empty(),
        "modules import each other in a circle (each arrow is a `crate::module` reference); \
         move what both need into a module of its own that neither imports back:\n{}",
        problems.join("\n")
    );
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
