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
