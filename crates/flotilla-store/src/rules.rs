//! Which client statements Flotilla refuses, decided by SQLite's authorizer (so the rules see
//! what the parser saw, not a guess from the text).

use flotilla_types::DdlKind;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::Connection;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Tables whose name starts with this are Flotilla's own.
pub const INTERNAL_PREFIX: &str = "_flotilla_";

/// Pragmas that act (checkpoint, vacuum, free memory) rather than read: refused outright.
const ACTION_PRAGMAS: &[&str] = &[
    "wal_checkpoint",
    "incremental_vacuum",
    "shrink_memory",
    "optimize",
];

/// Pragmas that change journaling, durability, the file format or safety checks when set: a
/// client changing them would make the database diverge from what replication promises.
/// Reading them is fine.
const REFUSED_PRAGMAS: &[&str] = &[
    "journal_mode",
    "synchronous",
    "wal_autocheckpoint",
    "locking_mode",
    "writable_schema",
    "page_size",
    "auto_vacuum",
    "query_only",
    "schema_version",
    "journal_size_limit",
    "mmap_size",
    "trusted_schema",
    "cell_size_check",
    "ignore_check_constraints",
    "foreign_keys",
    "defer_foreign_keys",
    "recursive_triggers",
    "temp_store",
    "temp_store_directory",
    "data_store_directory",
    "busy_timeout",
    "cache_spill",
    "secure_delete",
    "hard_heap_limit",
    "soft_heap_limit",
    "threads",
];

/// Pragmas that take an argument but only read.
const INFORMATIONAL_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_info",
    "index_xinfo",
    "index_list",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "function_list",
    "pragma_list",
    "collation_list",
    "database_list",
];

/// Installs the authorizer on a connection and reports why a statement was refused.
#[derive(Clone)]
pub struct StatementRules {
    /// Set while Flotilla runs its own statements (which may touch internal tables).
    internal: Arc<AtomicBool>,
    reason: Arc<Mutex<Option<String>>>,
    /// The schema change the last prepared statement makes, if any.
    ddl: Arc<Mutex<Option<(DdlKind, String)>>>,
    /// Set when the last refusal was a write to a table replicated from the leader.
    misdirected: Arc<AtomicBool>,
    /// Set when the statement prepared since the last call has a SELECT.
    saw_select: Arc<AtomicBool>,
}

/// On a logical follower, the tables clients may write: those created on the follower itself.
pub type LocalTables = Arc<Mutex<std::collections::HashSet<String>>>;

impl StatementRules {
    pub fn install(conn: &mut Connection) -> rusqlite::Result<StatementRules> {
        Self::install_with(conn, None)
    }

    /// The rules of a logical follower: as on a leader, and writes only to `local` tables (a
    /// write to a replicated table is refused as misdirected: it belongs on the leader).
    pub fn install_for_replica(
        conn: &mut Connection,
        local: LocalTables,
    ) -> rusqlite::Result<StatementRules> {
        Self::install_with(conn, Some(local))
    }

    fn install_with(
        conn: &mut Connection,
        local: Option<LocalTables>,
    ) -> rusqlite::Result<StatementRules> {
        let rules = StatementRules {
            internal: Arc::new(AtomicBool::new(false)),
            reason: Arc::new(Mutex::new(None)),
            ddl: Arc::new(Mutex::new(None)),
            misdirected: Arc::new(AtomicBool::new(false)),
            saw_select: Arc::new(AtomicBool::new(false)),
        };
        let (internal, reason, ddl, misdirected, saw_select) = (
            rules.internal.clone(),
            rules.reason.clone(),
            rules.ddl.clone(),
            rules.misdirected.clone(),
            rules.saw_select.clone(),
        );
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            if internal.load(Ordering::Relaxed) {
                return Authorization::Allow;
            }
            if ctx.action == AuthAction::Select {
                saw_select.store(true, Ordering::Relaxed);
            }
            if let Some(change) = schema_change(&ctx) {
                ddl.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(change);
            }
            if let Some(why) = outside_main(&ctx) {
                *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                return Authorization::Deny;
            }
            if local.is_some() {
                if let AuthAction::Pragma {
                    pragma_name,
                    pragma_value: Some(_),
                } = ctx.action
                {
                    if ["user_version", "application_id"]
                        .iter()
                        .any(|p| pragma_name.eq_ignore_ascii_case(p))
                    {
                        misdirected.store(true, Ordering::Relaxed);
                        *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                            "PRAGMA {pragma_name} is replicated from the leader here: set it on \
                             the leader"
                        ));
                        return Authorization::Deny;
                    }
                }
            }
            if let Some(local) = &local {
                if let Some(table) = replicated_write(&ctx, local) {
                    misdirected.store(true, Ordering::Relaxed);
                    *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                        "table {table} is replicated from the leader and read-only here: \
                         write it on the leader"
                    ));
                    return Authorization::Deny;
                }
            }
            match refusal(&ctx) {
                Some(why) => {
                    *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    Authorization::Deny
                }
                None => Authorization::Allow,
            }
        }))?;
        Ok(rules)
    }

    /// Runs `f` with the rules off: for Flotilla's own statements only.
    pub fn internal<T>(&self, f: impl FnOnce() -> T) -> T {
        self.internal.store(true, Ordering::Relaxed);
        let out = f();
        self.internal.store(false, Ordering::Relaxed);
        out
    }

    /// The schema change (kind, table) of the statement prepared since the last call, if it
    /// is one. Cleared by reading it.
    pub fn take_schema_change(&self) -> Option<(DdlKind, String)> {
        self.saw_select.store(false, Ordering::Relaxed);
        self.ddl.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Whether the statement whose schema change was just taken has a SELECT: for a CREATE
    /// TABLE, that it is `CREATE TABLE ... AS SELECT` (its rows come from a query a replica
    /// must not run again: `random()`, the clock, data it does not hold). Call before
    /// [`StatementRules::take_schema_change`]. Cleared by reading it.
    pub fn take_saw_select(&self) -> bool {
        self.saw_select.swap(false, Ordering::Relaxed)
    }

    /// Whether the last refusal was a write to a replicated table (cleared by reading it).
    pub fn take_misdirected(&self) -> bool {
        self.misdirected.swap(false, Ordering::Relaxed)
    }

    /// The reason of the last refusal, cleared by reading it.
    pub fn take_reason(&self) -> Option<String> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The replicated table a follower-local statement would write, if any. Indexes may be added
/// to any table (a logical follower's own indexes); everything else that changes a table needs
/// it to be local.
fn replicated_write<'a>(ctx: &AuthContext<'a>, local: &LocalTables) -> Option<&'a str> {
    let table = match ctx.action {
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::DropTable { table_name }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::DropTrigger { table_name, .. } => table_name,
        _ => return None,
    };
    let lower = table.to_ascii_lowercase();
    // SQLite's own tables (sqlite_schema, sqlite_sequence) change with every CREATE and
    // AUTOINCREMENT insert; Flotilla's are refused by the common rules.
    if lower.starts_with("sqlite_") || lower.starts_with(INTERNAL_PREFIX) {
        return None;
    }
    let local = local.lock().unwrap_or_else(|p| p.into_inner());
    (!local.contains(table)).then_some(table)
}

/// Refuses whatever would create, change or write an object outside the main schema (`temp.`,
/// an attached database): such objects live on one connection, are never replicated, and a
/// temporary table shadows the main table of the same name for every later statement on that
/// connection (writes to it would be acknowledged and vanish). Reading them is harmless: they
/// cannot exist, and SQLite reads the temp schema itself (e.g. for `ALTER TABLE ... RENAME`).
fn outside_main(ctx: &AuthContext<'_>) -> Option<String> {
    let schema = match ctx.action {
        AuthAction::AlterTable { database_name, .. } => Some(database_name),
        _ => ctx.database_name,
    }?;
    if schema.eq_ignore_ascii_case("main") {
        return None;
    }
    let harmless = match ctx.action {
        AuthAction::Read { .. } | AuthAction::Select | AuthAction::Function { .. } => true,
        // SQLite's own upkeep of the temp schema when a main table is renamed or dropped (it
        // rewrites temp triggers on that table; there are none). Inserting there creates one.
        AuthAction::Update { table_name, .. } | AuthAction::Delete { table_name } => {
            table_name.eq_ignore_ascii_case("sqlite_temp_master")
                || table_name.eq_ignore_ascii_case("sqlite_temp_schema")
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            pragma_value.is_none()
                || INFORMATIONAL_PRAGMAS.contains(&pragma_name.to_ascii_lowercase().as_str())
        }
        _ => false,
    };
    (!harmless).then(|| {
        format!(
            "schema {schema:?} is not allowed: only objects of the main schema are replicated \
             (temporary objects would live on one connection of the leader and never reach \
             followers); leave out the schema name or use main."
        )
    })
}

/// The schema change an authorized action makes (on the main database).
fn schema_change(ctx: &AuthContext<'_>) -> Option<(DdlKind, String)> {
    let (kind, table) = match ctx.action {
        AuthAction::CreateTable { table_name } => (DdlKind::CreateTable, table_name),
        AuthAction::AlterTable { table_name, .. } => (DdlKind::AlterTable, table_name),
        AuthAction::DropTable { table_name } => (DdlKind::DropTable, table_name),
        AuthAction::CreateIndex { table_name, .. } => (DdlKind::CreateIndex, table_name),
        AuthAction::DropIndex { table_name, .. } => (DdlKind::DropIndex, table_name),
        AuthAction::CreateView { view_name } => (DdlKind::CreateView, view_name),
        AuthAction::CreateVtable { table_name, .. } => (DdlKind::CreateVirtualTable, table_name),
        AuthAction::DropVtable { table_name, .. } => (DdlKind::DropVirtualTable, table_name),
        AuthAction::DropView { view_name } => (DdlKind::DropView, view_name),
        AuthAction::CreateTrigger { table_name, .. } => (DdlKind::CreateTrigger, table_name),
        AuthAction::DropTrigger { table_name, .. } => (DdlKind::DropTrigger, table_name),
        // Database header values: a page of a physical replica, but no row of a logical one.
        AuthAction::Pragma {
            pragma_name,
            pragma_value: Some(_),
        } if ["user_version", "application_id"]
            .iter()
            .any(|p| pragma_name.eq_ignore_ascii_case(p)) =>
        {
            (DdlKind::SetPragma, pragma_name)
        }
        _ => return None,
    };
    Some((kind, table.to_string()))
}

/// Flotilla's tables that hold secrets (or their hashes).
fn is_secret_table(table: &str) -> bool {
    ["_flotilla_pipelines", "_flotilla_tokens"]
        .iter()
        .any(|t| table.eq_ignore_ascii_case(t))
}

/// The user-visible tables of multi-leader replication (reserved names on every node).
fn multi_leader_table(name: &str) -> bool {
    name.eq_ignore_ascii_case(crate::multi_leader::CONFLICTS_TABLE)
        || name.eq_ignore_ascii_case(crate::multi_leader::POLICIES_TABLE)
}

fn refusal(ctx: &AuthContext<'_>) -> Option<String> {
    let internal_table = |t: &str| t.to_ascii_lowercase().starts_with(INTERNAL_PREFIX);
    // What Flotilla's own triggers (trigger-based replication) do when a client statement
    // fires them: they write the changelog.
    if ctx.accessor.is_some_and(internal_table) {
        return None;
    }
    match ctx.action {
        // Pipeline definitions hold their targets' passwords and tokens; the token table holds
        // hashes. Clients see them through the pipeline and token endpoints, masked.
        AuthAction::Read { table_name, .. } if is_secret_table(table_name) => Some(format!(
            "table {table_name} holds Flotilla's secrets and cannot be read by clients: use \
             `flotilla pipeline list` or `flotilla token list`"
        )),
        // The newest commit's row changes, kept for recovery: a token commit's hold its hash.
        AuthAction::Read {
            table_name,
            column_name,
        } if table_name.eq_ignore_ascii_case("_flotilla_meta")
            && column_name.eq_ignore_ascii_case("rows") =>
        {
            Some(
                "column rows of _flotilla_meta holds the newest commit's row changes (Flotilla's \
                 secrets among them) and cannot be read by clients: use GET /v1/changes"
                    .into(),
            )
        }
        // Raw pages hold every table's bytes, the secret tables' included.
        AuthAction::Read { table_name, .. } if table_name.eq_ignore_ascii_case("sqlite_dbpage") => {
            Some(
                "sqlite_dbpage is not allowed: its raw pages hold every table, Flotilla's \
                 secrets included (use dbstat for page statistics)"
                    .into(),
            )
        }
        // Shapes are checked against their table when set, and their predicates run with
        // Flotilla's rights: never written by a client statement.
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
        | AuthAction::CreateTable { table_name, .. }
        | AuthAction::DropTable { table_name, .. }
        | AuthAction::AlterTable { table_name, .. }
            if table_name.eq_ignore_ascii_case(crate::devices::SHAPES_TABLE) =>
        {
            Some(format!(
                "{table_name} holds the devices' shapes: set them with `flotilla shape set` \
                 (PUT /v1/shapes)"
            ))
        }
        // Multi-leader: the policies are checked against their table when set (`flotilla
        // conflicts policy`), and the conflicts are each node's own record.
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
        | AuthAction::CreateTable { table_name, .. }
        | AuthAction::DropTable { table_name, .. }
        | AuthAction::AlterTable { table_name, .. }
            if multi_leader_table(table_name) =>
        {
            Some(format!(
                "{table_name} is Flotilla's multi-leader bookkeeping: set policies with `flotilla \
                 conflicts policy` (PUT /v1/conflicts/policies), resolve a conflict by writing \
                 the value you want to its row (or `flotilla conflicts resolve`)"
            ))
        }
        AuthAction::CreateView { view_name } if internal_table(view_name) => Some(format!(
            "names starting with {INTERNAL_PREFIX} are Flotilla's own: choose another for view \
             {view_name}"
        )),
        AuthAction::CreateIndex { index_name, .. } if internal_table(index_name) => Some(format!(
            "names starting with {INTERNAL_PREFIX} are Flotilla's own: choose another for index \
             {index_name}"
        )),
        AuthAction::CreateTrigger { trigger_name, .. }
        | AuthAction::DropTrigger { trigger_name, .. }
            if internal_table(trigger_name) =>
        {
            Some(format!(
                "trigger {trigger_name} belongs to a Flotilla pipeline: manage it with \
                 `flotilla pipeline` (remove the pipeline to drop it)"
            ))
        }
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => Some(
            "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE) is not allowed: \
             each request already runs as one transaction"
                .into(),
        ),
        AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. } => Some(
            "temporary tables, indexes, views and triggers are not allowed: they would live on \
             one connection of the leader and never be replicated"
                .into(),
        ),
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Some(
            "ATTACH and DETACH are not allowed: an attached database would not be replicated"
                .into(),
        ),
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            Some("loading extensions is not allowed: followers would not have them".into())
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            if ACTION_PRAGMAS.contains(&name.as_str()) {
                Some(format!(
                    "PRAGMA {name} is not allowed: Flotilla manages checkpoints and maintenance"
                ))
            } else if pragma_value.is_some() && REFUSED_PRAGMAS.contains(&name.as_str()) {
                Some(format!(
                    "PRAGMA {name} is not allowed: it changes journaling, durability or safety \
                     settings that replication depends on"
                ))
            } else if pragma_value.is_some()
                && name != "user_version"
                && name != "application_id"
                && !INFORMATIONAL_PRAGMAS.contains(&name.as_str())
            {
                Some(format!(
                    "setting PRAGMA {name} is not allowed: connection settings are shared by all clients"
                ))
            } else {
                None
            }
        }
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::DropTable { table_name }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::CreateTable { table_name }
        | AuthAction::CreateIndex { table_name, .. }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::DropIndex { table_name, .. }
        | AuthAction::DropTrigger { table_name, .. }
            if internal_table(table_name) =>
        {
            Some(format!(
                "table {table_name} is internal to Flotilla and cannot be changed by clients"
            ))
        }
        AuthAction::CreateVtable { module_name, .. }
        | AuthAction::DropVtable { module_name, .. }
            if module_name.eq_ignore_ascii_case("sqlite_dbpage") =>
        {
            Some("sqlite_dbpage is not allowed: it writes raw pages".into())
        }
        AuthAction::Update { table_name, .. } | AuthAction::Insert { table_name }
            if table_name.eq_ignore_ascii_case("sqlite_dbpage") =>
        {
            Some("writing sqlite_dbpage is not allowed: it writes raw pages".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> Option<String> {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(a); CREATE TABLE _flotilla_meta(x);")
            .unwrap();
        let rules = StatementRules::install(&mut conn).unwrap();
        let prepared = conn.prepare(sql).map(|_| ());
        match prepared {
            Ok(()) => None,
            Err(_) => Some(rules.take_reason().unwrap_or_else(|| "sql error".into())),
        }
    }

    #[test]
    fn refuses_what_escapes_replication() {
        for (sql, needle) in [
            ("BEGIN", "transaction control"),
            ("COMMIT", "transaction control"),
            ("SAVEPOINT a", "transaction control"),
            ("ATTACH 'x.db' AS x", "ATTACH"),
            ("PRAGMA journal_mode=DELETE", "journal_mode"),
            ("PRAGMA synchronous=OFF", "synchronous"),
            ("PRAGMA wal_checkpoint", "checkpoints"),
            ("PRAGMA cache_size=10", "setting PRAGMA cache_size"),
            ("INSERT INTO _flotilla_meta VALUES (1)", "internal"),
            ("DROP TABLE _flotilla_meta", "internal"),
            ("CREATE TEMP TABLE x(a)", "temporary"),
        ] {
            let why = refused(sql).unwrap_or_else(|| panic!("{sql} was allowed"));
            assert!(why.contains(needle), "{sql}: {why}");
        }
    }

    #[test]
    fn names_the_schema_change_a_statement_makes() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(a);").unwrap();
        let rules = StatementRules::install(&mut conn).unwrap();
        for (sql, expected) in [
            ("CREATE TABLE u(x)", Some((DdlKind::CreateTable, "u"))),
            (
                "ALTER TABLE t ADD COLUMN b",
                Some((DdlKind::AlterTable, "t")),
            ),
            ("CREATE INDEX i ON t(a)", Some((DdlKind::CreateIndex, "t"))),
            ("DROP TABLE t", Some((DdlKind::DropTable, "t"))),
            (
                "CREATE VIEW v AS SELECT a FROM t",
                Some((DdlKind::CreateView, "v")),
            ),
            ("INSERT INTO t VALUES (1)", None),
        ] {
            conn.prepare(sql).unwrap();
            let got = rules.take_schema_change();
            assert_eq!(
                got.as_ref().map(|(k, t)| (*k, t.as_str())),
                expected,
                "{sql}"
            );
        }
    }

    #[test]
    fn allows_ordinary_sql() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "SELECT * FROM t",
            "CREATE TABLE u(x)",
            "PRAGMA table_info(t)",
            "PRAGMA user_version = 3",
            "PRAGMA journal_mode",
            "PRAGMA page_size",
            "SELECT * FROM _flotilla_meta",
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            "SELECT * FROM pragma_table_info('t')",
        ] {
            assert_eq!(refused(sql), None, "{sql}");
        }
    }
}
