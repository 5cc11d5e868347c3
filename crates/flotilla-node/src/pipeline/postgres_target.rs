//! Delivery into PostgreSQL with `tokio-postgres`: each batch is one PostgreSQL transaction
//! holding the changes (deletes by key, then multi-row upserts through `unnest`, values sent as
//! text and cast to the column types) and the pipeline's cursor in
//! `flotilla_pipeline_cursors`.

use super::target::{collapse, Change, Delivery, TargetError};
use flotilla_store::changelog::ChangeOp;
use flotilla_store::quote_ident as ident;
use serde_json::Value;
use std::collections::HashMap;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

const CURSORS: &str = "flotilla_pipeline_cursors";

pub struct PostgresTarget {
    client: Client,
    /// Column name → SQL type, as PostgreSQL spells it.
    types: HashMap<String, String>,
    /// Prepared upserts by column list.
    upserts: HashMap<String, tokio_postgres::Statement>,
    delete: tokio_postgres::Statement,
    cursor: tokio_postgres::Statement,
    apply: Option<tokio_postgres::Statement>,
    _conn: tokio::task::JoinHandle<()>,
}

/// PostgreSQL's own message for `e` (its server message when there is one).
/// PostgreSQL's own message, kept short.
fn pg_message(e: &tokio_postgres::Error) -> String {
    super::target::short_reason(
        &e.as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    )
}

/// A failure while `what`: retried.
fn failed(what: &str) -> impl Fn(tokio_postgres::Error) -> TargetError + '_ {
    move |e| TargetError::Failed(format!("PostgreSQL: {what}: {}", pg_message(&e)))
}

/// A refusal while `what`: the pipeline or the target needs fixing.
fn refused(what: &str) -> impl Fn(tokio_postgres::Error) -> TargetError + '_ {
    move |e| TargetError::Refused(format!("PostgreSQL: {what}: {}", pg_message(&e)))
}

/// A JSON value as PostgreSQL text input (NULL stays NULL).
fn as_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(o) => match o.get("base64").and_then(|b| b.as_str()) {
            Some(b64) => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap_or_default();
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                Some(format!("\\x{hex}"))
            }
            None => Some(Value::Object(o.clone()).to_string()),
        },
        other => Some(other.to_string()),
    }
}

impl PostgresTarget {
    pub async fn open(url: &str, d: &Delivery) -> Result<(PostgresTarget, i64), TargetError> {
        let shown = flotilla_types::PipelineTarget::redacted(url);
        let connect = tokio_postgres::connect(url, NoTls);
        let (client, conn) = tokio::time::timeout(std::time::Duration::from_secs(10), connect)
            .await
            .map_err(|_| TargetError::Failed(format!("PostgreSQL at {shown}: no answer in 10 s")))?
            .map_err(|e| {
                TargetError::Failed(format!(
                    "cannot connect to PostgreSQL at {shown}: {}",
                    pg_message(&e)
                ))
            })?;
        let conn = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("PostgreSQL connection ended: {e}");
            }
        });
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {CURSORS} (
                    pipeline text PRIMARY KEY,
                    cluster_id text NOT NULL,
                    seq bigint NOT NULL,
                    lsn bigint NOT NULL,
                    updated_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await
            .map_err(refused("creating the cursor table"))?;
        // Cursor tables made before leader incarnations were recorded get the column.
        client
            .batch_execute(&format!(
                "ALTER TABLE {CURSORS} ADD COLUMN IF NOT EXISTS incarnation text"
            ))
            .await
            .map_err(refused("adding the incarnation to the cursor table"))?;
        let cursor_row = client
            .query_opt(
                &format!("SELECT cluster_id, seq, incarnation FROM {CURSORS} WHERE pipeline = $1"),
                &[&d.pipeline],
            )
            .await
            .map_err(failed("reading the cursor"))?;
        let cursor = match cursor_row {
            None => 0,
            Some(row) => {
                let cluster: String = row.get(0);
                if cluster != d.cluster_id {
                    return Err(TargetError::Refused(format!(
                        "PostgreSQL's cursor for pipeline {} belongs to cluster {cluster}, not \
                         this one ({}): two clusters would write one table; give the pipeline \
                         another name or delete that row of {CURSORS}",
                        d.pipeline, d.cluster_id
                    )));
                }
                let incarnation: Option<String> = row.get(2);
                super::target::check_incarnation(d, incarnation.as_deref(), "PostgreSQL")?;
                row.get(1)
            }
        };
        let table = ident(&d.table);
        let cols = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_attribute a WHERE a.attrelid = to_regclass($1) \
                 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&table],
            )
            .await
            .map_err(failed("reading the target table"))?;
        if cols.is_empty() {
            return Err(TargetError::Refused(format!(
                "PostgreSQL has no table {} (create it with the pipeline's columns: {})",
                d.table,
                d.columns.join(", ")
            )));
        }
        let types: HashMap<String, String> = cols
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get(1)))
            .collect();
        for c in &d.columns {
            if !types.contains_key(c) {
                return Err(TargetError::Refused(format!(
                    "PostgreSQL table {} has no column {c} (the pipeline delivers {})",
                    d.table,
                    d.columns.join(", ")
                )));
            }
        }
        let unique = client
            .query(
                "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL \
                 GROUP BY i.indexrelid",
                &[&table],
            )
            .await
            .map_err(failed("reading the target's keys"))?;
        let mut key_sorted = d.key.clone();
        key_sorted.sort();
        if !unique
            .iter()
            .any(|r| r.get::<_, Vec<String>>(0) == key_sorted)
        {
            return Err(TargetError::Refused(format!(
                "PostgreSQL table {} needs a PRIMARY KEY or UNIQUE constraint on ({}) to \
                 upsert and delete by key",
                d.table,
                d.key.join(", ")
            )));
        }
        let key_list: Vec<String> = d.key.iter().map(|k| ident(k)).collect();
        let key_cast: Vec<String> = d
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("u.c{i}::{}", types[k]))
            .collect();
        let key_params: Vec<String> = (1..=d.key.len()).map(|i| format!("${i}::text[]")).collect();
        let key_names: Vec<String> = (0..d.key.len()).map(|i| format!("c{i}")).collect();
        let delete = client
            .prepare_typed(
                &format!(
                    "DELETE FROM {table} WHERE ({}) IN (SELECT {} FROM unnest({}) AS u({}))",
                    key_list.join(", "),
                    key_cast.join(", "),
                    key_params.join(", "),
                    key_names.join(", ")
                ),
                &vec![Type::TEXT_ARRAY; d.key.len()],
            )
            .await
            .map_err(refused("preparing deletes"))?;
        let cursor_stmt = client
            .prepare_typed(
                &format!(
                    "INSERT INTO {CURSORS} (pipeline, cluster_id, seq, lsn, incarnation) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (pipeline) DO UPDATE SET seq = EXCLUDED.seq, lsn = EXCLUDED.lsn, \
                     incarnation = EXCLUDED.incarnation, updated_at = now() \
                     WHERE {CURSORS}.cluster_id = EXCLUDED.cluster_id \
                     AND ({CURSORS}.incarnation IS NULL \
                          OR {CURSORS}.incarnation = EXCLUDED.incarnation) \
                     AND {CURSORS}.seq < EXCLUDED.seq"
                ),
                &[Type::TEXT, Type::TEXT, Type::INT8, Type::INT8, Type::TEXT],
            )
            .await
            .map_err(refused("preparing the cursor update"))?;
        let apply = match &d.apply_sql {
            Some(sql) => Some(
                client
                    .prepare_typed(sql, &vec![Type::TEXT; d.columns.len() + 1])
                    .await
                    .map_err(refused("the pipeline's apply statement does not prepare"))?,
            ),
            None => None,
        };
        Ok((
            PostgresTarget {
                client,
                types,
                upserts: HashMap::new(),
                delete,
                cursor: cursor_stmt,
                apply,
                _conn: conn,
            },
            cursor,
        ))
    }

    async fn upsert_statement(
        &mut self,
        d: &Delivery,
        columns: &[String],
    ) -> Result<tokio_postgres::Statement, TargetError> {
        let cache_key = columns.join("\u{1}");
        if let Some(s) = self.upserts.get(&cache_key) {
            return Ok(s.clone());
        }
        for c in columns {
            if !self.types.contains_key(c) {
                return Err(TargetError::Refused(format!(
                    "PostgreSQL table {} has no column {c} (the source table changed: add the \
                     column there, or re-create the pipeline)",
                    d.table
                )));
            }
        }
        let names: Vec<String> = columns.iter().map(|c| ident(c)).collect();
        let casts: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("u.c{i}::{}", self.types[c]))
            .collect();
        let params: Vec<String> = (1..=columns.len())
            .map(|i| format!("${i}::text[]"))
            .collect();
        let aliases: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
        let updates: Vec<String> = columns
            .iter()
            .filter(|c| !d.key.contains(c))
            .map(|c| format!("{q} = EXCLUDED.{q}", q = ident(c)))
            .collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let key_list: Vec<String> = d.key.iter().map(|k| ident(k)).collect();
        let sql = format!(
            "INSERT INTO {} ({}) SELECT {} FROM unnest({}) AS u({}) ON CONFLICT ({}) {on_conflict}",
            ident(&d.table),
            names.join(", "),
            casts.join(", "),
            params.join(", "),
            aliases.join(", "),
            key_list.join(", "),
        );
        let stmt = self
            .client
            .prepare_typed(&sql, &vec![Type::TEXT_ARRAY; columns.len()])
            .await
            .map_err(refused("preparing upserts"))?;
        self.upserts.insert(cache_key, stmt.clone());
        Ok(stmt)
    }

    pub async fn deliver(&mut self, d: &Delivery, changes: &[Change]) -> Result<(), TargetError> {
        let Some(last) = changes.last() else {
            return Ok(());
        };
        let finals = collapse(changes, &d.key);
        // Upserts grouped by their column list (one group unless the source schema changed).
        let mut groups: Vec<(Vec<String>, Vec<&Change>)> = Vec::new();
        let mut deletes: Vec<&Change> = Vec::new();
        for c in finals {
            match c.op {
                ChangeOp::Delete => deletes.push(c),
                ChangeOp::Upsert => {
                    let cols: Vec<String> = c.row.keys().cloned().collect();
                    match groups.iter_mut().find(|g| g.0 == cols) {
                        Some(g) => g.1.push(c),
                        None => groups.push((cols, vec![c])),
                    }
                }
            }
        }
        let mut statements = Vec::new();
        for (cols, rows) in &groups {
            statements.push(self.upsert_statement(d, cols).await?);
            let _ = rows;
        }
        let tx = self
            .client
            .transaction()
            .await
            .map_err(failed("starting a transaction"))?;
        if !deletes.is_empty() {
            let arrays: Vec<Vec<Option<String>>> = d
                .key
                .iter()
                .map(|k| deletes.iter().map(|c| as_text(c.row.get(k))).collect())
                .collect();
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = arrays
                .iter()
                .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            tx.execute(&self.delete, &params)
                .await
                .map_err(failed("deleting rows"))?;
        }
        for ((cols, rows), stmt) in groups.iter().zip(&statements) {
            let arrays: Vec<Vec<Option<String>>> = cols
                .iter()
                .map(|k| rows.iter().map(|c| as_text(c.row.get(k))).collect())
                .collect();
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = arrays
                .iter()
                .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            tx.execute(stmt, &params)
                .await
                .map_err(failed("upserting rows"))?;
        }
        if let Some(apply) = &self.apply {
            for c in changes {
                let mut values: Vec<Option<String>> = vec![Some(
                    match c.op {
                        ChangeOp::Upsert => "upsert",
                        ChangeOp::Delete => "delete",
                    }
                    .to_string(),
                )];
                values.extend(d.columns.iter().map(|col| as_text(c.row.get(col))));
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
                    .iter()
                    .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                tx.execute(apply, &params)
                    .await
                    .map_err(failed("the pipeline's apply statement"))?;
            }
        }
        let moved = tx
            .execute(
                &self.cursor,
                &[
                    &d.pipeline,
                    &d.cluster_id,
                    &last.seq,
                    &(last.lsn as i64),
                    &d.incarnation,
                ],
            )
            .await
            .map_err(failed("advancing the cursor"))?;
        if moved != 1 {
            return Err(TargetError::Refused(format!(
                "PostgreSQL's cursor for pipeline {} is already past seq {} or belongs to \
                 another cluster or leader incarnation: another writer delivers this pipeline",
                d.pipeline, last.seq
            )));
        }
        tx.commit().await.map_err(failed("committing"))?;
        Ok(())
    }
}
