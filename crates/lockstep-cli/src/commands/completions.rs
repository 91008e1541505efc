//! `lockstep completions <shell>` and the hidden `lockstep manpages <dir>`: shell completions
//! and man pages generated from the command-line definition in `app.rs`, so that they can
//! never disagree with what the binary accepts.
//!
//! Invariants:
//! - Both are generated from `Cli::command()`, never written by hand.
//! - Hidden subcommands (the daemon's worker, `manpages` itself) get no man page.

use std::path::Path;

use clap::CommandFactory;

use super::CmdResult;
use crate::app::Cli;
use crate::output::{out, outln};

/// Prints the completion script for `shell` on stdout.
pub fn print(shell: clap_complete::Shell) -> CmdResult {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "lockstep", &mut script);
    out!("{}", String::from_utf8_lossy(&script));
    Ok(())
}

/// Writes `lockstep.1` and one `lockstep-<subcommand>[-<subcommand>].1` per visible
/// subcommand into `dir`, creating it when missing.
pub fn write_manpages(dir: &Path) -> CmdResult {
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create the man page directory {}: {e}",
            dir.display()
        )
    })?;
    let mut command = Cli::command();
    command.build();
    let mut written = Vec::new();
    write_page(&command, "lockstep", dir, &mut written)?;
    for path in &written {
        outln!("{}", path.display());
    }
    Ok(())
}

/// Renders `command` as `name.1`, then each of its visible subcommands as `name-sub.1`.
fn write_page(
    command: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<std::path::PathBuf>,
) -> CmdResult {
    // A subcommand's page is titled with its full name (`lockstep-connectors-list`), as git's are.
    let page = command
        .clone()
        .display_name(name)
        .bin_name(name.replace('-', " "));
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .title(name)
        .section("1")
        .source(format!("lockstep {}", env!("CARGO_PKG_VERSION")))
        .manual("Lockstep Manual")
        .render(&mut roff)
        .map_err(|e| format!("cannot render the man page of `{name}`: {e}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, roff).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    written.push(path);
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_page(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_subcommand_gets_a_man_page_and_hidden_ones_do_not() {
        let dir = std::env::temp_dir().join(format!("lockstep-manpages-{}", std::process::id()));
        write_manpages(&dir).unwrap_or_else(|_| panic!("writing the man pages failed"));
        let page = |name: &str| dir.join(format!("{name}.1"));
        let main = std::fs::read_to_string(page("lockstep")).expect("lockstep.1");
        assert!(main.contains(".TH lockstep 1"), "{main}");
        assert!(
            main.contains("daemon"),
            "the main page lists the subcommands"
        );
        let list = std::fs::read_to_string(page("lockstep-connectors-list")).expect("subpage");
        assert!(list.contains("lockstep connectors list"), "{list}");
        assert!(page("lockstep-daemon").exists());
        assert!(!page("lockstep-worker").exists(), "the worker is hidden");
        assert!(!page("lockstep-manpages").exists(), "manpages is hidden");
        std::fs::remove_dir_all(&dir).expect("cleaning up");
    }
}
