//! The Debian package, built with `dpkg-deb` from the staged tarball tree (see `dist.rs`).
//!
//! `dpkg-deb` rather than `cargo-deb`: it is part of every Debian system (no tool to install
//! or pin), and the package needs hand-placed parts anyway (a conffile, a unit, generated man
//! pages and completions, a virtual ABI package). The library dependencies come from
//! `dpkg-shlibdeps`, like in a debhelper build.
//!
//! Invariants:
//! - Every file is owned by root, dated `SOURCE_DATE_EPOCH`, with 0755 for executables and
//!   0644 for the rest; man pages and the changelog are gzip'd without name or time.
//! - The package `Provides: lockstep-plugin-abi-<major>`, the plugin ABI's major version read
//!   from crates/lockstep-plugin-api, so third-party connector packages can depend on it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::dist::{capture, copy, mkdir, read, remove_dir, run_tool, write};
use crate::root;

/// The Debian revision of this packaging.
const DEBIAN_REVISION: &str = "1";

/// Builds `lockstep_<version>-1_<arch>.deb` in `dist` from the tarball tree `stage`.
/// With `fast`, the package is compressed with gzip -1 instead of xz (for CI's check).
pub fn build(stage: &Path, dist: &Path, version: &str, epoch: u64, fast: bool) -> Result<PathBuf> {
    let root = root();
    let arch = String::from_utf8(capture(Command::new("dpkg").arg("--print-architecture"))?)?
        .trim()
        .to_owned();
    let deb_version = format!("{version}-{DEBIAN_REVISION}");
    let tree = dist
        .join("deb")
        .join(format!("lockstep_{deb_version}_{arch}"));
    remove_dir(&tree)?;

    let put = |from: &Path, to: &str| copy(from, &tree.join(to));
    put(&stage.join("lockstep"), "usr/bin/lockstep")?;
    for entry in std::fs::read_dir(stage.join("connectors"))? {
        let path = entry?.path();
        let name = path.file_name().context("a plugin file name")?;
        put(
            &path,
            &format!("usr/lib/lockstep/connectors/{}", name.to_string_lossy()),
        )?;
    }
    put(
        &root.join("packaging/lockstep.service"),
        "usr/lib/systemd/system/lockstep.service",
    )?;
    put(
        &root.join("packaging/lockstep.toml"),
        "etc/lockstep/lockstep.toml",
    )?;
    put(
        &stage.join("lockstep.schema.json"),
        "usr/share/lockstep/lockstep.schema.json",
    )?;
    put(
        &stage.join("completions/lockstep.bash"),
        "usr/share/bash-completion/completions/lockstep",
    )?;
    put(
        &stage.join("completions/_lockstep"),
        "usr/share/zsh/vendor-completions/_lockstep",
    )?;
    put(
        &stage.join("completions/lockstep.fish"),
        "usr/share/fish/vendor_completions.d/lockstep.fish",
    )?;
    for section in ["man1", "man5"] {
        for entry in std::fs::read_dir(stage.join("man").join(section))? {
            let path = entry?.path();
            let name = path
                .file_name()
                .context("a man page name")?
                .to_string_lossy();
            let to = tree.join(format!("usr/share/man/{section}/{name}.gz"));
            gzip(&std::fs::read(&path)?, &to)?;
        }
    }
    let doc = "usr/share/doc/lockstep";
    put(
        &root.join("packaging/debian/copyright"),
        &format!("{doc}/copyright"),
    )?;
    put(&root.join("README.md"), &format!("{doc}/README.md"))?;
    let changelog = read(&root.join("packaging/debian/changelog"))?;
    gzip(
        changelog.as_bytes(),
        &tree.join(format!("{doc}/changelog.Debian.gz")),
    )?;
    for script in ["prerm", "postrm"] {
        put(
            &root.join("packaging/debian").join(script),
            &format!("DEBIAN/{script}"),
        )?;
    }
    put(&root.join("packaging/debian/conffiles"), "DEBIAN/conffiles")?;

    set_modes(&tree)?;
    let control = control(&tree, &deb_version, &arch)?;
    write(&tree.join("DEBIAN/control"), control.as_bytes())?;
    set_modes(&tree)?;
    set_times(&tree, epoch)?;

    let deb = dist.join(format!("lockstep_{deb_version}_{arch}.deb"));
    run_tool(
        Command::new("dpkg-deb")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .arg("--root-owner-group")
            .args(if fast {
                ["-Zgzip", "-z1"]
            } else {
                ["-Zxz", "-z6"]
            })
            .arg("--build")
            .arg(&tree)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// The `DEBIAN/control` file.
fn control(tree: &Path, deb_version: &str, arch: &str) -> Result<String> {
    let abi_major = plugin_abi_major()?;
    let depends = shlib_depends(tree)?;
    let installed_kb = installed_size_kb(tree)?;
    let template = read(&root().join("packaging/debian/control.in"))?;
    let control = template
        .replace("@VERSION@", deb_version)
        .replace("@ARCH@", arch)
        .replace("@DEPENDS@", &depends)
        .replace("@ABI_MAJOR@", &abi_major.to_string())
        .replace("@INSTALLED_SIZE@", &installed_kb.to_string());
    let leftover = control.match_indices('@').find(|(start, _)| {
        let rest = &control[start + 1..];
        let name_len = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .unwrap_or(rest.len());
        name_len > 0 && rest[name_len..].starts_with('@')
    });
    if let Some((start, _)) = leftover {
        bail!(
            "packaging/debian/control.in has a placeholder this build does not fill, at `{}`",
            &control[start..control.len().min(start + 20)]
        );
    }
    Ok(control)
}

/// The plugin ABI's major version, `ABI_MAJOR` in crates/lockstep-plugin-api/src/lib.rs.
fn plugin_abi_major() -> Result<u32> {
    let path = root().join("crates/lockstep-plugin-api/src/lib.rs");
    let text = read(&path)?;
    text.lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("pub const ABI_MAJOR: u32 = ")?
                .strip_suffix(';')?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| {
            format!(
                "no `pub const ABI_MAJOR: u32 = N;` line in {}",
                path.display()
            )
        })
}

/// The `Depends:` of the ELF files in `tree`, from `dpkg-shlibdeps` (run in a scratch
/// directory with the minimal `debian/control` it insists on).
fn shlib_depends(tree: &Path) -> Result<String> {
    let scratch = tree
        .parent()
        .context("the package tree has a parent")?
        .join("shlibdeps");
    remove_dir(&scratch)?;
    write(
        &scratch.join("debian/control"),
        b"Source: lockstep\n\nPackage: lockstep\nArchitecture: any\n",
    )?;
    let mut command = Command::new("dpkg-shlibdeps");
    command.current_dir(&scratch).arg("-O");
    for file in walk(tree)? {
        let relative = file.strip_prefix(tree)?;
        if relative.starts_with("usr/bin") || relative.starts_with("usr/lib/lockstep") {
            command.arg(format!("-e{}", file.display()));
        }
    }
    let output = capture(&mut command)
        .context("dpkg-shlibdeps (package dpkg-dev) computes the library dependencies")?;
    let text = String::from_utf8(output)?;
    let depends = text
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends line")?
        .trim()
        .to_owned();
    remove_dir(&scratch)?;
    Ok(depends)
}

fn installed_size_kb(tree: &Path) -> Result<u64> {
    let mut bytes = 0;
    for file in walk(tree)? {
        if !file.strip_prefix(tree)?.starts_with("DEBIAN") {
            bytes += std::fs::metadata(&file)?.len().div_ceil(1024) * 1024;
        }
    }
    Ok(bytes.div_ceil(1024))
}

/// 0755 for directories, executables and maintainer scripts; 0644 for everything else.
fn set_modes(tree: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for dir in dirs(tree)? {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }
    for file in walk(tree)? {
        let relative = file.strip_prefix(tree)?;
        let executable = relative.starts_with("usr/bin")
            || relative == Path::new("DEBIAN/prerm")
            || relative == Path::new("DEBIAN/postrm");
        let mode = if executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

fn set_times(tree: &Path, epoch: u64) -> Result<()> {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    for path in walk(tree)?.into_iter().chain(dirs(tree)?) {
        let file = std::fs::File::options()
            .read(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.set_modified(time)
            .with_context(|| format!("cannot date {}", path.display()))?;
    }
    Ok(())
}

/// `bytes` gzip'd into `to`, without a file name or time in the header.
fn gzip(bytes: &[u8], to: &Path) -> Result<()> {
    use std::io::Write;
    if let Some(parent) = to.parent() {
        mkdir(parent)?;
    }
    let mut child = Command::new("gzip")
        .arg("-9n")
        .stdin(std::process::Stdio::piped())
        .stdout(
            std::fs::File::create(to).with_context(|| format!("cannot create {}", to.display()))?,
        )
        .spawn()
        .context("cannot run gzip")?;
    child
        .stdin
        .take()
        .context("gzip's stdin")?
        .write_all(bytes)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("gzip failed ({status}) writing {}", to.display());
    }
    Ok(())
}

/// Every file under `dir`, sorted.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Every directory under `dir`, `dir` included.
fn dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = vec![dir.to_owned()];
    let mut index = 0;
    while index < found.len() {
        for entry in std::fs::read_dir(&found[index])? {
            let path = entry?.path();
            if path.is_dir() {
                found.push(path);
            }
        }
        index += 1;
    }
    Ok(found)
}
