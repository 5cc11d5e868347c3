//! Copies of a node's database files as a power loss would leave them: what had been flushed.
//! Only the database and its WAL (and the leader's row sidecar) are kept; SQLite rebuilds its
//! shared-memory index from the WAL when the files are opened again.

use std::path::{Path, PathBuf};

/// The files of one database (suffix of the database path, contents).
pub(super) type Files = Vec<(&'static str, Vec<u8>)>;

const SUFFIXES: [&str; 3] = ["", "-wal", "-rows"];

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The database files at `path` as they are now.
pub(super) fn read_files(path: &Path) -> anyhow::Result<Files> {
    let mut files = Vec::new();
    for suffix in SUFFIXES {
        match std::fs::read(with_suffix(path, suffix)) {
            Ok(bytes) => files.push((suffix, bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(files)
}

/// Writes `files` as the database at `path` (a new name: no abandoned connection of a crashed
/// process may share SQLite's locks or shared memory with them).
pub(super) fn write_files(path: &Path, files: &Files) -> anyhow::Result<()> {
    for (suffix, bytes) in files {
        std::fs::write(with_suffix(path, suffix), bytes)?;
    }
    Ok(())
}
