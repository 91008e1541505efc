//! `cargo xtask dist`: the release tarball and the Debian package, under `target/dist/`.
//!
//! - `lockstep-<version>-<target>.tar.gz`: `lockstep`, `connectors/`, man pages, shell
//!   completions, the config's JSON Schema, an example config, the systemd unit, README and
//!   licences.
//! - `lockstep-<version>-<target>-dbgsym.tar.gz`: the debug symbols split off the stripped
//!   files (`objcopy --only-keep-debug`, linked back with `--add-gnu-debuglink`), unless
//!   `--no-dbgsym`.
//! - `lockstep_<version>-1_<arch>.deb`, built with `dpkg-deb` from a staged tree (layout in
//!   docs/packaging.md).
//!
//! Invariants:
//! - The outputs depend only on the sources and `SOURCE_DATE_EPOCH` (the last commit's time
//!   by default): files are sorted, owned by root, dated by it, and gzip stores no name or time.
//! - Everything shipped is generated from the sources here (man pages and completions from
//!   the CLI definition, `lockstep.toml(5)` from docs/config.md), never checked in twice.
//! - The real distribution build is `--profile release`; `--profile dev` packages the debug
//!   binaries a test run already built, so that CI checks the packaging without a release build.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::manpage;
use crate::{cargo, root};

/// The connector plugins the packages ship, by crate name: every crate under `connectors/`
/// but the out-of-tree `example` (a test keeps the two in step).
pub const PACKAGED_CONNECTORS: &[&str] = &[
    "lockstep-connector-sqlite",
    "lockstep-connector-postgres",
    "lockstep-connector-mysql",
    "lockstep-connector-files",
    "lockstep-connector-hubspot",
    "lockstep-connector-tryton",
    "lockstep-connector-mailman",
    "lockstep-connector-mailchimp",
    "lockstep-connector-medusa",
];

/// What `cargo xtask dist` was asked for.
#[derive(Debug)]
struct Options {
    /// The cargo profile: `release` (default) or `dev`.
    profile: String,
    /// Skip `cargo build` (the files must be built already).
    no_build: bool,
    /// Skip the debug-symbol tarball.
    no_dbgsym: bool,
}

impl Options {
    fn parse(args: &[&str]) -> Result<Options> {
        let mut options = Options {
            profile: "release".into(),
            no_build: false,
            no_dbgsym: false,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match *arg {
                "--profile" => {
                    options.profile = args
                        .next()
                        .context("--profile needs a value: release or dev")?
                        .to_string();
                }
                "--no-build" => options.no_build = true,
                "--no-dbgsym" => options.no_dbgsym = true,
                other => bail!(
                    "unknown argument `{other}` to `cargo xtask dist`; it takes \
                     [--profile release|dev] [--no-build] [--no-dbgsym]"
                ),
            }
        }
        if !matches!(options.profile.as_str(), "release" | "dev") {
            bail!(
                "--profile {} is not supported: use release (the distribution build) or dev \
                 (CI's packaging check on the test build)",
                options.profile
            );
        }
        Ok(options)
    }

    /// `gzip`'s level: the best for releases; the fastest for `dev`, whose point is checking
    /// the packaging, not shipping (xz on debug binaries takes minutes on two cores).
    fn fast(&self) -> bool {
        self.profile == "dev"
    }

    /// The directory under `target/` the profile builds into.
    fn profile_dir(&self) -> &str {
        match self.profile.as_str() {
            "dev" => "debug",
            other => other,
        }
    }
}

pub fn run(args: &[&str]) -> Result<()> {
    let options = Options::parse(args)?;
    if !options.no_build {
        if options.profile == "dev" {
            // The same selection as `cargo xtask test` builds, so that nothing is rebuilt.
            cargo(&["build", "--workspace"])?;
        } else {
            let mut args = vec!["build", "--locked", "--profile", &options.profile];
            args.extend(["-p", "lockstep-cli"]);
            for connector in PACKAGED_CONNECTORS {
                args.extend(["-p", connector]);
            }
            cargo(&args)?;
        }
    }
    let root = root();
    let built = root.join("target").join(options.profile_dir());
    let dist = root.join("target/dist");
    let version = env!("CARGO_PKG_VERSION");
    let target = host_target()?;
    let epoch = source_date_epoch()?;
    let name = format!("lockstep-{version}-{target}");

    let stage = dist.join(&name);
    remove_dir(&stage)?;
    let debug_stage = dist.join(format!("{name}-dbgsym"));
    remove_dir(&debug_stage)?;
    mkdir(&stage.join("connectors"))?;

    // Binaries and plugins, stripped, with their symbols split off.
    let mut sizes = Vec::new();
    let binary = stage.join("lockstep");
    copy(&built.join("lockstep"), &binary)?;
    let mut shipped = vec![binary.clone()];
    for connector in PACKAGED_CONNECTORS {
        let file = format!(
            "lib{}{}",
            connector.replace('-', "_"),
            std::env::consts::DLL_SUFFIX
        );
        let to = stage.join("connectors").join(&file);
        copy(&built.join(&file), &to)?;
        shipped.push(to);
    }
    for file in &shipped {
        let before = size_of(file)?;
        strip(file, (!options.no_dbgsym).then_some(&debug_stage))?;
        sizes.push((file.clone(), before, size_of(file)?));
    }

    // Generated documentation.
    let man1 = stage.join("man/man1");
    run_tool(Command::new(&binary).arg("manpages").arg(&man1))?;
    let man5 = stage.join("man/man5");
    mkdir(&man5)?;
    let config_md = read(&root.join("docs/config.md"))?;
    let page = manpage::config_page(&config_md, version, epoch)?;
    write(&man5.join("lockstep.toml.5"), page.as_bytes())?;
    let completions = stage.join("completions");
    mkdir(&completions)?;
    for (shell, file) in [
        ("bash", "lockstep.bash"),
        ("zsh", "_lockstep"),
        ("fish", "lockstep.fish"),
    ] {
        let script = capture(Command::new(&binary).args(["completions", shell]))?;
        write(&completions.join(file), &script)?;
    }
    // The config file's schema with the packaged connectors' own (the staged binary finds
    // them in its `connectors/` directory).
    let schema = capture(
        Command::new(&binary)
            .args(["--config", "/nonexistent/lockstep.toml", "config", "schema"])
            .env_remove("LOCKSTEP_CONNECTOR_PATH"),
    )?;
    write(&stage.join("lockstep.schema.json"), &schema)?;

    // Files from the source tree.
    for (from, to) in [
        ("README.md", "README.md"),
        ("LICENSE-MIT", "LICENSE-MIT"),
        ("LICENSE-APACHE", "LICENSE-APACHE"),
        ("packaging/lockstep.toml", "lockstep.toml.example"),
        ("packaging/lockstep.service", "systemd/lockstep.service"),
        ("docs/packaging.md", "docs/packaging.md"),
        ("docs/config.md", "docs/config.md"),
    ] {
        copy(&root.join(from), &stage.join(to))?;
    }

    let tarball = dist.join(format!("{name}.tar.gz"));
    tar_gz(&dist, &name, &tarball, epoch, options.fast())?;
    if !options.no_dbgsym {
        let debug_tarball = dist.join(format!("{name}-dbgsym.tar.gz"));
        tar_gz(
            &dist,
            &format!("{name}-dbgsym"),
            &debug_tarball,
            epoch,
            options.fast(),
        )?;
        println!("{}", debug_tarball.display());
    }
    println!("{}", tarball.display());

    let deb = crate::deb::build(&stage, &dist, version, epoch, options.fast())?;
    println!("{}", deb.display());

    println!("\nsizes (before strip -> after):");
    for (file, before, after) in sizes {
        println!(
            "  {:<40} {:>6.1} MB -> {:>5.1} MB",
            file.file_name().unwrap_or_default().to_string_lossy(),
            before as f64 / 1e6,
            after as f64 / 1e6
        );
    }
    Ok(())
}

/// Strips `file` in place. With `debug_dir`, its symbols go first into
/// `debug_dir/<name>.debug`, which the stripped file names in its `.gnu_debuglink`.
fn strip(file: &Path, debug_dir: Option<&PathBuf>) -> Result<()> {
    if let Some(debug_dir) = debug_dir {
        mkdir(debug_dir)?;
        let name = file.file_name().context("a file name")?.to_string_lossy();
        let debug = debug_dir.join(format!("{name}.debug"));
        run_tool(
            Command::new("objcopy")
                .arg("--only-keep-debug")
                .arg("--compress-debug-sections")
                .arg(file)
                .arg(&debug),
        )?;
        run_tool(
            Command::new("strip")
                .args(["--strip-unneeded", "--remove-section=.comment"])
                .arg(file),
        )?;
        // The link is resolved relative to the file's directory, so give the bare name.
        run_tool(
            Command::new("objcopy")
                .current_dir(debug_dir)
                .arg(format!("--add-gnu-debuglink={name}.debug"))
                .arg(file),
        )?;
    } else {
        run_tool(
            Command::new("strip")
                .args(["--strip-unneeded", "--remove-section=.comment"])
                .arg(file),
        )?;
    }
    Ok(())
}

/// `tar` of `dir_name` (a directory of `parent`) into `out`, reproducibly.
fn tar_gz(parent: &Path, dir_name: &str, out: &Path, epoch: u64, fast: bool) -> Result<()> {
    let compressor = if fast {
        "--use-compress-program=gzip -1n"
    } else {
        "--use-compress-program=gzip -9n"
    };
    run_tool(
        Command::new("tar")
            .current_dir(parent)
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mode=u+rw,go+r,go-w",
                &format!("--mtime=@{epoch}"),
                compressor,
                "-cf",
            ])
            .arg(out)
            .arg(dir_name),
    )
}

/// The Rust target the host builds for, e.g. `x86_64-unknown-linux-gnu`.
fn host_target() -> Result<String> {
    let text = String::from_utf8(capture(Command::new("rustc").arg("-vV"))?)?;
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc -vV` printed no `host:` line")
}

/// `SOURCE_DATE_EPOCH`, or the last commit's time.
pub fn source_date_epoch() -> Result<u64> {
    if let Ok(text) = std::env::var("SOURCE_DATE_EPOCH") {
        return text.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH must be seconds since 1970, found `{text}`")
        });
    }
    let text = capture(
        Command::new("git")
            .current_dir(root())
            .args(["log", "-1", "--format=%ct"]),
    )
    .context("no SOURCE_DATE_EPOCH and no git history to take the last commit's time from")?;
    String::from_utf8_lossy(&text)
        .trim()
        .parse()
        .context("`git log -1 --format=%ct` printed no number")
}

/// Runs a command, failing with its stderr when it fails.
pub fn run_tool(command: &mut Command) -> Result<()> {
    capture(command).map(drop)
}

/// Runs a command and returns its stdout, failing with its stderr when it fails.
pub fn capture(command: &mut Command) -> Result<Vec<u8>> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .with_context(|| format!("cannot run {shown} (is it installed?)"))?;
    if !output.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

pub fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

pub fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

pub fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        mkdir(parent)?;
    }
    std::fs::copy(from, to).with_context(|| {
        format!(
            "cannot copy {} to {} (is it built? run without --no-build)",
            from.display(),
            to.display()
        )
    })?;
    Ok(())
}

pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn size_of(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_refuse_what_they_do_not_know() {
        let options = Options::parse(&["--profile", "dev", "--no-dbgsym"]).expect("valid");
        assert_eq!(options.profile_dir(), "debug");
        assert!(options.no_dbgsym && !options.no_build);
        assert_eq!(Options::parse(&[]).expect("valid").profile_dir(), "release");
        let error = Options::parse(&["--profile", "bench"]).unwrap_err();
        assert!(error.to_string().contains("--profile bench"), "{error}");
        let error = Options::parse(&["--fast"]).unwrap_err();
        assert!(error.to_string().contains("`--fast`"), "{error}");
    }

    /// A connector added to the workspace is packaged too (two were missing once).
    #[test]
    fn every_connector_of_the_workspace_is_packaged() {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(root().join("connectors")).expect("connectors/") {
            let manifest = entry.expect("an entry").path().join("Cargo.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else {
                continue;
            };
            let value: toml::Table = text.parse().expect("a Cargo.toml");
            let name = value["package"]["name"].as_str().expect("a package name");
            if name != "lockstep-connector-example" {
                found.push(name.to_owned());
            }
        }
        found.sort();
        let mut packaged: Vec<String> = PACKAGED_CONNECTORS.iter().map(|c| c.to_string()).collect();
        packaged.sort();
        assert_eq!(found, packaged);
    }
}
