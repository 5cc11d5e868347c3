//! A pool of read-only connections for queries, and permits for snapshot streams (which use
//! connections of their own). A follower closes it while it replaces its database with a
//! snapshot, and reopens it after. Snapshots have permits apart from queries, so that slow or
//! stalled downloads never take the connections queries need.

use flotilla_store::{open_reader, StatementGuard, StatementRules, StoreError};
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

pub struct Reader {
    pub conn: Connection,
    pub rules: StatementRules,
    /// Time limits of the query running on it.
    pub guard: StatementGuard,
}

/// Snapshot streams served at once by one node.
pub const MAX_SNAPSHOTS: u32 = 2;

pub struct ReaderPool {
    path: PathBuf,
    size: u32,
    /// The longest value a reader may produce (SQLite's length limit): a query cannot make a
    /// node allocate more for one value.
    max_value_bytes: usize,
    /// Every open connection's interrupt handle: a stopping node cancels what runs.
    interrupts: Mutex<Vec<flotilla_store::InterruptHandle>>,
    permits: Arc<Semaphore>,
    snapshots: Arc<Semaphore>,
    idle: Mutex<Vec<Reader>>,
    open: Mutex<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("the database is not available yet (the node is bootstrapping)")]
    Unavailable,
    #[error(
        "{MAX_SNAPSHOTS} snapshots are being streamed from this node already: retry when one \
         has finished"
    )]
    TooManySnapshots,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A reader checked out of the pool; returned on drop.
pub struct Lease {
    pool: Arc<ReaderPool>,
    reader: Option<Reader>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Lease {
    pub fn reader(&mut self) -> &mut Reader {
        self.reader.as_mut().expect("present until drop")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            if *self.pool.open.lock().unwrap_or_else(|p| p.into_inner()) {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(r);
            }
        }
    }
}

impl ReaderPool {
    pub fn new(path: PathBuf, size: usize, open: bool, max_value_bytes: usize) -> Arc<ReaderPool> {
        Arc::new(ReaderPool {
            path,
            size: size as u32,
            max_value_bytes,
            interrupts: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
            snapshots: Arc::new(Semaphore::new(MAX_SNAPSHOTS as usize)),
            idle: Mutex::new(Vec::new()),
            open: Mutex::new(open),
        })
    }

    pub async fn lease(self: &Arc<Self>) -> Result<Lease, ReaderError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        if !*self.open.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(ReaderError::Unavailable);
        }
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let reader = match idle {
            Some(r) => r,
            None => {
                let mut conn = open_reader(&self.path)?;
                conn.set_limit(
                    rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH,
                    self.max_value_bytes.min(1_000_000_000) as i32,
                )
                .map_err(StoreError::from)?;
                let rules = StatementRules::install(&mut conn).map_err(StoreError::from)?;
                let guard = StatementGuard::install_for_reads(&mut conn);
                self.interrupts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(conn.get_interrupt_handle());
                Reader { conn, rules, guard }
            }
        };
        Ok(Lease {
            pool: self.clone(),
            reader: Some(reader),
            _permit: permit,
        })
    }

    /// A permit to stream a snapshot (held until the stream ends); refused at once when
    /// [`MAX_SNAPSHOTS`] streams run.
    pub fn snapshot_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ReaderError> {
        let permit = self
            .snapshots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ReaderError::TooManySnapshots)?;
        if !*self.open.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(ReaderError::Unavailable);
        }
        Ok(permit)
    }

    /// Waits for every lease and snapshot stream to end and closes all connections.
    pub async fn close(&self) {
        let all = self
            .permits
            .acquire_many(self.size)
            .await
            .expect("never closed");
        let streams = self
            .snapshots
            .acquire_many(MAX_SNAPSHOTS)
            .await
            .expect("never closed");
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.interrupts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        drop(streams);
        drop(all);
    }

    /// Cancels every statement running on the pool's connections (the node is stopping).
    pub fn interrupt_all(&self) {
        for h in self
            .interrupts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            h.interrupt();
        }
    }

    pub fn reopen(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    pub fn is_open(&self) -> bool {
        *self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}
