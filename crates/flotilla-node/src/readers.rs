//! A pool of read-only connections for queries and snapshots. A follower closes it while it
//! replaces its database with a snapshot, and reopens it after.

use flotilla_store::{open_reader, StatementRules, StoreError};
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

pub struct Reader {
    pub conn: Connection,
    pub rules: StatementRules,
}

pub struct ReaderPool {
    path: PathBuf,
    size: u32,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Reader>>,
    open: Mutex<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("the database is not available yet (the node is bootstrapping)")]
    Unavailable,
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
    pub fn new(path: PathBuf, size: usize, open: bool) -> Arc<ReaderPool> {
        Arc::new(ReaderPool {
            path,
            size: size as u32,
            permits: Arc::new(Semaphore::new(size)),
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
                let rules = StatementRules::install(&mut conn).map_err(StoreError::from)?;
                Reader { conn, rules }
            }
        };
        Ok(Lease {
            pool: self.clone(),
            reader: Some(reader),
            _permit: permit,
        })
    }

    /// Waits for every lease to end and closes all connections.
    pub async fn close(&self) {
        let all = self
            .permits
            .acquire_many(self.size)
            .await
            .expect("never closed");
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        drop(all);
    }

    pub fn reopen(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    pub fn is_open(&self) -> bool {
        *self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}
