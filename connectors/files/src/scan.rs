//! Which files of a stream to read: the glob's matches, minus files still being written,
//! minus files the checkpoint says were read already.
//!
//! The checkpoint records every file read, by name, size, modification time and an XXH3-128
//! hash of its content. A file is read again only when its content changed: a file rewritten
//! in place (new size or time, new hash) is read again; a file renamed or merely touched
//! (same hash under another name or time) is not. A file is still being written, and is left
//! for a later run, when its name matches a `temporary` pattern or it was modified within
//! the `settle` time.
//!
//! Invariant: a file is hashed by streaming it, never by loading it.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::PathBuf;
use std::time::SystemTime;

use lockstep_plugin_sdk::{tracing, ConnectorError, Result};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::config::StreamSpec;

/// A file the stream's glob matched.
#[derive(Debug, Clone)]
pub(crate) struct FoundFile {
    pub path: PathBuf,
    /// The path as the glob gave it, for checkpoints and messages.
    pub name: String,
    pub size: u64,
    /// Modification time, microseconds since the Unix epoch.
    pub mtime_us: i64,
}

/// One file in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileEntry {
    pub name: String,
    pub size: u64,
    pub mtime_us: i64,
    pub hash: String,
}

/// The file a read stopped inside, and how many of its records were delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Current {
    #[serde(flatten)]
    pub file: FileEntry,
    pub records: u64,
}

/// A read's checkpoint: the files read whole, and the one it is inside.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    #[serde(default)]
    pub files: Vec<FileEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Current>,
}

/// A file to read, and how many of its records an earlier read already delivered.
#[derive(Debug, Clone)]
pub(crate) struct ToRead {
    pub found: FoundFile,
    pub entry: FileEntry,
    pub skip_records: u64,
}

/// What a read will do.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    /// Files read before, still there (their entries brought up to date).
    pub done: Vec<FileEntry>,
    pub to_read: Vec<ToRead>,
}

fn mtime_us(meta: &Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The stream's files, oldest first (by modification time, then name), without the
/// temporary ones.
pub(crate) fn list_files(spec: &StreamSpec) -> Result<Vec<FoundFile>> {
    let paths = glob::glob(&spec.pattern).map_err(|e| {
        ConnectorError::config(format!(
            "`streams.{}.path` `{}` is not a valid glob: {e}",
            spec.name, spec.pattern
        ))
    })?;
    let mut files = Vec::new();
    for path in paths {
        let path = path.map_err(|e| {
            ConnectorError::transient(format!(
                "listing the files of stream `{}` (`{}`): {e}",
                spec.name, spec.pattern
            ))
        })?;
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if spec.temporary.iter().any(|p| p.matches(file_name)) {
            tracing::debug!(file = %path.display(), "skipped: a temporary file name");
            continue;
        }
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            // Removed between the listing and now.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(ConnectorError::transient(format!(
                    "reading the metadata of `{}`: {e}",
                    path.display()
                )))
            }
        };
        if !meta.is_file() {
            continue;
        }
        files.push(FoundFile {
            name: path.to_string_lossy().into_owned(),
            size: meta.len(),
            mtime_us: mtime_us(&meta),
            path,
        });
    }
    files.sort_by(|a, b| (a.mtime_us, &a.name).cmp(&(b.mtime_us, &b.name)));
    Ok(files)
}

/// The size and modification time of `found` now, if it is still there.
pub(crate) fn restat(found: &FoundFile) -> Option<(u64, i64)> {
    std::fs::metadata(&found.path)
        .ok()
        .map(|meta| (meta.len(), mtime_us(&meta)))
}

/// The XXH3-128 of a file's content, as 32 hex digits.
pub(crate) fn hash_file(found: &FoundFile) -> Result<String> {
    let mut file = File::open(&found.path)
        .map_err(|e| ConnectorError::transient(format!("opening file `{}`: {e}", found.name)))?;
    let mut hasher = Xxh3::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buffer).map_err(|e| {
            ConnectorError::transient(format!("reading file `{}`: {e}", found.name))
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(format!("{:032x}", hasher.digest128()))
}

/// Decides which files to read, given the checkpoint of the previous read.
pub(crate) fn plan(spec: &StreamSpec, checkpoint: &Checkpoint, now_us: i64) -> Result<Plan> {
    let settle_us = spec.settle.as_micros() as i64;
    let mut plan = Plan::default();
    for found in list_files(spec)? {
        let age_us = now_us - found.mtime_us;
        if age_us < settle_us {
            tracing::info!(
                file = %found.name,
                "not read in this run: modified less than the settle time ago (still being \
                 written?)"
            );
            continue;
        }
        let same_name = checkpoint.files.iter().find(|e| e.name == found.name);
        if let Some(entry) = same_name {
            if entry.size == found.size && entry.mtime_us == found.mtime_us {
                plan.done.push(entry.clone());
                continue;
            }
        }
        let hash = hash_file(&found)?;
        let entry = FileEntry {
            name: found.name.clone(),
            size: found.size,
            mtime_us: found.mtime_us,
            hash,
        };
        let read_before = checkpoint
            .files
            .iter()
            .any(|e| e.hash == entry.hash && e.size == entry.size);
        if read_before {
            tracing::debug!(file = %found.name, "already read (same content, renamed or touched)");
            plan.done.push(entry);
            continue;
        }
        let skip_records = match &checkpoint.current {
            Some(current) if current.file == entry => current.records,
            _ => 0,
        };
        plan.to_read.push(ToRead {
            found,
            entry,
            skip_records,
        });
    }
    Ok(plan)
}

/// Now, in microseconds since the Unix epoch.
pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
