//! One process per data directory. Two nodes on one directory both accepted writes and handed
//! out the same positions; a lock on `<data>/lock` (an OS file lock, released when the process
//! ends however it ends) makes the second refuse to start, naming the holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Held for as long as the process uses the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the data directory {dir} is in use by another process ({holder}); stop it first, or \
         give this one another --data directory"
    )]
    Held { dir: PathBuf, holder: String },
    #[error("cannot lock the data directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

impl DataDirLock {
    /// Takes the lock of `dir` for a process described by `holder` (who holds it is shown to
    /// anyone who is refused).
    pub fn acquire(dir: &Path, holder: &str) -> Result<DataDirLock, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let path = dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "unknown".into());
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "pid {}, {holder}", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_named() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path(), "node a").unwrap();
        let err = DataDirLock::acquire(dir.path(), "node b").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("in use by another process"), "{msg}");
        assert!(
            msg.contains("node a") && msg.contains(&std::process::id().to_string()),
            "{msg}"
        );
        drop(first);
        DataDirLock::acquire(dir.path(), "node b").unwrap();
    }
}
