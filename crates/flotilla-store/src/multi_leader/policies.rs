//! Conflict policies: checked against the table when given, committed like data.

use super::*;

impl LeaderDb {
    /// Sets the conflict policy of `table`'s `column` (or, without a column, the table's
    /// delete rule) after checking it against the table: the column exists and is not part of
    /// the key, `counter` is on a number column, a `custom` expression compiles. A commit of
    /// its own, which travels to the other data centres like data.
    #[allow(clippy::too_many_arguments)]
    pub fn set_policy(
        &mut self,
        table: &str,
        column: Option<&str>,
        policy: &str,
        expression: Option<&str>,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<CommitOutcome, SetPolicyError> {
        if self.multi_leader.is_none() {
            return Err(SetPolicyError::Invalid(
                "conflict policies are for multi-leader nodes: this node has no data centre (--dc)"
                    .into(),
            ));
        }
        // Checked with the client rules on: an expression may not read Flotilla's secrets.
        let (table, col) = check_policy(&self.conn, table, column, policy, expression)?;
        let what = format!("set the conflict policy of {table}");
        let (_, out) = self.internal_commit::<_, SetPolicyError>(&what, epoch, origin, now_us, |db, _| {
            db.conn.execute(
                &format!(
                    "INSERT OR REPLACE INTO {POLICIES_TABLE} (tbl, col, policy, expression) VALUES (?1, ?2, ?3, ?4)"
                ),
                params![table, col, policy, expression],
            )?;
            db.capture.statement_done(&db.conn)?;
            Ok(())
        })?;
        Ok(out)
    }
}

/// Checks a policy against the schema; returns the table's and column's names as declared
/// (`""` for a table's delete rule).
fn check_policy(
    conn: &Connection,
    table: &str,
    column: Option<&str>,
    policy: &str,
    expression: Option<&str>,
) -> Result<(String, String), SetPolicyError> {
    let invalid = |m: String| Err(SetPolicyError::Invalid(m));
    let declared: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
            [table],
            |r| r.get(0),
        )
        .optional()?;
    let Some(table) =
        declared.filter(|t| !local_only(t) && !t.eq_ignore_ascii_case(POLICIES_TABLE))
    else {
        return invalid(format!("there is no table {table} here"));
    };
    let Some(column) = column else {
        return match DeleteRule::parse(policy) {
            Ok(_) if expression.is_none() => Ok((table, String::new())),
            Ok(_) => invalid("a delete rule takes no expression".into()),
            Err(_) => invalid(format!(
                "{policy:?} without a column: a table's own policy is its delete rule, delete-wins \
                 or update-wins (give --column for a column's policy)"
            )),
        };
    };
    let columns: Vec<(String, String, i64)> = conn
        .prepare("SELECT name, type, pk FROM pragma_table_info(?1)")?
        .query_map([&table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let Some((name, declared_type, pk)) = columns
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(column))
    else {
        let names: Vec<&str> = columns.iter().map(|(n, _, _)| n.as_str()).collect();
        return invalid(format!(
            "table {table} has no column {column} (its columns: {})",
            names.join(", ")
        ));
    };
    if *pk > 0 {
        return invalid(format!(
            "{name} is part of {table}'s primary key: a key identifies the row and never conflicts"
        ));
    }
    let parsed = ColumnPolicy::parse(policy, expression)
        .map_err(|e| SetPolicyError::Invalid(e.to_string()))?;
    parsed
        .check_column_type(name, declared_type)
        .map_err(|e| SetPolicyError::Invalid(e.to_string()))?;
    if let Some(expr) = parsed.expression() {
        // Every data centre must compute the same value from the same two: the expression
        // may use `local`, `remote` and deterministic functions only — no tables, no
        // random(). SQLite holds a generated column's expression to exactly that, on a
        // scratch database that has no tables to read.
        let scratch = Connection::open_in_memory()?;
        let probe = format!("CREATE TABLE probe (local ANY, remote ANY, merged ANY AS ({expr}))");
        let single = !expr.contains(';') && crate::sql_text::is_complete(&format!("{probe};"));
        let compiled = if single {
            scratch.execute_batch(&probe)
        } else {
            Err(rusqlite::Error::InvalidQuery)
        };
        if let Err(e) = compiled {
            let why = match e {
                rusqlite::Error::InvalidQuery => "it is not one expression".to_string(),
                e => crate::leader_db::sql_error_message(&e),
            };
            return invalid(format!(
                "the expression {expr:?} does not compile: {why} (it is SQL over `local` and \
                 `remote`, with deterministic functions only: every data centre must compute \
                 the same value)"
            ));
        }
    }
    Ok((table, name.clone()))
}
