//! Restore: a leader's database replaced, as a whole, by a backup (a SQLite file or a SQL
//! dump), optionally rolled forward through the log to a later position.
//!
//! A restore starts a new history at the next position: the new database is built beside the
//! live one (`build`), given the live database's own Flotilla tables (tokens, idempotency keys,
//! its meta row, moved to the next position), made durable, and renamed into place. The rename
//! is the commit point: a crash before it leaves the old database, after it the new one, and
//! the leader's start-up restarts the log after the new position (the log does not hold it).
//! Followers and change-feed readers behind that position find the log no longer holds it and
//! start again from a snapshot.

use crate::follower_db::apply_pages;
use crate::{quote_ident, read_meta, Meta, StoreError, INTERNAL_PREFIX};
use flotilla_types::{Chain, ContentDigest, Epoch, LogRecord, Position};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

/// The first bytes of every SQLite database file.
pub const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

fn restore_error(message: impl Into<String>) -> StoreError {
    StoreError::Restore(message.into())
}

/// What a backup file held, as found while building from it.
#[derive(Debug, Clone)]
pub struct BackupInfo {
    /// Set when the file is a Flotilla backup: its cluster and position.
    pub flotilla: Option<Meta>,
    pub page_size: u32,
}

/// Checks an uploaded SQLite file (moved to `build`) and reads what it is.
pub fn open_sqlite_backup(build: &Path) -> Result<BackupInfo, StoreError> {
    let damaged = |e: rusqlite::Error| {
        restore_error(format!(
            "the file is not an intact SQLite database: {}",
            crate::sql_error_message(&e)
        ))
    };
    let conn =
        Connection::open_with_flags(build, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(damaged)?;
    let ok: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(damaged)?;
    if ok != "ok" {
        return Err(restore_error(format!(
            "the file is not an intact SQLite database (quick_check: {ok})"
        )));
    }
    let page_size: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let flotilla = read_meta(&conn).ok().flatten();
    Ok(BackupInfo {
        flotilla,
        page_size,
    })
}

/// Checks that a built database holds nothing the leader would have refused to write, so that
/// replicas can reproduce it: UTF-8 text, no table whose rows have no name left for their rowid,
/// no row whose primary key holds NULL (replicas and pipelines find rows by key).
pub fn check_restorable(build: &Path) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(build, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let encoding: String = conn.query_row("PRAGMA encoding", [], |r| r.get(0))?;
    if encoding != "UTF-8" {
        return Err(restore_error(format!(
            "the database's text encoding is {encoding}; Flotilla's are UTF-8: convert it first \
             (sqlite3 old.db .dump | sqlite3 new.db, in a UTF-8 locale)"
        )));
    }
    let tables: Vec<String> = {
        let mut stmt = conn.prepare(
            "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table' \
             AND substr(lower(name), 1, 7) != 'sqlite_' \
             AND substr(lower(name), 1, length(?1)) != ?1",
        )?;
        let rows = stmt.query_map([INTERNAL_PREFIX], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for table in &tables {
        if let Some(problem) = crate::row_capture::rowid_name_problem(&conn, table)? {
            return Err(restore_error(problem));
        }
        let keys = crate::row_capture::table_xinfo_all(&conn, table)?;
        let pk: Vec<&(String, i64, String, i64)> = keys.iter().filter(|c| c.1 > 0).collect();
        // A rowid alias never reads as NULL, so every key is checked (an `INTEGER PRIMARY KEY
        // DESC` is no alias and may hold NULL).
        if pk.is_empty() {
            continue;
        }
        let test = pk
            .iter()
            .map(|c| format!("{} IS NULL", quote_ident(&c.0)))
            .collect::<Vec<_>>()
            .join(" OR ");
        let nulls: i64 = conn.query_row(
            &format!("SELECT count(*) FROM {} WHERE {test}", quote_ident(table)),
            [],
            |r| r.get(0),
        )?;
        if nulls > 0 {
            return Err(restore_error(format!(
                "table {table:?} has {nulls} row(s) whose primary key holds NULL: replicas find \
                 rows by key and could not tell them apart; give them keys (or declare the key \
                 NOT NULL) before restoring"
            )));
        }
    }
    Ok(())
}

/// Builds a database at `build` from a SQL dump, on a connection that can reach nothing but
/// that file: no ATTACH (so neither `VACUUM INTO`), no extensions, no pragmas beyond the
/// harmless ones a dump uses. Statements run one at a time; a failure names the statement's
/// line and text.
pub fn build_from_sql(sql: &str, build: &Path, page_size: u32) -> Result<(), StoreError> {
    let mut conn = Connection::open(build)?;
    conn.execute_batch(&format!("PRAGMA page_size = {page_size}; VACUUM;"))?;
    conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 0)?;
    conn.authorizer(Some(|ctx: rusqlite::hooks::AuthContext<'_>| {
        use rusqlite::hooks::{AuthAction, Authorization};
        match ctx.action {
            AuthAction::Attach { .. } | AuthAction::Detach { .. } => Authorization::Deny,
            AuthAction::Pragma {
                pragma_name,
                pragma_value: Some(_),
            } if ![
                "foreign_keys",
                "user_version",
                "application_id",
                "defer_foreign_keys",
            ]
            .iter()
            .any(|p| pragma_name.eq_ignore_ascii_case(p)) =>
            {
                Authorization::Deny
            }
            _ => Authorization::Allow,
        }
    }))?;
    let rest = crate::sql_text::for_each_statement(sql, |statement, line| {
        conn.execute_batch(statement).map_err(|e| {
            let shown: String = crate::sql_text::without_leading_comments(statement)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let shown = match shown.char_indices().nth(80) {
                Some((cut, _)) => format!("{}…", &shown[..cut]),
                None => shown,
            };
            let why = match crate::sql_error_message(&e).as_str() {
                "not authorized" | "authorization denied" => {
                    "not allowed in a restore (ATTACH, VACUUM and pragmas other than \
                     foreign_keys, user_version, application_id and writable_schema are refused)"
                        .to_string()
                }
                other => other.to_string(),
            };
            restore_error(format!(
                "the SQL dump does not load: line {line} ({shown}): {why}"
            ))
        })
    })?;
    if !crate::sql_text::only_comments(rest) {
        conn.execute_batch(rest).map_err(|e| {
            restore_error(format!(
                "the SQL dump does not load: its last statement: {}",
                crate::sql_error_message(&e)
            ))
        })?;
    }
    if !conn.is_autocommit() {
        conn.execute_batch("COMMIT")?;
    }
    Ok(())
}

/// Brings a Flotilla backup at `build` forward through `records` (the log's records after its
/// position, in order, up to the target). Every record must continue the backup's history.
pub fn roll_forward(build: &Path, records: &[LogRecord]) -> Result<Meta, StoreError> {
    let mut conn = Connection::open(build)?;
    let meta = read_meta(&conn)?
        .ok_or_else(|| restore_error("the backup holds no Flotilla position to roll forward"))?;
    if is_logical_replica(&conn)? {
        return Err(restore_error(
            "the backup was taken from a logical follower, whose file has its own page layout: \
             the log's page images only fit a backup of the leader or a physical follower",
        ));
    }
    let page_size: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    apply_pages(&mut conn, &meta, page_size, records)
}

/// Whether the database is a logical follower's (its pages are not the leader's).
pub fn is_logical_replica(conn: &Connection) -> Result<bool, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = '_flotilla_replica'",
        [],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// A full `PRAGMA integrity_check` (after a roll-forward, whose pages came from the log).
pub fn check_integrity(build: &Path) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(build, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let ok: String = conn.query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))?;
    if ok != "ok" {
        return Err(restore_error(format!(
            "the rolled-forward database is not intact ({ok}): is the backup a copy of this \
             cluster's leader?"
        )));
    }
    Ok(())
}

/// The application's own objects in a database (not SQLite's, not Flotilla's).
pub fn user_objects(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_schema WHERE substr(lower(name), 1, 7) != 'sqlite_' \
         AND substr(lower(name), 1, length(?1)) != ?1 ORDER BY rowid",
    )?;
    let rows = stmt.query_map([INTERNAL_PREFIX], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Makes `build` the next state of the live database at `live`: drops whatever Flotilla tables
/// the backup carried, copies the live ones (tokens, idempotency keys, meta), moves the meta
/// row to `next` with `chain`, switches the file to WAL and makes it durable. The live database
/// must not be written meanwhile (the caller is its one writer).
pub fn prepare_restore(
    build: &Path,
    live: &Path,
    next: Position,
    chain: Chain,
    digest: ContentDigest,
    now_us: u64,
) -> Result<(), StoreError> {
    let conn = Connection::open(build)?;
    // The backup's own Flotilla objects (its tokens, its pipelines' triggers) go.
    let internal: Vec<(String, String)> = {
        let mut stmt = conn.prepare(
            "SELECT type, name FROM sqlite_schema WHERE substr(lower(name), 1, length(?1)) = ?1 \
             AND type IN ('table', 'trigger', 'view') ORDER BY type = 'table'",
        )?;
        let rows = stmt.query_map([INTERNAL_PREFIX], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let tx = conn.unchecked_transaction()?;
    for (kind, name) in &internal {
        tx.execute_batch(&format!(
            "DROP {} IF EXISTS {}",
            kind.to_ascii_uppercase(),
            quote_ident(name)
        ))?;
    }
    tx.commit()?;
    conn.execute(
        "ATTACH DATABASE ?1 AS live",
        [format!("file:{}?mode=ro", live.display())],
    )
    .or_else(|_| conn.execute("ATTACH DATABASE ?1 AS live", [live.to_string_lossy()]))?;
    let tx = conn.unchecked_transaction()?;
    let objects: Vec<(String, String, String)> = {
        let mut stmt = tx.prepare(
            "SELECT type, name, sql FROM live.sqlite_schema WHERE sql IS NOT NULL \
             AND substr(lower(name), 1, length(?1)) = ?1 ORDER BY type != 'table', rowid",
        )?;
        let rows = stmt.query_map([INTERNAL_PREFIX], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (kind, name, sql) in &objects {
        tx.execute_batch(sql)?;
        if kind == "table" {
            let q = quote_ident(name);
            tx.execute_batch(&format!("INSERT INTO main.{q} SELECT * FROM live.{q}"))?;
        }
    }
    let changed = tx.execute(
        "UPDATE _flotilla_meta SET epoch = ?1, lsn = ?2, chain = ?3, digest = ?4, \
         commit_time_us = ?5, rows = NULL WHERE id = 1",
        rusqlite::params![
            next.epoch.0 as i64,
            next.lsn.0 as i64,
            chain.0 as i64,
            digest.0 as i64,
            now_us as i64
        ],
    )?;
    if changed != 1 {
        return Err(restore_error("the live database has no meta row"));
    }
    tx.commit()?;
    conn.execute_batch("DETACH DATABASE live")?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(restore_error(format!(
            "the restored database would not switch to WAL (it is {mode})"
        )));
    }
    conn.execute_batch("PRAGMA synchronous = FULL")?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);
    std::fs::File::open(build)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io(build, e))?;
    Ok(())
}

/// Renames `build` over `live` (whose connections are all closed) and makes the rename durable.
pub fn swap_in(build: &Path, live: &Path) -> Result<(), StoreError> {
    for suffix in ["-wal", "-shm"] {
        for base in [build, live] {
            let mut p = base.as_os_str().to_owned();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&p, e)),
            }
        }
    }
    std::fs::rename(build, live).map_err(|e| StoreError::io(live, e))?;
    if let Some(dir) = live.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(dir, e))?;
    }
    Ok(())
}

/// The digest a restore's new position is chained with: of the words and the position, so
/// two restores never look alike.
pub fn restore_digest(next: Position, epoch: Epoch, now_us: u64) -> ContentDigest {
    ContentDigest::of(format!("restore {next} {epoch:?} {now_us}").as_bytes())
}
