#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("IO error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database file is not what this node expects (another cluster, not Flotilla's, ...).
    #[error("{0}")]
    Mismatch(String),
    /// The WAL does not hold what the capture expected: a bug or outside interference.
    /// The node must stop: continuing could ship a wrong history.
    #[error("capture failed: {0}")]
    Capture(String),
    /// A record cannot be applied here (wrong page size, not contiguous).
    #[error("cannot apply: {0}")]
    Apply(String),
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A client's statement made a change Flotilla cannot replicate faithfully: refused, and
    /// the client's request rolls back.
    #[error("{0}")]
    Refused(String),
    /// A restore cannot go ahead (the backup, or the cluster's state): nothing was changed.
    #[error("{0}")]
    Restore(String),
}

impl StoreError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the error is the disk being full (replication pauses rather than failing).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            StoreError::Io { source, .. } => source.raw_os_error() == Some(28),
            _ => false,
        }
    }
}
