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
