use crate::client_statement::{run_client_statement, ClientError};
use crate::meta::{read_last_rows, upgrade_meta, CREATE_META};
use crate::open::configure;
use crate::pending_rows;
use crate::row_capture::RowCapture;
use crate::statement_guard::FailureKind;
use crate::txn_size::TxnSize;
use crate::Params;
use crate::{read_meta, DbSettings, Meta, StatementGuard, StatementRules, StoreError, WalTail};
use flotilla_types::{
    Chain, ContentDigest, DdlKind, Epoch, LogRecord, Lsn, NodeId, Position, RowPayload,
    SchemaChange,
};
use rusqlite::Connection;
use std::path::{Path, PathBuf};

/// Idempotency keys are remembered for this many transactions.
pub const IDEMPOTENCY_WINDOW: u64 = 100_000;
/// A passive checkpoint runs once the WAL holds this many bytes.
const CHECKPOINT_WAL_BYTES: u64 = 32 << 20;

/// One client transaction: statements run in order, all or nothing.
#[derive(Debug, Clone)]
pub struct TxnRequest {
    pub statements: Vec<(String, Params)>,
    pub idempotency_key: Option<String>,
    /// A digest of the request as the client sent it (feeds the checksum chain).
    pub digest: ContentDigest,
    /// The request is cancelled (and rolled back) if its statements run longer (0: no limit).
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StatementResult {
    pub rows_affected: u64,
    pub last_insert_rowid: i64,
    /// The rows the statement returned (`RETURNING`, or a query): `None` for a statement
    /// without result columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned: Option<crate::ReturnedRows>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RequestOutcome {
    /// Committed at the batch's position.
    Committed(Vec<StatementResult>),
    /// The idempotency key was seen before: the first answer, not applied again.
    Duplicate {
        position: Position,
        results: Vec<StatementResult>,
    },
    /// Rolled back; nothing of the request remains.
    Failed {
        statement: usize,
        message: String,
        kind: FailureKind,
    },
    /// Not committed through no fault of its own (the group had no room left for it, or
    /// another request's failure undid the group's transaction): submit it again.
    Retry,
}

/// How running one request of a group went.
enum RequestRun {
    Done(RequestOutcome),
    /// Fits the size limit only alone: rolled back, for the next group.
    NoRoom,
    /// It failed and SQLite rolled back the whole transaction with it.
    LostTransaction(RequestOutcome),
}

#[derive(Debug)]
pub struct CommitOutcome {
    /// One per request, in order. [`RequestOutcome::Retry`] ones go first into the next group.
    pub outcomes: Vec<RequestOutcome>,
    /// The commit's log record; `None` when nothing was committed (every request failed or was
    /// a duplicate). Its `rows` are left out: they are in `encoded_rows`.
    pub record: Option<LogRecord>,
    /// The record's row changes, encoded (as stored in the meta row and the log).
    pub encoded_rows: Vec<u8>,
}

/// The leader's single writer connection.
pub struct LeaderDb {
    pub(crate) conn: Connection,
    pub(crate) rules: StatementRules,
    pub(crate) capture: RowCapture,
    wal: WalTail,
    meta: Meta,
    path: PathBuf,
    /// The pipelines whose triggers are installed (trigger-based replication).
    pub(crate) pipelines: crate::leader_pipelines::InstalledPipelines,
    /// Time and size limits of client requests.
    pub(crate) guard: StatementGuard,
    pub(crate) size: TxnSize,
    /// A statement of the open transaction's kept requests may have changed the database (see
    /// `Ran::wrote`): a group in which none did is rolled back and takes no position.
    wrote: bool,
    /// The LSN the next internal commit (a token, a pipeline change) takes instead of the one
    /// after the database's position: a cluster's leader counts positions with Raft's own
    /// entries among them.
    pub(crate) internal_lsn: Option<Lsn>,
    /// Set on a multi-leader node (see [`LeaderDb::enable_multi_leader`]).
    pub(crate) multi_leader: Option<crate::multi_leader::MultiLeader>,
    /// The exchange stamp the commit being finished carries (set just before it).
    pub(crate) pending_exchange: Option<flotilla_types::ExchangeStamp>,
}

impl LeaderDb {
    /// Makes the next internal commit take `lsn` (beyond the database's position; see
    /// [`LeaderDb::commit_batch_at`]).
    pub fn next_internal_at(&mut self, lsn: Lsn) {
        self.internal_lsn = Some(lsn);
    }

    /// Opens (or creates, with a new cluster id from `new_cluster_id`) the leader's database.
    /// Returns it and whether it was created. Call [`LeaderDb::uncaptured`] next, before taking
    /// writes.
    ///
    /// Nothing here may open and close a second connection first: closing the last connection
    /// checkpoints and deletes the WAL, and with it a commit the log may still need.
    pub fn open(
        path: &Path,
        settings: &DbSettings,
        new_cluster_id: impl FnOnce() -> String,
    ) -> Result<(LeaderDb, bool), StoreError> {
        let mut conn = Connection::open(path)?;
        configure(&conn, settings, false)?;
        // Must precede any hook setup: setting it replaces a WAL hook (see the notes). Flotilla
        // checkpoints itself so that it never checkpoints a commit the log does not hold yet.
        conn.execute_batch("PRAGMA wal_autocheckpoint=0;")?;
        let created = if read_meta(&conn)?.is_none() {
            let user_tables: i64 = conn.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'",
                [],
                |r| r.get(0),
            )?;
            if user_tables > 0 {
                return Err(StoreError::Mismatch(format!(
                    "{} holds tables but was not created by Flotilla; start from an empty data directory",
                    path.display()
                )));
            }
            let tx = conn.transaction()?;
            tx.execute_batch(CREATE_META)?;
            tx.execute(
                "INSERT INTO _flotilla_meta VALUES (1, ?1, 1, 0, 0, 0, 0, NULL)",
                [new_cluster_id()],
            )?;
            tx.commit()?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            true
        } else {
            false
        };
        upgrade_meta(&conn)?;
        let meta = read_meta(&conn)?.expect("meta exists");
        let rules = StatementRules::install(&mut conn)?;
        let max_bytes = settings.max_transaction_bytes;
        let capture = RowCapture::install(&conn, max_bytes)?;
        // A single value larger than a whole transaction may be is refused as SQLite creates
        // it, before it takes memory.
        conn.set_limit(
            rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH,
            max_bytes.min(1_000_000_000) as i32,
        )?;
        let size = TxnSize::new(&conn, capture.clone())?;
        let probe = size.clone();
        let guard = StatementGuard::install(
            &mut conn,
            Some(Box::new(move || probe.written_so_far())),
            max_bytes,
        );
        conn.set_prepared_statement_cache_capacity(128);
        let pipelines =
            rules.internal(|| crate::leader_pipelines::InstalledPipelines::load(&conn))?;
        Ok((
            LeaderDb {
                conn,
                rules,
                capture,
                wal: WalTail::new(path),
                meta,
                path: path.to_path_buf(),
                pipelines,
                guard,
                size,
                wrote: false,
                internal_lsn: None,
                multi_leader: None,
                pending_exchange: None,
            },
            created,
        ))
    }

    /// The commits in the database beyond `log_last` (committed in SQLite but not yet in the
    /// log when the node stopped), re-created from the WAL for the caller to append to the log.
    /// Also positions the WAL tail after the last commit. `Err(Mismatch)` if the WAL no longer
    /// holds them (another program checkpointed it): the caller then restarts the log after the
    /// database's position.
    /// Starts capturing after the commits the WAL holds now: a database that was a replica
    /// until this writer opened it (a cluster member that now leads) holds commits that are
    /// already in the log.
    pub fn capture_from_here(&mut self) -> Result<(), StoreError> {
        self.wal.capture_all().map(|_| ())
    }

    pub fn uncaptured(
        &mut self,
        log_last: Lsn,
        origin: &NodeId,
    ) -> Result<Vec<(LogRecord, Vec<u8>)>, StoreError> {
        let in_wal = self.wal.capture_all()?;
        let meta = &self.meta;
        let missing = meta.position.lsn.0.saturating_sub(log_last.0) as usize;
        if missing == 0 {
            return Ok(Vec::new());
        }
        // With one writer, commit -> log append -> sync happen in order before the next
        // commit, so at most the newest commit can be missing from the log. The meta row it
        // wrote holds its chain and digest: the record is re-created exactly.
        if missing > 1 || in_wal.is_empty() {
            return Err(StoreError::Mismatch(format!(
                "the database is at lsn {} but the log ends at {log_last}, and the WAL does not \
                 hold the {missing} missing commits",
                meta.position.lsn
            )));
        }
        let rows = match self.rules.internal(|| read_last_rows(&self.conn))? {
            Some(rows) => rows,
            None => pending_rows::read(&self.path, meta.position.lsn).ok_or_else(|| {
                StoreError::Mismatch(format!(
                    "the database is at lsn {} but its row changes are neither in the database \
                     nor in {}",
                    meta.position.lsn,
                    pending_rows::side_file(&self.path).display()
                ))
            })?,
        };
        let exchange = self
            .rules
            .internal(|| crate::multi_leader::read_last_stamp(&self.conn, meta.position.lsn))?;
        Ok(vec![(
            LogRecord {
                epoch: meta.position.epoch,
                lsn: meta.position.lsn,
                chain: meta.chain,
                digest: meta.digest,
                commit_time_us: meta.commit_time_us,
                origin: origin.clone(),
                pages: Some(in_wal[in_wal.len() - 1].clone()),
                rows: None,
                exchange,
            },
            rows,
        )])
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Cancels whatever statement runs on the writer connection, from any thread (a stopping
    /// node).
    pub fn interrupt_handle(&self) -> crate::InterruptHandle {
        self.conn.get_interrupt_handle()
    }

    /// What the writer connection keeps between requests (see [`crate::connection_state`]).
    pub fn connection_state(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .rules
            .internal(|| crate::connection_state(&self.conn))?)
    }

    /// Brings a database that lost its newest commits up to the log, which holds them: applies
    /// the page images of `records` (the log's records after this database's position, in
    /// order). This happens after a power loss when SQLite runs with `synchronous=NORMAL`: its
    /// WAL is flushed only at checkpoints, but the log is flushed before every answer. Call
    /// before [`LeaderDb::uncaptured`].
    ///
    /// The pages are written on a connection of their own. Written through this one, they would
    /// change bytes under SQLite's b-tree layer, which keeps each cached page's parsed header
    /// (cell count, free space) across transactions of the same connection: the schema would be
    /// read with the old cell count and the next CREATE TABLE would write a corrupt schema
    /// (found by the simulator). A change made by another connection is seen through the WAL
    /// index, and this connection drops its cache.
    pub fn complete_from_log(&mut self, records: &[LogRecord]) -> Result<(), StoreError> {
        let mut conn = rusqlite::Connection::open(&self.path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let page_size: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        // sqlite_dbpage is writable only without defensive mode (off on a new connection);
        // the default synchronous=FULL makes the completion durable before the node serves.
        self.meta = crate::follower_db::apply_pages(&mut conn, &self.meta, page_size, records)?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of the installed pipelines.
    pub fn pipeline_names(&self) -> Vec<String> {
        self.pipelines.names()
    }

    /// The application's own objects in the database (not SQLite's, not Flotilla's).
    pub fn user_objects(&self) -> Result<Vec<String>, StoreError> {
        self.rules
            .internal(|| crate::restore::user_objects(&self.conn))
    }

    /// Empties the WAL into the database file (a restore replaces the file next). `Err` if a
    /// reader kept the checkpoint from finishing.
    pub fn checkpoint_fully(&mut self) -> Result<(), StoreError> {
        let busy: i64 = self.rules.internal(|| {
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        })?;
        if busy != 0 {
            return Err(StoreError::Restore(
                "a reader kept the database busy: the checkpoint before the restore did not \
                 finish; retry"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Runs a batch of client transactions as one SQLite transaction (group commit): each request
    /// in its own savepoint, so a failing request rolls back alone. One LSN for the batch.
    pub fn commit_batch(
        &mut self,
        requests: &[TxnRequest],
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<CommitOutcome, StoreError> {
        let lsn = self.meta.position.lsn.next();
        self.commit_batch_at(requests, epoch, lsn, origin, now_us)
    }

    /// [`LeaderDb::commit_batch`] at a given LSN, beyond the database's position: in a
    /// cluster, Raft's own entries take the LSNs between (the record's chain links to this
    /// database's last transaction across them).
    pub fn commit_batch_at(
        &mut self,
        requests: &[TxnRequest],
        epoch: Epoch,
        lsn: Lsn,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<CommitOutcome, StoreError> {
        if lsn <= self.meta.position.lsn {
            return Err(StoreError::Apply(format!(
                "a commit at lsn {lsn} would not follow this database's position {}",
                self.meta.position
            )));
        }
        let rules = self.rules.clone();
        rules.internal(|| self.conn.execute_batch("BEGIN IMMEDIATE"))?;
        self.capture.begin();
        self.size.begin_txn();
        // Delivered changelog rows are deleted by this writer, inside a commit that happens
        // anyway: a second connection deleting them would fight it for SQLite's write lock.
        if let Err(e) = rules.internal(|| self.pipelines.run_trims(&self.conn)) {
            self.capture.finish();
            let _ = rules.internal(|| self.conn.execute_batch("ROLLBACK"));
            return Err(e);
        }
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut digests = Vec::with_capacity(requests.len() * 8);
        self.wrote = false;
        for req in requests {
            let alone = digests.is_empty();
            match self.run_request(req, epoch, lsn, alone) {
                // Too large to join this group: it and the rest go into the next one.
                Ok(RequestRun::NoRoom) => break,
                Ok(RequestRun::Done(outcome)) => {
                    if matches!(outcome, RequestOutcome::Committed(_)) {
                        digests.extend_from_slice(&req.digest.0.to_le_bytes());
                    }
                    outcomes.push(outcome);
                }
                Ok(RequestRun::LostTransaction(outcome)) => {
                    // SQLite rolled back the whole transaction (an interrupted write, a value
                    // too big): the requests before this one are undone too and run again.
                    self.capture.finish();
                    self.capture.forget_shapes();
                    for o in &mut outcomes {
                        if matches!(o, RequestOutcome::Committed(_)) {
                            *o = RequestOutcome::Retry;
                        }
                    }
                    outcomes.push(outcome);
                    outcomes.resize(requests.len(), RequestOutcome::Retry);
                    return Ok(CommitOutcome {
                        outcomes,
                        record: None,
                        encoded_rows: Vec::new(),
                    });
                }
                Err(e) => {
                    self.capture.finish();
                    self.capture.forget_shapes();
                    let _ = rules.internal(|| self.conn.execute_batch("ROLLBACK"));
                    return Err(e);
                }
            }
        }
        outcomes.resize(requests.len(), RequestOutcome::Retry);
        // A group that changed nothing (reads, writes that matched no row) takes no position:
        // its requests are answered with the position their statements saw.
        let changed_nothing = !self.wrote && self.capture.bytes() == 0;
        if digests.is_empty() || changed_nothing {
            self.capture.finish();
            rules.internal(|| self.conn.execute_batch("ROLLBACK"))?;
            return Ok(CommitOutcome {
                outcomes,
                record: None,
                encoded_rows: Vec::new(),
            });
        }
        let encoded_rows = match self.stamp_and_finish(lsn, now_us) {
            Ok(rows) => rows,
            Err(e) => {
                self.capture.forget_shapes();
                let _ = rules.internal(|| self.conn.execute_batch("ROLLBACK"));
                return Err(e);
            }
        };
        let out =
            self.finish_commit(lsn, epoch, origin, now_us, &digests, encoded_rows, outcomes)?;
        self.pipelines.trims_committed();
        Ok(out)
    }

    /// Stamps the open transaction with its position, commits it and captures its pages.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish_commit(
        &mut self,
        lsn: Lsn,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
        digests: &[u8],
        encoded_rows: Vec<u8>,
        outcomes: Vec<RequestOutcome>,
    ) -> Result<CommitOutcome, StoreError> {
        let rules = self.rules.clone();
        let exchange = self.pending_exchange.take();
        let inline = encoded_rows.len() <= pending_rows::INLINE_MAX_BYTES;
        if !inline {
            if let Err(e) = pending_rows::write(&self.path, lsn, &encoded_rows) {
                let _ = rules.internal(|| self.conn.execute_batch("ROLLBACK"));
                // A full disk fails this commit (as SQLite's own SQLITE_FULL would); any other
                // write or fsync failure stops the node.
                return Err(if e.is_disk_full() {
                    e
                } else {
                    StoreError::Capture(e.to_string())
                });
            }
        }
        let digest = ContentDigest::of(digests);
        let chain = self.meta.chain.next(epoch, lsn, digest);
        let stamped = rules.internal(|| -> Result<(), StoreError> {
            if lsn.0.is_multiple_of(1024) && lsn.0 > IDEMPOTENCY_WINDOW {
                self.conn.execute(
                    "DELETE FROM _flotilla_idempotency WHERE lsn < ?1",
                    [(lsn.0 - IDEMPOTENCY_WINDOW) as i64],
                )?;
            }
            self.conn.prepare_cached(
                "UPDATE _flotilla_meta SET epoch = ?1, lsn = ?2, chain = ?3, digest = ?4, commit_time_us = ?5, rows = ?6 WHERE id = 1",
            )?.execute(rusqlite::params![
                epoch.0 as i64,
                lsn.0 as i64,
                chain.0 as i64,
                digest.0 as i64,
                now_us as i64,
                inline.then_some(&encoded_rows)
            ])?;
            self.conn.execute_batch("COMMIT")?;
            Ok(())
        });
        if let Err(e) = stamped {
            self.capture.forget_shapes();
            let _ = rules.internal(|| self.conn.execute_batch("ROLLBACK"));
            return Err(e);
        }
        let pages = self.wal.capture()?.ok_or_else(|| {
            StoreError::Capture(format!(
                "commit of lsn {lsn} left no commit frame in the WAL"
            ))
        })?;
        self.meta.position = Position { epoch, lsn };
        self.meta.chain = chain;
        self.meta.digest = digest;
        self.meta.commit_time_us = now_us;
        Ok(CommitOutcome {
            outcomes,
            record: Some(LogRecord {
                epoch,
                lsn,
                chain,
                digest,
                commit_time_us: now_us,
                origin: origin.clone(),
                pages: Some(pages),
                rows: None,
                exchange,
            }),
            encoded_rows,
        })
    }

    /// Runs one request in a savepoint. `alone`: no request before it in this group committed.
    fn run_request(
        &mut self,
        req: &TxnRequest,
        epoch: Epoch,
        lsn: Lsn,
        alone: bool,
    ) -> Result<RequestRun, StoreError> {
        let rules = self.rules.clone();
        if let Some(key) = &req.idempotency_key {
            let found: Option<(i64, i64, String)> = rules.internal(|| {
                use rusqlite::OptionalExtension;
                self.conn
                    .query_row(
                        "SELECT epoch, lsn, results FROM _flotilla_idempotency WHERE key = ?1",
                        [key],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
            })?;
            if let Some((e, l, results)) = found {
                let results = serde_json::from_str(&results).map_err(|e| {
                    StoreError::Mismatch(format!("stored idempotency answer is unreadable: {e}"))
                })?;
                return Ok(RequestRun::Done(RequestOutcome::Duplicate {
                    position: Position::new(e as u64, l as u64),
                    results,
                }));
            }
        }
        rules.internal(|| self.conn.execute_batch("SAVEPOINT request"))?;
        let wrote_before = self.wrote;
        let mark = self.capture.mark();
        self.size.begin_request();
        self.guard.begin_request(req.timeout_ms);
        let ran = self.run_statements(req).and_then(|results| {
            self.flush_virtual_tables()
                .map_err(|e| (req.statements.len() - 1, e))?;
            Ok(results)
        });
        self.guard.end_request();
        // A data centre's transaction is merged elsewhere with its row changes twice (as
        // merged there, and as made here, for the data centres it passes them on to): it may
        // be half as large, so that every merge of it fits the same limit.
        let data_centre = self.multi_leader.is_some();
        let limit = if data_centre {
            self.guard.max_bytes() / 2
        } else {
            self.guard.max_bytes()
        };
        let too_large = || {
            if data_centre {
                format!(
                    "the transaction is too large for a data centre: its replication log record \
                     would exceed {} MiB, half of limits.max-transaction-mib ({} MiB), which its \
                     merge in the other data centres needs; split it into smaller transactions",
                    limit >> 20,
                    self.guard.max_bytes() >> 20
                )
            } else {
                self.guard.too_large_message()
            }
        };
        let failure = match ran {
            Err((statement, (message, kind))) => Err(RequestRun::Done(RequestOutcome::Failed {
                statement,
                message,
                kind,
            })),
            Ok(_) if self.size.measure(limit) > limit => Err(if alone {
                RequestRun::Done(RequestOutcome::Failed {
                    statement: req.statements.len() - 1,
                    message: too_large(),
                    kind: FailureKind::TooLarge,
                })
            } else {
                RequestRun::NoRoom
            }),
            Ok(results) => Ok(results),
        };
        let results = match failure {
            Ok(results) => results,
            Err(RequestRun::Done(outcome)) if self.conn.is_autocommit() => {
                self.size.drop_request();
                return Ok(RequestRun::LostTransaction(outcome));
            }
            Err(outcome) => {
                rules.internal(|| {
                    self.conn
                        .execute_batch("ROLLBACK TO request; RELEASE request")
                })?;
                self.capture.rollback_to(mark);
                // A rolled-back schema change leaves cached shapes of a schema that is gone.
                self.capture.forget_shapes();
                self.size.drop_request();
                self.wrote = wrote_before;
                return Ok(outcome);
            }
        };
        self.size.keep_request();
        rules.internal(|| -> Result<(), StoreError> {
            if let Some(key) = &req.idempotency_key {
                // The key is kept: even a request that changed nothing is not run again.
                self.wrote = true;
                let json = serde_json::to_string(&results).expect("plain data serialises");
                self.conn.execute(
                    "INSERT INTO _flotilla_idempotency (key, lsn, epoch, results) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![key, lsn.0 as i64, epoch.0 as i64, json],
                )?;
            }
            self.conn.execute_batch("RELEASE request")?;
            Ok(())
        })?;
        Ok(RequestRun::Done(RequestOutcome::Committed(results)))
    }

    /// Makes virtual tables write what they buffer (fts5 keeps new terms in memory until a
    /// savepoint or the commit) into their shadow tables now, while the capture sees it: at
    /// the commit it would be too late for the record. Opening a savepoint is what asks them.
    fn flush_virtual_tables(&mut self) -> Result<(), ClientError> {
        let rules = self.rules.clone();
        rules
            .internal(|| -> Result<(), StoreError> {
                self.conn
                    .execute_batch("SAVEPOINT flotilla_flush; RELEASE flotilla_flush")?;
                self.capture.statement_done(&self.conn)
            })
            .map_err(|e| capture_failure("the virtual tables' changes", e))
    }

    /// The request's statements in order; stops at the first that fails (its index and why).
    fn run_statements(
        &mut self,
        req: &TxnRequest,
    ) -> Result<Vec<StatementResult>, (usize, ClientError)> {
        let mut results = Vec::with_capacity(req.statements.len());
        for (i, (sql, params)) in req.statements.iter().enumerate() {
            results.push(self.run_statement(sql, params).map_err(|e| (i, e))?);
        }
        Ok(results)
    }

    /// Runs one client statement and captures what it changed. Errors are the client's.
    fn run_statement(
        &mut self,
        sql: &str,
        params: &Params,
    ) -> Result<StatementResult, ClientError> {
        // SQLite refuses to drop or rename a column a trigger uses: a pipeline's triggers are
        // set aside for an ALTER TABLE and written again for the new schema after it.
        let set_aside = self
            .pipelines
            .before_statement(&self.conn, &self.rules, sql)?;
        // On failure the request's savepoint puts set-aside triggers back.
        let ran = run_client_statement(&self.conn, &self.rules, &self.guard, sql, params)?;
        self.wrote |= ran.wrote;
        if self.capture.overflowed() && ran.schema_change.is_none() {
            return Err((self.guard.too_large_message(), FailureKind::TooLarge));
        }
        if let (Some((kind, table)), Some(_)) = (&ran.schema_change, &self.multi_leader) {
            let rules = self.rules.clone();
            let problem = rules
                .internal(|| crate::multi_leader::ddl_problem(&self.conn, *kind, table, sql))
                .map_err(|e| (e.to_string(), FailureKind::Sql))?;
            if let Some(problem) = problem {
                return Err((problem, FailureKind::Refused));
            }
        }
        if let Some((DdlKind::CreateTable | DdlKind::AlterTable, table)) = &ran.schema_change {
            let rules = self.rules.clone();
            let problem = rules
                .internal(|| crate::row_capture::rowid_name_problem(&self.conn, table))
                .map_err(|e| (e.to_string(), FailureKind::Sql))?;
            if let Some(problem) = problem {
                return Err((problem, FailureKind::Refused));
            }
        }
        match ran.schema_change {
            // Rows an ALTER TABLE rewrote are dropped here: followers replay the statement.
            Some((kind, table)) if ran.created_from_select => {
                self.pipelines
                    .after_schema_change(&self.conn, &self.rules, &table, set_aside)?;
                let rules = self.rules.clone();
                rules
                    .internal(|| -> Result<(), StoreError> {
                        let definition: String = self.conn.query_row(
                            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                            [&table],
                            |r| r.get(0),
                        )?;
                        let change = SchemaChange {
                            kind,
                            table,
                            sql: definition,
                        };
                        self.capture.table_created_with_rows(change, &self.conn)
                    })
                    .map_err(|e| capture_failure("the rows of the new table", e))?;
                if self.capture.overflowed() {
                    return Err((self.guard.too_large_message(), FailureKind::TooLarge));
                }
            }
            Some((DdlKind::SetPragma, name)) => {
                // Shipped as the value it left, in a canonical statement.
                let name = name.to_ascii_lowercase();
                let rules = self.rules.clone();
                let value: i64 = rules
                    .internal(|| {
                        self.conn
                            .query_row(&format!("PRAGMA main.{name}"), [], |r| r.get(0))
                    })
                    .map_err(|e| (sql_error_message(&e), FailureKind::Sql))?;
                self.capture.schema_changed(SchemaChange {
                    kind: DdlKind::SetPragma,
                    sql: format!("PRAGMA main.{name} = {value}"),
                    table: name,
                })
            }
            Some((kind, table)) => {
                self.pipelines
                    .after_schema_change(&self.conn, &self.rules, &table, set_aside)?;
                self.capture.schema_changed(SchemaChange {
                    kind,
                    table,
                    sql: sql.to_string(),
                })
            }
            None => {
                if set_aside {
                    self.pipelines
                        .after_schema_change(&self.conn, &self.rules, "", true)?;
                }
                let rules = self.rules.clone();
                rules
                    .internal(|| {
                        self.pipelines.after_statement(&self.conn)?;
                        self.capture.statement_done(&self.conn)
                    })
                    .map_err(|e| capture_failure("the row changes", e))?;
            }
        }
        Ok(ran.result)
    }

    /// Checkpoints (passively: never waits for readers) once the WAL is large. Only called
    /// between commits, after the log holds everything committed, so the WAL never loses a
    /// commit the log lacks.
    pub fn maybe_checkpoint(&mut self) -> Result<bool, StoreError> {
        if self.wal.offset() < CHECKPOINT_WAL_BYTES {
            return Ok(false);
        }
        self.rules.internal(|| {
            self.conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        })?;
        Ok(true)
    }

    /// The row changes of the last commit as stored with it (for tests and tools).
    pub fn last_rows(&self) -> Result<Option<RowPayload>, StoreError> {
        self.rules
            .internal(|| read_last_rows(&self.conn))?
            .or_else(|| pending_rows::read(&self.path, self.meta.position.lsn))
            .map(|b| {
                flotilla_wire::decode_rows(&b).map_err(|e| StoreError::Mismatch(e.to_string()))
            })
            .transpose()
    }

    /// The chain recorded in the database (for the log's first record after a restart).
    pub fn chain(&self) -> Chain {
        self.meta.chain
    }
}

/// SQLite's own message, without rusqlite's wrapping.
pub fn sql_error_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        // Without the statement and offset rusqlite adds: the statement may be Flotilla's own
        // wrapping of what the user wrote.
        rusqlite::Error::SqlInputError { msg, .. } => msg.clone(),
        rusqlite::Error::MultipleStatement => {
            "one statement per entry: split multiple statements into separate entries of \"statements\""
                .into()
        }
        other => other.to_string(),
    }
}

/// A capture error as the client sees it: a refusal as such (the request rolls back), anything
/// else as a failure to capture.
fn capture_failure(what: &str, e: StoreError) -> ClientError {
    match e {
        StoreError::Refused(message) => (message, FailureKind::Refused),
        e => (format!("cannot capture {what}: {e}"), FailureKind::Sql),
    }
}

/// Why a user's SQL expression (a row predicate) fails inside a statement Flotilla wrapped
/// around it: SQLite's message, and where in the user's text (never Flotilla's statement or an
/// offset into it); `columns` are named when a column is unknown.
pub fn expression_problem(e: &rusqlite::Error, expression: &str, columns: &[String]) -> String {
    let mut out = match e {
        rusqlite::Error::MultipleStatement => return "it is not one SQL expression".to_string(),
        rusqlite::Error::SqlInputError {
            msg, sql, offset, ..
        } => {
            let wrapped = format!("({expression})");
            match sql.find(&wrapped) {
                Some(start) => {
                    let at = (*offset as usize).saturating_sub(start + 1);
                    if at >= expression.len() {
                        format!("{msg} (the expression ends too early)")
                    } else {
                        format!("{msg} (at character {} of the expression)", at + 1)
                    }
                }
                None => msg.clone(),
            }
        }
        e => sql_error_message(e),
    };
    if out.starts_with("no such column") && !columns.is_empty() {
        out.push_str(&format!("; the columns are {}", columns.join(", ")));
    }
    out
}
