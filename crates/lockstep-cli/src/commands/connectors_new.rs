//! `lockstep connectors new NAME`: writes a ready connector crate from the templates in
//! `crates/lockstep-cli/templates/connector/` (compiled into the binary).
//!
//! The crate is a working connector over a directory of JSON Lines files, playing the roles
//! asked for, with a conformance test that ends in `.assert_passed()` and a README; its
//! Cargo.toml takes the SDK and the conformance kit from a checkout (`--sdk path:DIR`), a git
//! repository (`--sdk git:URL`, the default being this project's repository) or a registry
//! release (`--sdk VERSION`).
//!
//! Invariants: nothing is written when any argument is bad, and an existing non-empty
//! directory is never written into; every placeholder of every template is filled (a unit
//! test renders each combination of roles and looks for leftovers).

use std::path::{Path, PathBuf};

use super::{CliError, CmdResult};
use crate::output::outln;

/// The template files: their path in the new crate, and their text.
const CARGO_TOML: &str = include_str!("../../templates/connector/Cargo.toml.tmpl");
const README: &str = include_str!("../../templates/connector/README.md.tmpl");
const GITIGNORE: &str = include_str!("../../templates/connector/gitignore.tmpl");
const LIB_RS: &str = include_str!("../../templates/connector/src/lib.rs.tmpl");
const DIR_RS: &str = include_str!("../../templates/connector/src/dir.rs");
const SOURCE_RS: &str = include_str!("../../templates/connector/src/source.rs");
const DESTINATION_RS: &str = include_str!("../../templates/connector/src/destination.rs");
const CONFORMANCE_RS: &str = include_str!("../../templates/connector/tests/conformance.rs.tmpl");

/// The repository the SDK comes from when `--sdk` is not given.
const REPOSITORY: &str = env!("CARGO_PKG_REPOSITORY");

/// Where the new crate takes the SDK and the conformance kit from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkSource {
    /// A checkout of the Lockstep repository (its root directory).
    Path(PathBuf),
    /// A git repository holding the Lockstep workspace.
    Git(String),
    /// A release from the package registry, such as `0.1`.
    Version(String),
}

impl SdkSource {
    /// Parses `path:DIR`, `git:URL` or a version requirement.
    pub fn parse(spec: &str) -> Result<Self, String> {
        if let Some(dir) = spec.strip_prefix("path:") {
            if dir.is_empty() {
                return Err(
                    "`--sdk path:` needs a directory: the root of a Lockstep checkout".into(),
                );
            }
            return Ok(SdkSource::Path(PathBuf::from(dir)));
        }
        if let Some(url) = spec.strip_prefix("git:") {
            if url.is_empty() {
                return Err("`--sdk git:` needs the URL of a Lockstep repository".into());
            }
            return Ok(SdkSource::Git(url.to_owned()));
        }
        let looks_like_version = !spec.is_empty()
            && spec
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || "^~=".contains(c))
            && spec
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".^~=-+".contains(c));
        if looks_like_version {
            return Ok(SdkSource::Version(spec.to_owned()));
        }
        Err(format!(
            "`--sdk {spec}` is not understood: give `path:DIR` (a Lockstep checkout), \
             `git:URL` (a Lockstep repository) or a version such as `0.1`"
        ))
    }

    /// The dependency line's value for `crate_dir` (such as `crates/lockstep-plugin-sdk`).
    fn dependency(&self, crate_dir: &str) -> String {
        match self {
            SdkSource::Path(root) => {
                format!(
                    "{{ path = {} }}",
                    toml_string(&root.join(crate_dir).display().to_string())
                )
            }
            SdkSource::Git(url) => format!("{{ git = {} }}", toml_string(url)),
            SdkSource::Version(version) => toml_string(version),
        }
    }

    /// Where the dependencies come from, in words, for comments and the README.
    fn origin(&self) -> String {
        match self {
            SdkSource::Path(root) => format!("the Lockstep checkout at {}", root.display()),
            SdkSource::Git(url) => format!("the git repository {url}"),
            SdkSource::Version(version) => {
                format!("the package registry, version {version} (not yet published there)")
            }
        }
    }
}

/// What `lockstep connectors new` was asked for.
#[derive(Debug, Clone)]
pub struct NewConnector {
    /// The connector's name, as configs will spell it.
    pub name: String,
    /// Whether it plays the source role.
    pub source: bool,
    /// Whether it plays the destination role.
    pub destination: bool,
    /// Where the SDK comes from.
    pub sdk: SdkSource,
}

/// `lockstep connectors new`.
pub fn run(
    name: &str,
    source: bool,
    destination: bool,
    path: Option<&Path>,
    sdk: Option<&str>,
) -> CmdResult {
    check_name(name).map_err(CliError::Message)?;
    let sdk_given = sdk.is_some();
    let sdk = match sdk {
        Some(spec) => SdkSource::parse(spec).map_err(CliError::Message)?,
        None => SdkSource::Git(REPOSITORY.to_owned()),
    };
    let sdk = match sdk {
        SdkSource::Path(root) => SdkSource::Path(checkout_root(&root).map_err(CliError::Message)?),
        other => other,
    };
    // Neither flag means both roles.
    let (source, destination) = if source || destination {
        (source, destination)
    } else {
        (true, true)
    };
    let request = NewConnector {
        name: name.to_owned(),
        source,
        destination,
        sdk,
    };
    let dir = path
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(crate_name(name)));
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(CliError::Message(format!(
                "{} already exists and is not empty: choose another directory with --path",
                dir.display()
            )));
        }
    }
    for (file, text) in render(&request) {
        let target = dir.join(file);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&target, text)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    }
    let roles = match (source, destination) {
        (true, true) => "source and destination",
        (true, false) => "source",
        _ => "destination",
    };
    outln!(
        "created connector `{name}` ({roles}) in {}\n\
         the SDK comes from {}\n\n\
         next:\n  cd {}\n  cargo test              # builds the plugin and runs the conformance kit\n  \
         cargo build --release   # target/release/{}",
        dir.display(),
        request.sdk.origin(),
        dir.display(),
        library_file(name),
    );
    if !sdk_given {
        outln!(
            "\n(the SDK is not yet released to the package registry: the crate takes it from \
             git; for a local checkout of Lockstep pass --sdk path:DIR)"
        );
    }
    Ok(())
}

/// A connector name is what configs spell in `connector = "..."` and part of the library's
/// file name: lowercase ASCII letters, digits and underscores, starting with a letter.
fn check_name(name: &str) -> Result<(), String> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        return Ok(());
    }
    let suggestion: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let suggestion = suggestion.trim_start_matches(|c: char| !c.is_ascii_lowercase());
    let hint = if suggestion.is_empty() {
        String::new()
    } else {
        format!(" (such as `{suggestion}`)")
    };
    Err(format!(
        "`{name}` cannot be a connector name: use lowercase letters, digits and underscores, \
         starting with a letter{hint}"
    ))
}

/// The root of the Lockstep checkout `dir`, made absolute, or why it is not one.
fn checkout_root(dir: &Path) -> Result<PathBuf, String> {
    let root =
        std::fs::canonicalize(dir).map_err(|e| format!("`--sdk path:{}`: {e}", dir.display()))?;
    for needed in [
        "crates/lockstep-plugin-sdk/Cargo.toml",
        "crates/lockstep-test-support/Cargo.toml",
    ] {
        if !root.join(needed).is_file() {
            return Err(format!(
                "`--sdk path:{}` is not the root of a Lockstep checkout: {} is missing",
                dir.display(),
                root.join(needed).display()
            ));
        }
    }
    Ok(root)
}

fn crate_name(name: &str) -> String {
    format!("lockstep-connector-{}", name.replace('_', "-"))
}

fn lib_name(name: &str) -> String {
    format!("lockstep_connector_{name}")
}

fn library_file(name: &str) -> String {
    format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        lib_name(name),
        std::env::consts::DLL_SUFFIX
    )
}

/// `acme_crm` becomes `AcmeCrmConnector`.
fn type_name(name: &str) -> String {
    let mut out = String::new();
    for part in name.split('_').filter(|p| !p.is_empty()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars);
        }
    }
    out.push_str("Connector");
    out
}

/// A TOML basic string holding `text`.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Fills `{{key}}` placeholders.
fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut text = template.to_owned();
    for (key, value) in values {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    text
}

/// The files of the new crate: path relative to its directory, and contents.
pub fn render(request: &NewConnector) -> Vec<(&'static str, String)> {
    let name = request.name.as_str();
    let (source, destination) = (request.source, request.destination);
    let description = match (source, destination) {
        (true, true) => "JSON Lines files in a directory, one file per stream.",
        (true, false) => "reads JSON Lines files in a directory, one file per stream.",
        _ => "writes JSON Lines files into a directory, one file per stream.",
    };
    // In the order rustfmt sorts them.
    let mut modules = String::new();
    let mut readme_files =
        vec!["- `src/lib.rs`: the manifest (name, version, features) and the roles.".to_owned()];
    readme_files.push(
        "- `src/dir.rs`: the config type and the directory of files both roles use.".to_owned(),
    );
    if destination {
        modules.push_str("mod destination;\n");
    }
    modules.push_str("mod dir;\n");
    if source {
        modules.push_str("mod source;\n");
        readme_files.push(
            "- `src/source.rs`: the source role: discover, and reads in key order with \
             checkpoints."
                .to_owned(),
        );
    }
    if destination {
        readme_files.push(
            "- `src/destination.rs`: the destination role: open_stream, upsert, delete, flush."
                .to_owned(),
        );
    }
    readme_files
        .push("- `tests/conformance.rs`: the conformance kit against the built plugin.".to_owned());
    let features = if destination {
        "\n                \"upsert\".into(),\n                \"delete\".into(),\n                \"create-stream\".into(),\n                \"add-columns\".into(),\n            "
    } else {
        ""
    };
    let mut setup = String::new();
    let mut configs = String::new();
    if source {
        setup.push_str(
            r#"    // A source directory with one stream of seven records, more than one batch of the
    // kit's reads, written out of key order: the source must deliver them in key order.
    let source = tempfile::tempdir().unwrap();
    let contacts: Vec<String> = (1..=7)
        .rev()
        .map(|id| {
            json!({"id": id, "name": format!("contact {id}"), "score": id as f64 / 4.0}).to_string()
        })
        .collect();
    std::fs::write(source.path().join("contacts.jsonl"), contacts.join("\n")).unwrap();
"#,
        );
        configs.push_str(
            r#"        .source_config(json!({ "dir": source.path() }))
        .stream("contacts")
        // Configs the connector must refuse as config errors: a missing directory, a typo.
        .bad_config(json!({ "dir": source.path().join("missing") }))
        .bad_config(json!({ "directory": source.path() }))
"#,
        );
    }
    if destination {
        setup.push_str(
            r#"    // The destination checks write a new stream of their own into an empty directory.
    let destination = tempfile::tempdir().unwrap();
"#,
        );
        configs.push_str("        .destination_config(json!({ \"dir\": destination.path() }))\n");
        if !source {
            configs.push_str(
                "        .bad_config(json!({ \"dir\": destination.path().join(\"missing\") }))\n",
            );
        }
    }
    let values = [
        ("name", name.to_owned()),
        ("crate_name", crate_name(name)),
        ("lib_name", lib_name(name)),
        ("type_name", type_name(name)),
        ("description", description.to_owned()),
        ("rust_version", env!("CARGO_PKG_RUST_VERSION").to_owned()),
        (
            "sdk_dependency",
            request.sdk.dependency("crates/lockstep-plugin-sdk"),
        ),
        (
            "test_support_dependency",
            request.sdk.dependency("crates/lockstep-test-support"),
        ),
        ("sdk_origin", request.sdk.origin()),
        ("modules", modules),
        (
            "source_type",
            if source {
                "source::JsonlSource".to_owned()
            } else {
                "lockstep_plugin_sdk::Unsupported".to_owned()
            },
        ),
        (
            "destination_type",
            if destination {
                "destination::JsonlDestination".to_owned()
            } else {
                "lockstep_plugin_sdk::Unsupported".to_owned()
            },
        ),
        ("features", features.to_owned()),
        ("test_setup", setup.trim_end().to_owned()),
        ("test_configs", configs),
        ("readme_files", readme_files.join("\n")),
    ];
    let mut files = vec![
        ("Cargo.toml", fill(CARGO_TOML, &values)),
        ("README.md", fill(README, &values)),
        (".gitignore", GITIGNORE.to_owned()),
        ("src/lib.rs", fill(LIB_RS, &values)),
        ("src/dir.rs", DIR_RS.to_owned()),
        ("tests/conformance.rs", fill(CONFORMANCE_RS, &values)),
    ];
    if source {
        files.push(("src/source.rs", SOURCE_RS.to_owned()));
    }
    if destination {
        files.push(("src/destination.rs", DESTINATION_RS.to_owned()));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled_for_every_combination_of_roles() {
        for (source, destination) in [(true, true), (true, false), (false, true)] {
            for sdk in [
                SdkSource::Path(PathBuf::from("/src/lockstep")),
                SdkSource::Git("https://example.com/lockstep.git".into()),
                SdkSource::Version("0.1".into()),
            ] {
                let request = NewConnector {
                    name: "acme_crm".into(),
                    source,
                    destination,
                    sdk,
                };
                for (file, text) in render(&request) {
                    assert!(!text.contains("{{"), "{file} keeps a placeholder:\n{text}");
                }
            }
        }
    }

    #[test]
    fn only_the_roles_asked_for_are_written() {
        let request = NewConnector {
            name: "acme".into(),
            source: true,
            destination: false,
            sdk: SdkSource::Version("0.1".into()),
        };
        let files = render(&request);
        let names: Vec<&str> = files.iter().map(|(f, _)| *f).collect();
        assert!(names.contains(&"src/source.rs"), "{names:?}");
        assert!(!names.contains(&"src/destination.rs"), "{names:?}");
        let lib = &files.iter().find(|(f, _)| *f == "src/lib.rs").unwrap().1;
        assert!(
            lib.contains("type Destination = lockstep_plugin_sdk::Unsupported;"),
            "{lib}"
        );
        assert!(lib.contains("pub struct AcmeConnector;"), "{lib}");
        let test = &files
            .iter()
            .find(|(f, _)| *f == "tests/conformance.rs")
            .unwrap()
            .1;
        assert!(!test.contains("destination_config"), "{test}");
        assert!(test.contains(".assert_passed()"), "{test}");
        let manifest = &files.iter().find(|(f, _)| *f == "Cargo.toml").unwrap().1;
        assert!(
            manifest.contains("lockstep-plugin-sdk = \"0.1\""),
            "{manifest}"
        );
        assert!(
            manifest.contains("name = \"lockstep_connector_acme\""),
            "{manifest}"
        );
    }

    #[test]
    fn sdk_specs_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!(
            SdkSource::parse("path:../lockstep"),
            Ok(SdkSource::Path("../lockstep".into()))
        );
        assert_eq!(
            SdkSource::parse("git:https://example.com/l.git"),
            Ok(SdkSource::Git("https://example.com/l.git".into()))
        );
        assert_eq!(
            SdkSource::parse("0.1"),
            Ok(SdkSource::Version("0.1".into()))
        );
        let error = SdkSource::parse("latest").unwrap_err();
        assert!(
            error.contains("path:DIR") && error.contains("git:URL"),
            "{error}"
        );
    }

    #[test]
    fn bad_names_are_refused_with_a_suggestion() {
        assert!(check_name("acme_crm2").is_ok());
        let error = check_name("Acme-CRM").unwrap_err();
        assert!(error.contains("`acme_crm`"), "{error}");
        assert!(check_name("2fast").is_err());
        assert!(check_name("").is_err());
    }

    #[test]
    fn toml_strings_escape_quotes_and_backslashes() {
        assert_eq!(toml_string(r#"C:\a "b""#), r#""C:\\a \"b\"""#);
    }
}
