//! `after_read`: moving or deleting the files a committed run read whole.
//!
//! The engine has no call that tells a source its run committed, but it needs none: the
//! checkpoint the engine passes when a read opens is the one its state store committed last.
//! So at the start of each incremental read, the files that checkpoint lists as read whole
//! are exactly the files whose records are durable in the destination, and those are the
//! ones moved or deleted. A run that crashes after writing to the destination but before
//! its state commit leaves its files where they are (its checkpoint was never committed), and
//! the next run reads them again.
//!
//! Invariants:
//! - A file is touched only when the committed checkpoint lists it as read whole and it is
//!   still the same file: same name, size, modification time and content hash.
//! - A file is moved with a rename (never a copy), never over an existing file.
//! - A failed move or delete is a warning naming the file and the error, retried by the next
//!   run; it never fails a read, and never loses a record.
//! - A dry-run read (`ReadRequest::dry_run`: a plan, a verify) moves and deletes nothing.

use std::path::{Path, PathBuf};

use lockstep_plugin_sdk::{tracing, ConnectorError, Result};

use crate::config::{AfterRead, StreamSpec};
use crate::scan::{self, FileEntry, FoundFile};

/// Moves or deletes, as `spec.after_read` says, the files of `committed` (the files the
/// committed checkpoint lists as read whole) that are still there unchanged.
pub(crate) fn apply(spec: &StreamSpec, committed: &[FileEntry]) -> Result<()> {
    if spec.after_read == AfterRead::Keep {
        return Ok(());
    }
    if let AfterRead::MoveTo(dir) = &spec.after_read {
        std::fs::create_dir_all(dir).map_err(|e| {
            ConnectorError::config(format!(
                "cannot create the directory `{}` of `streams.{}.after_read.move_to`: {e}",
                dir.display(),
                spec.name
            ))
        })?;
    }
    for entry in committed {
        let Some(found) = unchanged(entry) else {
            continue;
        };
        let outcome = match &spec.after_read {
            AfterRead::Keep => Ok(None),
            AfterRead::Delete => std::fs::remove_file(&found.path).map(|()| None),
            AfterRead::MoveTo(dir) => move_into(&found.path, dir).map(Some),
        };
        match outcome {
            Ok(None) => {
                tracing::info!(stream = %spec.name, file = %entry.name, "deleted after its run committed")
            }
            Ok(Some(to)) => tracing::info!(
                stream = %spec.name,
                file = %entry.name,
                to = %to.display(),
                "moved after its run committed"
            ),
            Err(e) => tracing::warn!(
                stream = %spec.name,
                file = %entry.name,
                "`after_read` could not move or delete the file ({e}); the next run tries again"
            ),
        }
    }
    Ok(())
}

/// The file of `entry`, when it is still there with the same size, time and content.
fn unchanged(entry: &FileEntry) -> Option<FoundFile> {
    let found = FoundFile {
        path: PathBuf::from(&entry.name),
        name: entry.name.clone(),
        size: entry.size,
        mtime_us: entry.mtime_us,
    };
    if scan::restat(&found)? != (entry.size, entry.mtime_us) {
        tracing::info!(file = %entry.name, "not moved or deleted: it changed since it was read");
        return None;
    }
    match scan::hash_file(&found) {
        Ok(hash) if hash == entry.hash => Some(found),
        _ => {
            tracing::info!(file = %entry.name, "not moved or deleted: its content changed since it was read");
            None
        }
    }
}

/// Renames `path` into `dir`, under its own name or, when that is taken, a numbered one.
fn move_into(path: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path has no file name"))?;
    let mut target = dir.join(name);
    let mut n = 1;
    while target.exists() {
        target = dir.join(format!("{}.{n}", name.to_string_lossy()));
        n += 1;
    }
    std::fs::rename(path, &target)?;
    Ok(target)
}
