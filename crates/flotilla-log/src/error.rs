use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// Reading or writing a log file failed. After a failed write or fsync the log refuses
    /// further appends: what reached the disk is unknown, so the node must stop.
    #[error("log IO error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log file {path} is damaged at byte {offset}: {detail}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    /// A record is damaged and intact records follow it: corruption (a torn write only ever
    /// damages the last record), which recovery must not cut away silently.
    #[error(
        "log file {} is damaged at byte {} (record {}: {}), but an intact record follows \
         (lsn {} at byte {}): this is corruption, not a torn write, and the node will not \
         silently drop the records after it. See \"A damaged replication log\" in \
         docs/operations.md: `flotilla log repair --data DIR` cuts the log at the damage and \
         says what it drops (the database keeps every commit; followers behind the cut \
         bootstrap from a snapshot)",
        .0.path.display(), .0.offset, .0.lsn, .0.detail,
        .0.intact_after.map_or(0, |a| a.1), .0.intact_after.map_or(0, |a| a.0)
    )]
    Damaged(Box<crate::segment::Damage>),
    /// The requested LSN has been removed by retention; the reader needs a snapshot.
    #[error("lsn {requested} is no longer in the log (oldest retained: {first})")]
    Trimmed { requested: u64, first: u64 },
    #[error("append of lsn {got} out of order: the log ends at {last}")]
    OutOfOrder { got: u64, last: u64 },
    #[error("the log failed earlier ({0}) and accepts no more appends; restart the node")]
    Poisoned(String),
}

impl LogError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> LogError {
        LogError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
