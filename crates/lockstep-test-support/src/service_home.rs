//! What the harnesses of real servers installed from PyPI or npm (Tryton, Mailman, Medusa)
//! share: an exclusive file lock in their cache directory, and running a set-up command
//! quietly.
//!
//! Invariants: a [`DirLock`] is released when dropped (and by the kernel when the process
//! dies, so a killed test never leaves the cache locked); a failed command's error carries
//! the last lines it printed, never more.

use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::process::{Command, Stdio};

use fs4::fs_std::FileExt;

/// How many of a failed command's last output lines its error shows.
const TAIL_LINES: usize = 15;

/// Holds an exclusive lock on the file `dir/name` while alive.
pub(crate) struct DirLock(File);

impl DirLock {
    /// Waits for and takes the lock on `dir/name`, creating both when missing.
    pub(crate) fn take(dir: &Path, name: &str) -> Result<Self, String> {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        file.lock_exclusive()
            .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
        Ok(Self(file))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.0);
    }
}

/// Runs `command` with no input, or returns an error naming `what` with the tail of what it
/// printed.
pub(crate) fn run_quietly(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot start it ({e})"))?;
    if output.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    Err(format!("{what} failed ({}):\n{tail}", output.status))
}
