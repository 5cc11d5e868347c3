//! The leader's side of trigger-based replication: adding, removing and pausing pipelines (each
//! an internal commit with its own LSN, so physical followers carry the triggers and the
//! definitions byte for byte), keeping their triggers in step with schema changes, and
//! trimming delivered changelog rows from inside the writer's own commits.

use crate::pipeline_triggers::{
    plan, quote, trigger_names, trigger_sql, PipelineError, CHANGELOG_TABLE, MARKS_TABLE,
    PIPELINES_TABLE, PIPELINE_TABLES_SQL,
};
use crate::{CommitOutcome, LeaderDb, StatementRules, StoreError};
use flotilla_types::{Epoch, Lsn, NodeId, PipelineSpec, PIPELINE_FORMAT_VERSION};
use rusqlite::Connection;
use std::collections::BTreeMap;

/// A pipeline as stored in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPipeline {
    pub id: i64,
    pub spec: PipelineSpec,
    pub paused: bool,
    /// Changelog rows up to this seq were delivered and deleted.
    pub trimmed_to: i64,
}

/// Reads the stored pipelines (none when the database never had one).
pub fn read_pipelines(conn: &Connection) -> Result<Vec<StoredPipeline>, StoreError> {
    let exists: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [PIPELINES_TABLE],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT id, spec, format_version, paused, trimmed_to FROM {PIPELINES_TABLE} ORDER BY id"
    ))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(id, spec, version, paused, trimmed_to)| {
            if version > PIPELINE_FORMAT_VERSION {
                return Err(StoreError::Mismatch(format!(
                    "pipeline {id} is stored in format {version}; this Flotilla reads up to \
                     {PIPELINE_FORMAT_VERSION}: upgrade Flotilla"
                )));
            }
            let spec: PipelineSpec = serde_json::from_str(&spec).map_err(|e| {
                StoreError::Mismatch(format!("pipeline {id} is stored unreadably: {e}"))
            })?;
            Ok(StoredPipeline {
                id,
                spec,
                paused,
                trimmed_to,
            })
        })
        .collect()
}

#[derive(Debug, Default)]
pub(crate) struct InstalledPipelines {
    list: Vec<StoredPipeline>,
    /// pipeline id → changelog seq delivered (and confirmed by the target), to delete.
    pending_trims: BTreeMap<i64, i64>,
    /// Pipelines whose trim the open transaction completes.
    trims_finished: Vec<i64>,
}

/// Changelog rows one commit deletes per pipeline, at most.
pub(crate) const TRIM_ROWS_PER_COMMIT: usize = 5_000;

impl InstalledPipelines {
    pub(crate) fn load(conn: &Connection) -> Result<InstalledPipelines, StoreError> {
        let list = read_pipelines(conn)?;
        // Rows of removed pipelines still in the changelog are deleted by the next commits.
        let orphans = if list.is_empty() && !changelog_exists(conn)? {
            Vec::new()
        } else {
            orphan_pipelines(conn)?
        };
        Ok(InstalledPipelines {
            list,
            pending_trims: orphans.into_iter().collect(),
            trims_finished: Vec::new(),
        })
    }

    /// Deletes delivered changelog rows, in the writer's open transaction: at most
    /// [`TRIM_ROWS_PER_COMMIT`] per pipeline, so that a client's commit never carries the
    /// deletion of a whole delivered backlog (the rest goes with the next commits). The newest
    /// row of the changelog is never deleted, so that its rowids (the `seq`) never restart.
    pub(crate) fn run_trims(&mut self, conn: &Connection) -> Result<(), StoreError> {
        self.trims_finished.clear();
        for (id, upto) in &self.pending_trims {
            let deleted = conn
                .prepare_cached(&format!(
                    "DELETE FROM {CHANGELOG_TABLE} WHERE seq IN (SELECT seq FROM {CHANGELOG_TABLE} \
                     WHERE seq <= ?2 AND pipeline = ?1 \
                     AND seq < (SELECT max(seq) FROM {CHANGELOG_TABLE}) ORDER BY seq LIMIT ?3)"
                ))?
                .execute(rusqlite::params![id, upto, TRIM_ROWS_PER_COMMIT as i64])?;
            let installed = self.list.iter().any(|p| p.id == *id);
            if installed {
                conn.prepare_cached(&format!(
                    "UPDATE {PIPELINES_TABLE} SET trimmed_to = max(trimmed_to, ?2) WHERE id = ?1"
                ))?
                .execute([id, upto])?;
            }
            // A removed pipeline's rows are all at or below `upto`; the last of them goes once
            // it is no longer the changelog's newest row.
            let done = deleted < TRIM_ROWS_PER_COMMIT && (installed || newest_seq(conn)? > *upto);
            if done {
                self.trims_finished.push(*id);
            }
        }
        Ok(())
    }

    /// The transaction that ran the trims committed.
    pub(crate) fn names(&self) -> Vec<String> {
        self.list.iter().map(|p| p.spec.name.clone()).collect()
    }

    pub(crate) fn trims_committed(&mut self) {
        for id in std::mem::take(&mut self.trims_finished) {
            if let Some(upto) = self.pending_trims.remove(&id) {
                if let Some(p) = self.list.iter_mut().find(|p| p.id == id) {
                    p.trimmed_to = p.trimmed_to.max(upto);
                }
            }
        }
    }

    /// After each client statement: clears the marks of inserts that were ignored or became
    /// updates (see `trigger_sql`).
    pub(crate) fn after_statement(&self, conn: &Connection) -> Result<(), StoreError> {
        if self.list.iter().any(|p| p.spec.predicate.is_some()) {
            // A WHERE clause avoids the truncate optimisation, which writes the empty root page.
            conn.prepare_cached(&format!("DELETE FROM {MARKS_TABLE} WHERE pipeline > -1"))?
                .execute([])?;
        }
        Ok(())
    }

    /// Before a client statement: an ALTER or DROP sets every pipeline's triggers aside (SQLite
    /// refuses to drop or rename a column a trigger names, and a DROP TABLE drops the table's
    /// triggers, which clients may not do). Returns whether it did.
    pub(crate) fn before_statement(
        &self,
        conn: &Connection,
        rules: &StatementRules,
        sql: &str,
    ) -> Result<bool, crate::client_statement::ClientError> {
        if self.list.is_empty() {
            return Ok(false);
        }
        let (first, rest) = next_keyword(sql);
        let (second, _) = next_keyword(rest);
        let sets_aside = first.eq_ignore_ascii_case("alter")
            || (first.eq_ignore_ascii_case("drop") && !second.eq_ignore_ascii_case("trigger"));
        if !sets_aside {
            return Ok(false);
        }
        rules
            .internal(|| -> rusqlite::Result<()> {
                for p in &self.list {
                    drop_triggers(conn, p.id)?;
                }
                Ok(())
            })
            .map_err(|e| {
                (
                    format!("cannot set pipeline triggers aside: {e}"),
                    crate::FailureKind::Sql,
                )
            })?;
        Ok(true)
    }

    /// After a client statement changed the schema of `table`: the triggers of the pipelines
    /// reading it (or all, if they were set aside) are written again for the new schema. A
    /// pipeline that cannot follow the change (a delivered column is gone) fails the statement,
    /// naming the pipeline. A dropped source table leaves its pipeline without triggers.
    pub(crate) fn after_schema_change(
        &self,
        conn: &Connection,
        rules: &StatementRules,
        table: &str,
        set_aside: bool,
    ) -> Result<(), crate::client_statement::ClientError> {
        for p in &self.list {
            if !set_aside && !p.spec.source.eq_ignore_ascii_case(table) {
                continue;
            }
            rules.internal(|| install_triggers(conn, p)).map_err(|e| {
                (
                    format!(
                        "pipeline {} cannot follow this schema change: {e}; remove it first \
                             (flotilla pipeline remove {})",
                        p.spec.name, p.spec.name
                    ),
                    crate::FailureKind::Sql,
                )
            })?;
        }
        Ok(())
    }
}

/// The next keyword of a statement, after whitespace and comments, and what follows it.
pub(crate) fn next_keyword(sql: &str) -> (&str, &str) {
    let mut s = sql;
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |x| x.1);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |x| x.1);
        } else {
            break;
        }
    }
    let end = s
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(s.len());
    s.split_at(end)
}

fn drop_triggers(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    for t in trigger_names(id) {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote(&t)))?;
    }
    Ok(())
}

/// (Re)writes a pipeline's triggers for the source table's current schema; none if the table
/// is gone.
fn install_triggers(conn: &Connection, p: &StoredPipeline) -> Result<(), PipelineError> {
    drop_triggers(conn, p.id)?;
    let exists: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        [&p.spec.source],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(());
    }
    let plan = plan(conn, &p.spec)?;
    for sql in trigger_sql(p.id, &plan) {
        conn.execute_batch(&sql)?;
    }
    Ok(())
}

impl LeaderDb {
    /// The pipelines installed on this database.
    pub fn pipelines(&self) -> &[StoredPipeline] {
        &self.pipelines.list
    }

    /// Queues the deletion of pipeline `id`'s changelog rows up to `seq` (the target confirmed
    /// them): done inside the next commit.
    pub fn queue_changelog_trim(&mut self, id: i64, seq: i64) {
        let e = self.pipelines.pending_trims.entry(id).or_insert(seq);
        *e = (*e).max(seq);
    }

    /// Adds a pipeline: stores it, installs its triggers and puts the rows already in range in
    /// the changelog (the target's initial copy), all in one commit. Returns its id.
    pub fn add_pipeline(
        &mut self,
        spec: &PipelineSpec,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<(i64, CommitOutcome), PipelineError> {
        spec.check().map_err(|e| PipelineError::Invalid(e.0))?;
        if self.pipelines.list.iter().any(|p| p.spec.name == spec.name) {
            return Err(PipelineError::Invalid(format!(
                "a pipeline named {} exists already",
                spec.name
            )));
        }
        let what = format!("add pipeline {}", spec.name);
        let (id, out) =
            self.internal_commit::<_, PipelineError>(&what, epoch, origin, now_us, |db, lsn| {
                db.conn.execute_batch(PIPELINE_TABLES_SQL)?;
                let json = serde_json::to_string(spec).expect("plain data serialises");
                // An id no changelog row carries: rows of a removed pipeline may still wait to be
                // deleted, and must never be taken for the new pipeline's.
                let id: i64 = db.conn.query_row(
                    &format!(
                        "SELECT 1 + max(coalesce((SELECT max(id) FROM {PIPELINES_TABLE}), 0), \
                     coalesce((SELECT max(pipeline) FROM {CHANGELOG_TABLE}), 0))"
                    ),
                    [],
                    |r| r.get(0),
                )?;
                db.conn.execute(
                    &format!(
                        "INSERT INTO {PIPELINES_TABLE} (id, name, spec, format_version) \
                     VALUES (?1, ?2, ?3, ?4)"
                    ),
                    rusqlite::params![id, spec.name, json, PIPELINE_FORMAT_VERSION],
                )?;
                let plan = plan(&db.conn, spec)?;
                for sql in trigger_sql(id, &plan) {
                    db.conn.execute_batch(&sql)?;
                }
                crate::pipeline_triggers::initial_copy(&db.conn, id, lsn, &plan)?;
                Ok(id)
            })?;
        let rules = self.rules.clone();
        self.pipelines = rules.internal(|| InstalledPipelines::load(&self.conn))?;
        Ok((id, out))
    }

    /// Removes a pipeline: its triggers, its changelog rows and its definition, in one commit.
    pub fn remove_pipeline(
        &mut self,
        name: &str,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<CommitOutcome, PipelineError> {
        let id = self.pipeline_id(name)?;
        let what = format!("remove pipeline {name}");
        let (newest, out) =
            self.internal_commit::<_, PipelineError>(&what, epoch, origin, now_us, |db, _| {
                drop_triggers(&db.conn, id)?;
                db.conn.execute(
                    &format!("DELETE FROM {MARKS_TABLE} WHERE pipeline = ?1"),
                    [id],
                )?;
                let newest = newest_seq(&db.conn)?;
                // The pipeline's captured rows go: the first ones now, the rest with the next
                // commits (a large backlog must not make one huge transaction). Its id is never
                // given to another pipeline meanwhile. The newest changelog row stays (its rowid
                // keeps seq from restarting), emptied of what it captured.
                db.conn.execute(
                    &format!(
                    "DELETE FROM {CHANGELOG_TABLE} WHERE seq IN (SELECT seq FROM {CHANGELOG_TABLE} \
                     WHERE pipeline = ?1 AND seq < (SELECT max(seq) FROM {CHANGELOG_TABLE}) \
                     ORDER BY seq LIMIT ?2)"
                ),
                    rusqlite::params![id, TRIM_ROWS_PER_COMMIT as i64],
                )?;
                db.conn.execute(
                    &format!(
                        "UPDATE {CHANGELOG_TABLE} SET op = 'removed', data = '{{}}' \
                     WHERE pipeline = ?1 AND seq = (SELECT max(seq) FROM {CHANGELOG_TABLE})"
                    ),
                    [id],
                )?;
                db.conn.execute(
                    &format!("DELETE FROM {PIPELINES_TABLE} WHERE id = ?1"),
                    [id],
                )?;
                Ok(newest)
            })?;
        let rules = self.rules.clone();
        self.pipelines = rules.internal(|| InstalledPipelines::load(&self.conn))?;
        self.pipelines.pending_trims.insert(id, newest);
        Ok(out)
    }

    /// Pauses or resumes delivery (stored, so it survives restarts). Capture goes on.
    pub fn set_pipeline_paused(
        &mut self,
        name: &str,
        paused: bool,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<CommitOutcome, PipelineError> {
        let id = self.pipeline_id(name)?;
        let what = format!("pause pipeline {name}: {paused}");
        let ((), out) =
            self.internal_commit::<_, PipelineError>(&what, epoch, origin, now_us, |db, _| {
                db.conn.execute(
                    &format!("UPDATE {PIPELINES_TABLE} SET paused = ?2 WHERE id = ?1"),
                    rusqlite::params![id, paused],
                )?;
                Ok(())
            })?;
        let rules = self.rules.clone();
        self.pipelines = rules.internal(|| InstalledPipelines::load(&self.conn))?;
        Ok(out)
    }

    fn pipeline_id(&self, name: &str) -> Result<i64, PipelineError> {
        self.pipelines
            .list
            .iter()
            .find(|p| p.spec.name == name)
            .map(|p| p.id)
            .ok_or_else(|| PipelineError::Invalid(format!("there is no pipeline named {name}")))
    }

    /// Runs Flotilla's own statements as one commit with its own LSN.
    pub(crate) fn internal_commit<T, E>(
        &mut self,
        what: &str,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
        f: impl FnOnce(&mut LeaderDb, Lsn) -> Result<T, E>,
    ) -> Result<(T, CommitOutcome), E>
    where
        E: From<StoreError> + From<InternalTooLarge>,
    {
        let next = self.meta().position.lsn.next();
        let lsn = self
            .internal_lsn
            .take()
            .filter(|l| *l >= next)
            .unwrap_or(next);
        let rules = self.rules.clone();
        rules
            .internal(|| self.conn.execute_batch("BEGIN IMMEDIATE"))
            .map_err(StoreError::from)?;
        self.capture.begin();
        self.size.begin_txn();
        // The size limit holds here too (a pipeline's initial copy of a large table): its
        // record must fit the log. No time limit: this is an operator's own action.
        self.guard.begin_request(0);
        let ran = rules.internal(|| f(self, lsn));
        self.guard.end_request();
        let limit = self.guard.max_bytes();
        let too_big = || {
            E::from(InternalTooLarge(too_large(
                what,
                self.guard.too_large_message(),
            )))
        };
        let ran = match ran {
            Ok(_) | Err(_) if self.guard.stopped_by_size() => Err(too_big()),
            Ok(_) if self.size.measure(limit) > limit => Err(too_big()),
            other => other,
        };
        match ran {
            Ok(v) => {
                // On a multi-leader node an internal change of replicated rows (a policy) is
                // stamped for other data centres like a client's; a merge brought its own stamp.
                let rows = if self.pending_exchange.is_none() {
                    match rules.internal(|| self.stamp_and_finish(lsn, now_us)) {
                        Ok(rows) => rows,
                        Err(e) => {
                            self.capture.forget_shapes();
                            let _ = rules.internal(|| self.conn.execute_batch("ROLLBACK"));
                            return Err(E::from(e));
                        }
                    }
                } else {
                    self.capture.finish()
                };
                let out = self.finish_commit(
                    lsn,
                    epoch,
                    origin,
                    now_us,
                    what.as_bytes(),
                    rows,
                    Vec::new(),
                )?;
                Ok((v, out))
            }
            Err(e) => {
                self.capture.finish();
                self.capture.forget_shapes();
                let _ = rules.internal(|| self.conn.execute_batch("ROLLBACK"));
                Err(e)
            }
        }
    }
}

/// An internal commit (a pipeline change, a token) would exceed the transaction size limit.
#[derive(Debug)]
pub(crate) struct InternalTooLarge(pub String);

impl From<InternalTooLarge> for PipelineError {
    fn from(e: InternalTooLarge) -> Self {
        PipelineError::Invalid(e.0)
    }
}

fn too_large(what: &str, why: String) -> String {
    format!(
        "{what}: {why} (for a pipeline, the initial copy of its source table is one transaction)"
    )
}

fn changelog_exists(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [CHANGELOG_TABLE],
        |r| r.get::<_, i64>(0),
    )? > 0)
}

/// Pipelines that no longer exist but still have rows in the changelog, each with the seq
/// its rows end at.
fn orphan_pipelines(conn: &Connection) -> Result<Vec<(i64, i64)>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT pipeline, max(seq) FROM {CHANGELOG_TABLE} \
         WHERE pipeline NOT IN (SELECT id FROM {PIPELINES_TABLE}) GROUP BY pipeline"
    ))?;
    let ids = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids)
}

/// The changelog's newest seq (0 when empty).
fn newest_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached(&format!(
        "SELECT coalesce(max(seq), 0) FROM {CHANGELOG_TABLE}"
    ))?
    .query_row([], |r| r.get(0))
}
