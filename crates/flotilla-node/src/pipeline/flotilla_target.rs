//! Delivery into another Flotilla cluster over its HTTP API: each batch is one `POST
//! /v1/execute` (one transaction there) holding the changes and the pipeline's cursor in the
//! target's `flotilla_pipeline_cursors` table.

use super::target::{collapse, Change, Delivery, TargetError};
use flotilla_store::changelog::ChangeOp;
use flotilla_store::quote_ident as ident;
use serde_json::{json, Value};

const CURSORS: &str = "flotilla_pipeline_cursors";

pub struct FlotillaTarget {
    http: reqwest::Client,
    /// The target's base URL, without credentials.
    url: String,
    /// A token for the target (given as the password of the target URL:
    /// `https://token:flt_…@host:port`).
    token: Option<String>,
}

impl FlotillaTarget {
    async fn call(&self, path: &str, body: Value) -> Result<Value, TargetError> {
        let url = format!("{}{path}", self.url);
        let req = if body.is_null() {
            self.http.get(&url)
        } else {
            self.http.post(&url).json(&body)
        };
        let mut req = req.timeout(std::time::Duration::from_secs(30));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| {
            TargetError::Failed(format!(
                "Flotilla at {}: {}",
                self.url,
                crate::peer::error_chain(&e)
            ))
        })?;
        let status = resp.status();
        if status.is_redirection() {
            // Not followed: the allow-list checked this URL, not wherever it points.
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(super::target::short_reason)
                .unwrap_or_default();
            return Err(TargetError::Refused(format!(
                "Flotilla at {} answered with a redirect ({status}) to {to:?}; pipelines do \
                 not follow redirects: give the target's own URL",
                self.url
            )));
        }
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        // The target's own message if it is a Flotilla answer, kept short; nothing else of it.
        let msg = v["error"]["message"]
            .as_str()
            .map(super::target::short_reason)
            .unwrap_or_else(|| format!("HTTP {status}"));
        // A follower names its leader: delivery goes on there once it is the target.
        if status.as_u16() == 421 || status.is_server_error() {
            Err(TargetError::Failed(format!(
                "Flotilla at {}: {msg}",
                self.url
            )))
        } else {
            Err(TargetError::Refused(format!(
                "Flotilla at {}: {msg}",
                self.url
            )))
        }
    }

    async fn execute(&self, statements: Vec<Value>) -> Result<Value, TargetError> {
        self.call("/v1/execute", json!({ "statements": statements }))
            .await
    }

    async fn query(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Vec<Value>>, TargetError> {
        let v = self
            .call("/v1/query", json!({ "sql": sql, "params": params }))
            .await?;
        Ok(v["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| r.as_array().cloned().unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn open(
        url: &str,
        d: &Delivery,
        http: &reqwest::Client,
    ) -> Result<(FlotillaTarget, i64), TargetError> {
        let mut parsed = reqwest::Url::parse(url)
            .map_err(|e| TargetError::Refused(format!("target URL: {e}")))?;
        let token = parsed.password().map(str::to_string);
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        let t = FlotillaTarget {
            http: http.clone(),
            url: parsed.as_str().trim_end_matches('/').to_string(),
            token,
        };
        // Delivering into its own cluster writes the tables the pipeline captures from: each
        // delivery would be captured again, for ever.
        let status = t.call("/v1/status", Value::Null).await?;
        if status["cluster_id"].as_str() == Some(d.cluster_id.as_str()) {
            return Err(TargetError::Refused(format!(
                "the target Flotilla at {} is this cluster ({}): a pipeline into its own \
                 cluster would capture its own deliveries; copy within a cluster with SQL \
                 (a trigger or INSERT ... SELECT)",
                t.url, d.cluster_id
            )));
        }
        t.execute(vec![json!({ "sql": format!(
            "CREATE TABLE IF NOT EXISTS {CURSORS} (pipeline TEXT PRIMARY KEY, \
             cluster_id TEXT NOT NULL, seq INTEGER NOT NULL, lsn INTEGER NOT NULL, \
             incarnation TEXT)"
        ) })])
        .await?;
        // Cursor tables made before leader incarnations were recorded get the column.
        let has_incarnation = !t
            .query(
                &format!("SELECT 1 FROM pragma_table_info('{CURSORS}') WHERE name = 'incarnation'"),
                vec![],
            )
            .await?
            .is_empty();
        if !has_incarnation {
            t.execute(vec![json!({ "sql": format!(
                "ALTER TABLE {CURSORS} ADD COLUMN incarnation TEXT"
            ) })])
            .await?;
        }
        let cursor = match t
            .query(
                &format!("SELECT cluster_id, seq, incarnation FROM {CURSORS} WHERE pipeline = ?1"),
                vec![json!(d.pipeline)],
            )
            .await?
            .first()
        {
            None => 0,
            Some(row) => {
                if row.first().and_then(|c| c.as_str()) != Some(d.cluster_id.as_str()) {
                    return Err(TargetError::Refused(format!(
                        "the target's cursor for pipeline {} belongs to another cluster ({}): \
                         two clusters would write one table; give the pipeline another name",
                        d.pipeline,
                        row.first().cloned().unwrap_or_default()
                    )));
                }
                super::target::check_incarnation(
                    d,
                    row.get(2).and_then(|v| v.as_str()),
                    "the target Flotilla",
                )?;
                row.get(1).and_then(|s| s.as_i64()).unwrap_or(0)
            }
        };
        let cols: Vec<String> = t
            .query(
                "SELECT name FROM pragma_table_info(?1)",
                vec![json!(d.table)],
            )
            .await?
            .into_iter()
            .filter_map(|r| r.first().and_then(|v| v.as_str()).map(str::to_string))
            .collect();
        if cols.is_empty() {
            return Err(TargetError::Refused(format!(
                "the target Flotilla has no table {} (create it with the pipeline's columns: {})",
                d.table,
                d.columns.join(", ")
            )));
        }
        for c in &d.columns {
            if !cols.iter().any(|x| x.eq_ignore_ascii_case(c)) {
                return Err(TargetError::Refused(format!(
                    "the target Flotilla's table {} has no column {c}",
                    d.table
                )));
            }
        }
        Ok((t, cursor))
    }

    pub async fn deliver(&mut self, d: &Delivery, changes: &[Change]) -> Result<(), TargetError> {
        let Some(last) = changes.last() else {
            return Ok(());
        };
        let table = ident(&d.table);
        let mut statements = Vec::new();
        for c in collapse(changes, &d.key) {
            match c.op {
                ChangeOp::Delete => {
                    let conds: Vec<String> = d
                        .key
                        .iter()
                        .enumerate()
                        .map(|(i, k)| format!("{} IS ?{}", ident(k), i + 1))
                        .collect();
                    let params: Vec<Value> = d
                        .key
                        .iter()
                        .map(|k| c.row.get(k).cloned().unwrap_or(Value::Null))
                        .collect();
                    statements.push(json!({
                        "sql": format!("DELETE FROM {table} WHERE {}", conds.join(" AND ")),
                        "params": params,
                    }));
                }
                ChangeOp::Upsert => {
                    let cols: Vec<&String> = c.row.keys().collect();
                    let names: Vec<String> = cols.iter().map(|k| ident(k)).collect();
                    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
                    let updates: Vec<String> = cols
                        .iter()
                        .filter(|k| !d.key.contains(k))
                        .map(|k| format!("{q} = excluded.{q}", q = ident(k)))
                        .collect();
                    let keys: Vec<String> = d.key.iter().map(|k| ident(k)).collect();
                    let conflict = if updates.is_empty() {
                        "DO NOTHING".to_string()
                    } else {
                        format!("DO UPDATE SET {}", updates.join(", "))
                    };
                    statements.push(json!({
                        "sql": format!(
                            "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({}) {conflict}",
                            names.join(", "), marks.join(", "), keys.join(", ")
                        ),
                        "params": c.row.values().cloned().collect::<Vec<_>>(),
                    }));
                }
            }
        }
        if let Some(sql) = &d.apply_sql {
            for c in changes {
                let mut params = vec![json!(match c.op {
                    ChangeOp::Upsert => "upsert",
                    ChangeOp::Delete => "delete",
                })];
                params.extend(
                    d.columns
                        .iter()
                        .map(|col| c.row.get(col).cloned().unwrap_or(Value::Null)),
                );
                statements.push(json!({ "sql": sql, "params": params }));
            }
        }
        // The cursor only moves forward and only for this cluster and leader incarnation:
        // otherwise seq becomes NULL, the NOT NULL constraint fails, and the whole transaction
        // rolls back.
        statements.push(json!({
            "sql": format!(
                "INSERT INTO {CURSORS} (pipeline, cluster_id, seq, lsn, incarnation) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (pipeline) DO UPDATE SET lsn = excluded.lsn, \
                 incarnation = excluded.incarnation, seq = CASE \
                 WHEN cluster_id = excluded.cluster_id \
                 AND (incarnation IS NULL OR incarnation = excluded.incarnation) \
                 AND seq < excluded.seq THEN excluded.seq END"
            ),
            "params": [d.pipeline, d.cluster_id, last.seq, last.lsn, d.incarnation],
        }));
        self.execute(statements).await.map(|_| ())
    }
}
