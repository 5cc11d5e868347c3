//! Limits on client statements while they run: how long a request may take, and (on a
//! leader) how large its transaction's log record may grow. SQLite calls a progress handler
//! every few thousand virtual-machine steps; when a limit is passed it answers "stop" and the
//! statement fails with `SQLITE_INTERRUPT`, which [`StatementGuard::explain`] turns into the
//! client's error. A runaway statement is thereby cancelled instead of holding the single
//! writer (or a reader) forever, and a transaction too large for the log is refused before it
//! commits instead of taking the leader down.
//!
//! The checks only run while a client request is active ([`StatementGuard::begin_request`]):
//! Flotilla's own statements (commit, stamping, trims) are never interrupted by them. An
//! interrupt from another thread ([`StatementGuard::interrupt_handle`]) stops whatever runs, for
//! a shutdown that completes in bounded time.

use rusqlite::Connection;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Virtual-machine steps between two checks (a few microseconds of work).
const CHECK_EVERY_STEPS: i32 = 4_000;

/// Why a request failed in a way the client should hear about by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// SQLite refused the statement (syntax, constraint, missing table...).
    Sql,
    /// Flotilla's statement rules refused it.
    Refused,
    /// The transaction would exceed the log record limit.
    TooLarge,
    /// The request ran past its time limit and was cancelled.
    TimedOut,
    /// The node is stopping and interrupted it; nothing of it remains.
    Interrupted,
}

/// How big a transaction's log record is so far, for the size limit. Implemented by the
/// leader's writer (row changes captured plus page images written).
pub(crate) type SizeProbe = Box<dyn Fn() -> u64 + Send>;

const NOTHING: u8 = 0;
const TIMED_OUT: u8 = 1;
const TOO_LARGE: u8 = 2;

#[derive(Default)]
struct Active {
    /// `Some` while a client request runs.
    deadline: Option<Instant>,
    timeout_ms: u64,
    running: bool,
}

/// The limits of one connection; cheap to clone.
#[derive(Clone)]
pub struct StatementGuard {
    active: Arc<Mutex<Active>>,
    /// Why the handler last stopped a statement.
    stopped: Arc<AtomicU8>,
    max_bytes: u64,
}

impl StatementGuard {
    /// Installs the progress handler. `size`, with `max_bytes`, enforces the record size limit
    /// (`None` on readers).
    pub(crate) fn install(
        conn: &mut Connection,
        size: Option<SizeProbe>,
        max_bytes: u64,
    ) -> StatementGuard {
        let guard = StatementGuard {
            active: Arc::new(Mutex::new(Active::default())),
            stopped: Arc::new(AtomicU8::new(NOTHING)),
            max_bytes,
        };
        let (active, stopped) = (guard.active.clone(), guard.stopped.clone());
        conn.progress_handler(
            CHECK_EVERY_STEPS,
            Some(move || {
                let a = active.lock().unwrap_or_else(|p| p.into_inner());
                if !a.running {
                    return false;
                }
                if a.deadline.is_some_and(|d| Instant::now() >= d) {
                    stopped.store(TIMED_OUT, Ordering::Relaxed);
                    return true;
                }
                if size.as_ref().is_some_and(|s| s() > max_bytes) {
                    stopped.store(TOO_LARGE, Ordering::Relaxed);
                    return true;
                }
                false
            }),
        )
        .expect("a progress handler can always be set");
        guard
    }

    /// A reader's guard: time limits only.
    pub fn install_for_reads(conn: &mut Connection) -> StatementGuard {
        Self::install(conn, None, u64::MAX)
    }

    /// Client statements run from now until [`StatementGuard::end_request`], for at most
    /// `timeout_ms` (0: no limit).
    pub fn begin_request(&self, timeout_ms: u64) {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        a.running = true;
        a.timeout_ms = timeout_ms;
        a.deadline =
            (timeout_ms > 0).then(|| Instant::now() + std::time::Duration::from_millis(timeout_ms));
        self.stopped.store(NOTHING, Ordering::Relaxed);
    }

    pub fn end_request(&self) {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        a.running = false;
        a.deadline = None;
    }

    /// Whether the handler last stopped a statement for the size limit.
    pub fn stopped_by_size(&self) -> bool {
        self.stopped.load(Ordering::Relaxed) == TOO_LARGE
    }

    /// The largest transaction record allowed, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The client's error for a statement that failed with `e`, when a limit caused it.
    pub fn explain(&self, e: &rusqlite::Error) -> Option<(String, FailureKind)> {
        let code = match e {
            rusqlite::Error::SqliteFailure(f, _) => f.code,
            _ => return None,
        };
        match code {
            rusqlite::ErrorCode::OperationInterrupted => {
                match self.stopped.load(Ordering::Relaxed) {
                    TIMED_OUT => {
                        let ms = self
                            .active
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .timeout_ms;
                        Some((
                            format!(
                                "the request ran longer than its time limit of {ms} ms and was \
                                 cancelled (give a larger \"timeout_ms\", up to the node's \
                                 limit, or make the statement cheaper)"
                            ),
                            FailureKind::TimedOut,
                        ))
                    }
                    TOO_LARGE => Some((self.too_large_message(), FailureKind::TooLarge)),
                    _ => Some((
                        "the statement was interrupted: the node is stopping".into(),
                        FailureKind::Interrupted,
                    )),
                }
            }
            rusqlite::ErrorCode::TooBig => Some((self.too_large_message(), FailureKind::TooLarge)),
            _ => None,
        }
    }

    pub fn too_large_message(&self) -> String {
        format!(
            "the transaction is too large: its replication log record would exceed the limit of \
             {} MiB (limits.max-transaction-mib); split it into smaller transactions",
            self.max_bytes >> 20
        )
    }
}

/// Stops whatever statement runs on a connection, from any thread.
pub type InterruptHandle = rusqlite::InterruptHandle;

#[cfg(test)]
mod tests {
    use super::*;

    const RUNAWAY: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                           SELECT count(*) FROM c";

    #[test]
    fn a_runaway_statement_is_cancelled_at_its_deadline() {
        let mut conn = Connection::open_in_memory().unwrap();
        let guard = StatementGuard::install_for_reads(&mut conn);
        guard.begin_request(50);
        let started = Instant::now();
        let err = conn
            .query_row(RUNAWAY, [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        let (msg, kind) = guard.explain(&err).expect("a limit");
        assert_eq!(kind, FailureKind::TimedOut);
        assert!(msg.contains("50 ms"), "{msg}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        guard.end_request();
        // Outside a request nothing is checked: Flotilla's own statements run unlimited.
        let n: i64 = conn
            .query_row(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000) \
                 SELECT count(*) FROM c",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 200_000);
    }

    #[test]
    fn the_size_probe_stops_a_statement_that_grows_too_large() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = counter.clone();
        let guard = StatementGuard::install(
            &mut conn,
            Some(Box::new(move || c.fetch_add(1, Ordering::Relaxed))),
            10,
        );
        guard.begin_request(0);
        let err = conn
            .execute(
                "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                 SELECT x FROM c",
                [],
            )
            .unwrap_err();
        let (msg, kind) = guard.explain(&err).expect("a limit");
        assert_eq!(kind, FailureKind::TooLarge);
        assert!(msg.contains("max-transaction-mib"), "{msg}");
    }

    #[test]
    fn an_interrupt_from_another_thread_stops_a_statement() {
        let mut conn = Connection::open_in_memory().unwrap();
        let guard = StatementGuard::install_for_reads(&mut conn);
        let handle = conn.get_interrupt_handle();
        guard.begin_request(0);
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            handle.interrupt();
        });
        let err = conn
            .query_row(RUNAWAY, [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        t.join().unwrap();
        let (msg, _) = guard.explain(&err).expect("explained");
        assert!(msg.contains("stopping"), "{msg}");
    }
}
