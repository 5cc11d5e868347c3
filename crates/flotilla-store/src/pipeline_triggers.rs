//! The triggers of trigger-based replication: for each pipeline, SQL triggers on its source
//! table that write each change — filtered by the pipeline's predicate, reshaped by its column
//! list, renames and computed columns — into `_flotilla_changelog`, in the same transaction as
//! the change. Flotilla writes, upgrades and removes them; users never do.
//!
//! A changelog row is one row change at the target: `upsert` (the full row as the target
//! stores it, as a JSON object) or `delete` (the key columns only). An UPDATE becomes a delete
//! of the old key when the row leaves the predicate's range or its key changes, and an upsert
//! when the new row is in range. The predicate and computed columns see the row's columns by
//! name through a one-row subquery (`SELECT NEW.a AS a, …`), so they are ordinary SQL over the
//! source columns, compiled by SQLite when the pipeline is added.
//!
//! Each changelog row carries the LSN of its commit (`_flotilla_meta` holds the previous one
//! until the commit stamps it: every request of a group commit shares the LSN), so delivery
//! can keep source transactions whole. `seq` is a plain rowid: trimming never deletes the
//! newest row, so rowids never restart and a target's cursor stays meaningful.

use crate::row_capture::table_xinfo_all;
use crate::StoreError;
use flotilla_types::PipelineSpec;
use rusqlite::Connection;

pub(crate) const CHANGELOG_TABLE: &str = "_flotilla_changelog";
pub(crate) const PIPELINES_TABLE: &str = "_flotilla_pipelines";
/// Keys of in-range rows an INSERT may replace (see [`trigger_sql`]); empty between statements.
pub(crate) const MARKS_TABLE: &str = "_flotilla_pipeline_marks";

/// Created with the first pipeline (a database without pipelines has neither table).
pub(crate) const PIPELINE_TABLES_SQL: &str = "
    CREATE TABLE IF NOT EXISTS _flotilla_pipelines (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        spec TEXT NOT NULL,
        format_version INTEGER NOT NULL,
        paused INTEGER NOT NULL DEFAULT 0,
        trimmed_to INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS _flotilla_pipeline_marks (
        pipeline INTEGER NOT NULL,
        key TEXT NOT NULL,
        PRIMARY KEY (pipeline, key)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS _flotilla_changelog (
        seq INTEGER PRIMARY KEY,
        pipeline INTEGER NOT NULL,
        lsn INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        op TEXT NOT NULL,
        data TEXT NOT NULL
    );";

/// One delivered column: its value in the source row (a column or an expression) and its name
/// at the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputColumn {
    /// SQL over the one-row subquery `r` (a quoted column name or a parenthesised expression).
    pub value_sql: String,
    pub target_name: String,
    pub is_key: bool,
    /// Declared with BLOB affinity (or no type): a blob value is delivered as `{"$hex": …}`
    /// (JSON holds no bytes).
    pub may_hold_blob: bool,
}

/// What a pipeline's triggers compute, resolved against the source table's current schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerPlan {
    pub source: String,
    /// Every column of the source table (the one-row subquery exposes them all to the
    /// predicate and computed columns).
    pub source_columns: Vec<String>,
    pub key_columns: Vec<String>,
    pub output: Vec<OutputColumn>,
    pub predicate: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for PipelineError {
    fn from(e: rusqlite::Error) -> Self {
        PipelineError::Store(StoreError::Sqlite(e))
    }
}

/// An SQL identifier, quoted (the same rule in SQLite and PostgreSQL).
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Resolves a pipeline against the source table's schema: every name it uses must exist.
pub fn plan(conn: &Connection, spec: &PipelineSpec) -> Result<TriggerPlan, PipelineError> {
    let invalid = |m: String| PipelineError::Invalid(m);
    let cols = table_xinfo_all(conn, &spec.source)?;
    if cols.is_empty() {
        return Err(invalid(format!(
            "source table {} does not exist",
            spec.source
        )));
    }
    if spec.source.to_ascii_lowercase().starts_with("_flotilla")
        || spec.source.to_ascii_lowercase().starts_with("sqlite_")
    {
        return Err(invalid(format!(
            "{} is an internal table and cannot be a pipeline source",
            spec.source
        )));
    }
    // (name, pk position, declared type, hidden)
    let visible: Vec<&(String, i64, String, i64)> = cols.iter().filter(|c| c.3 != 1).collect();
    let mut key: Vec<(i64, String)> = visible
        .iter()
        .filter(|c| c.1 > 0)
        .map(|c| (c.1, c.0.clone()))
        .collect();
    key.sort();
    let key_columns: Vec<String> = key.into_iter().map(|k| k.1).collect();
    if key_columns.is_empty() {
        return Err(invalid(format!(
            "table {} has no PRIMARY KEY: a pipeline needs one to upsert and delete by key at \
             the target",
            spec.source
        )));
    }
    let find = |name: &str| visible.iter().find(|c| c.0.eq_ignore_ascii_case(name));
    for c in &spec.columns {
        if find(c).is_none() {
            return Err(invalid(format!("table {} has no column {c}", spec.source)));
        }
    }
    let selected: Vec<&&(String, i64, String, i64)> = visible
        .iter()
        .filter(|c| {
            c.1 > 0
                || spec.columns.is_empty()
                || spec.columns.iter().any(|s| s.eq_ignore_ascii_case(&c.0))
        })
        .collect();
    for r in &spec.renames {
        if !selected.iter().any(|c| c.0.eq_ignore_ascii_case(&r.from)) {
            return Err(invalid(format!(
                "rename {}={}: {} is not a delivered column of {}",
                r.from, r.to, r.from, spec.source
            )));
        }
    }
    let mut output: Vec<OutputColumn> = selected
        .iter()
        .map(|c| {
            let target_name = spec
                .renames
                .iter()
                .find(|r| r.from.eq_ignore_ascii_case(&c.0))
                .map_or_else(|| c.0.clone(), |r| r.to.clone());
            let ty = c.2.to_ascii_uppercase();
            OutputColumn {
                value_sql: quote(&c.0),
                target_name,
                is_key: c.1 > 0,
                may_hold_blob: ty.is_empty() || ty.contains("BLOB"),
            }
        })
        .collect();
    for c in &spec.computed {
        output.push(OutputColumn {
            value_sql: format!("({})", c.expr),
            target_name: c.name.clone(),
            is_key: false,
            // An expression's type is known only when it runs.
            may_hold_blob: true,
        });
    }
    let mut seen = std::collections::HashSet::new();
    for o in &output {
        if !seen.insert(o.target_name.to_ascii_lowercase()) {
            return Err(invalid(format!(
                "two delivered columns are named {} at the target",
                o.target_name
            )));
        }
    }
    let plan = TriggerPlan {
        source: visible_source_name(conn, &spec.source)?,
        source_columns: visible.iter().map(|c| c.0.clone()).collect(),
        key_columns,
        output,
        predicate: spec.predicate.clone(),
    };
    check_compiles(conn, &plan)?;
    Ok(plan)
}

/// The table's name as the schema spells it.
fn visible_source_name(conn: &Connection, name: &str) -> Result<String, PipelineError> {
    Ok(conn.query_row(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        [name],
        |r| r.get(0),
    )?)
}

/// The one-row subquery exposing a row image (`NEW` or `OLD`) by column name.
fn row_subquery(plan: &TriggerPlan, image: &str) -> String {
    let cols: Vec<String> = plan
        .source_columns
        .iter()
        .map(|c| format!("{image}.{} AS {}", quote(c), quote(c)))
        .collect();
    format!("(SELECT {}) AS r", cols.join(", "))
}

fn json_value(o: &OutputColumn) -> String {
    if o.may_hold_blob {
        format!(
            "CASE WHEN typeof({v}) = 'blob' THEN json_object('$hex', hex({v})) ELSE {v} END",
            v = o.value_sql
        )
    } else {
        o.value_sql.clone()
    }
}

fn upsert_json(plan: &TriggerPlan) -> String {
    let parts: Vec<String> = plan
        .output
        .iter()
        .map(|o| format!("{}, {}", sql_str(&o.target_name), json_value(o)))
        .collect();
    format!("json_object({})", parts.join(", "))
}

fn key_json(plan: &TriggerPlan) -> String {
    let parts: Vec<String> = plan
        .output
        .iter()
        .filter(|o| o.is_key)
        .map(|o| format!("{}, {}", sql_str(&o.target_name), json_value(o)))
        .collect();
    format!("json_object({})", parts.join(", "))
}

fn predicate(plan: &TriggerPlan) -> String {
    plan.predicate
        .as_ref()
        .map_or_else(|| "1".to_string(), |p| format!("({p})"))
}

/// `INSERT INTO _flotilla_changelog … SELECT …` for one row image and operation, when
/// `condition` (SQL over the row's columns) holds.
fn log_change(id: i64, plan: &TriggerPlan, image: &str, op: &str, condition: &str) -> String {
    let data = if op == "upsert" {
        upsert_json(plan)
    } else {
        key_json(plan)
    };
    format!(
        "INSERT INTO {CHANGELOG_TABLE} (pipeline, lsn, at_ms, op, data) \
         SELECT {id}, (SELECT lsn + 1 FROM _flotilla_meta WHERE id = 1), \
         CAST(unixepoch('subsec') * 1000 AS INTEGER), '{op}', {data} \
         FROM {sub} WHERE {condition};",
        sub = row_subquery(plan, image),
    )
}

pub(crate) fn trigger_names(id: i64) -> [String; 4] {
    [
        format!("_flotilla_p{id}_insert"),
        format!("_flotilla_p{id}_update"),
        format!("_flotilla_p{id}_delete"),
        format!("_flotilla_p{id}_replace"),
    ]
}

fn key_array(plan: &TriggerPlan, image: &str) -> String {
    let keys: Vec<String> = plan
        .key_columns
        .iter()
        .map(|k| format!("{image}.{}", quote(k)))
        .collect();
    format!("json_array({})", keys.join(", "))
}

/// The CREATE TRIGGER statements of pipeline `id`.
///
/// `INSERT OR REPLACE` deletes the row it replaces without firing delete triggers (unless
/// `recursive_triggers` is on, which would change users' own triggers). Without a predicate
/// the new row's upsert overwrites it at the target. With one, a replacement that falls out of
/// range must delete it there: a BEFORE INSERT trigger marks the key of an in-range row with
/// the new row's key, and the AFTER INSERT trigger turns a marked, out-of-range insert into a
/// delete. Marks left by inserts that were ignored or became updates are cleared after each
/// statement.
pub fn trigger_sql(id: i64, plan: &TriggerPlan) -> Vec<String> {
    let [ins, upd, del, replace] = trigger_names(id);
    let table = quote(&plan.source);
    // The row left the range, or its key changed: delete the old key at the target.
    let key_changed: Vec<String> = plan
        .key_columns
        .iter()
        .map(|k| format!("OLD.{q} IS NOT NEW.{q}", q = quote(k)))
        .collect();
    let new_in_range = format!(
        "EXISTS (SELECT 1 FROM {} WHERE {})",
        row_subquery(plan, "NEW"),
        predicate(plan)
    );
    let leaves = format!(" AND (NOT {new_in_range} OR {})", key_changed.join(" OR "));
    let in_range = predicate(plan);
    let mut out = Vec::new();
    if plan.predicate.is_some() {
        let same_key: Vec<String> = plan
            .key_columns
            .iter()
            .map(|k| format!("{q} IS NEW.{q}", q = quote(k)))
            .collect();
        out.push(format!(
            "CREATE TRIGGER {replace} BEFORE INSERT ON {table} BEGIN \
             INSERT OR IGNORE INTO {MARKS_TABLE} (pipeline, key) SELECT {id}, {key} \
             WHERE EXISTS (SELECT 1 FROM (SELECT * FROM {table} WHERE {same}) AS r WHERE {pred}); \
             END",
            key = key_array(plan, "NEW"),
            same = same_key.join(" AND "),
            pred = predicate(plan),
        ));
        let marked = format!(
            " AND EXISTS (SELECT 1 FROM {MARKS_TABLE} WHERE pipeline = {id} AND key = {})",
            key_array(plan, "NEW")
        );
        let out_of_range_delete = log_change(
            id,
            plan,
            "NEW",
            "delete",
            &format!("NOT coalesce({}, 0){marked}", predicate(plan)),
        );
        out.push(format!(
            "CREATE TRIGGER {ins} AFTER INSERT ON {table} BEGIN {} {} \
             DELETE FROM {MARKS_TABLE} WHERE pipeline = {id} AND key = {}; END",
            out_of_range_delete,
            log_change(id, plan, "NEW", "upsert", &in_range),
            key_array(plan, "NEW"),
        ));
    } else {
        out.push(format!(
            "CREATE TRIGGER {ins} AFTER INSERT ON {table} BEGIN {} END",
            log_change(id, plan, "NEW", "upsert", &in_range)
        ));
    }
    out.push(format!(
        "CREATE TRIGGER {upd} AFTER UPDATE ON {table} BEGIN {} {} END",
        log_change(id, plan, "OLD", "delete", &format!("{in_range}{leaves}")),
        log_change(id, plan, "NEW", "upsert", &in_range)
    ));
    out.push(format!(
        "CREATE TRIGGER {del} AFTER DELETE ON {table} BEGIN {} END",
        log_change(id, plan, "OLD", "delete", &in_range)
    ));
    out
}

/// Puts every row of the source table that is in range into the changelog as an upsert (the
/// target's initial copy), in the transaction that installs the triggers: nothing is missed and
/// nothing is sent twice.
pub(crate) fn initial_copy(
    conn: &Connection,
    id: i64,
    lsn: flotilla_types::Lsn,
    plan: &TriggerPlan,
) -> Result<usize, PipelineError> {
    let cols: Vec<String> = plan.source_columns.iter().map(|c| quote(c)).collect();
    let sql = format!(
        "INSERT INTO {CHANGELOG_TABLE} (pipeline, lsn, at_ms, op, data) \
         SELECT {id}, {lsn}, CAST(unixepoch('subsec') * 1000 AS INTEGER), 'upsert', {data} \
         FROM (SELECT {cols} FROM {table}) AS r WHERE {pred} ORDER BY {key}",
        lsn = lsn.0,
        data = upsert_json(plan),
        cols = cols.join(", "),
        table = quote(&plan.source),
        pred = predicate(plan),
        key = plan
            .key_columns
            .iter()
            .map(|k| quote(k))
            .collect::<Vec<_>>()
            .join(", "),
    );
    Ok(conn.execute(&sql, [])?)
}

/// Compiles what the triggers will run, against the real table, so that a predicate or
/// computed column that does not compile is refused when the pipeline is added, naming it.
fn check_compiles(conn: &Connection, plan: &TriggerPlan) -> Result<(), PipelineError> {
    let cols: Vec<String> = plan.source_columns.iter().map(|c| quote(c)).collect();
    let from = format!(
        "(SELECT {} FROM {}) AS r",
        cols.join(", "),
        quote(&plan.source)
    );
    if let Some(p) = &plan.predicate {
        conn.prepare(&format!("SELECT 1 FROM {from} WHERE ({p})"))
            .map_err(|e| {
                PipelineError::Invalid(format!(
                    "the row predicate {p:?} does not work on table {}: {}",
                    plan.source,
                    crate::expression_problem(&e, p, &plan.source_columns)
                ))
            })?;
    }
    for o in plan.output.iter().filter(|o| o.value_sql.starts_with('(')) {
        conn.prepare(&format!("SELECT {} FROM {from}", o.value_sql))
            .map_err(|e| {
                let expr = &o.value_sql[1..o.value_sql.len() - 1];
                PipelineError::Invalid(format!(
                    "computed column {} = {expr} does not work on table {}: {}",
                    o.target_name,
                    plan.source,
                    crate::expression_problem(&e, expr, &plan.source_columns)
                ))
            })?;
    }
    Ok(())
}
