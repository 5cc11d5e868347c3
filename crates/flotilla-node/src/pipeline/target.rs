//! Where a pipeline delivers: PostgreSQL, another Flotilla, or an NDJSON file. Every target
//! keeps the pipeline's cursor itself, written in the same transaction (or the same flushed
//! write) as the changes, which makes delivery exactly-once across crashes.

use super::file_target::FileTarget;
use super::flotilla_target::FlotillaTarget;
use super::postgres_target::PostgresTarget;
use flotilla_store::changelog::{ChangeOp, ChangelogEntry};
use flotilla_store::TriggerPlan;
use flotilla_types::{PipelineSpec, PipelineTarget};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The target cannot take this pipeline as defined (no such table or column, no key
    /// constraint, a cursor of another cluster): fixing needs a person.
    #[error("{0}")]
    Refused(String),
    /// Unreachable, timed out, rejected a batch: retried.
    #[error("{0}")]
    Failed(String),
}

/// The pipeline as a target sees it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub pipeline: String,
    pub cluster_id: String,
    /// The leader incarnation delivering: a target's cursor written by another incarnation (a
    /// copy of a data directory started as a leader, whose history may differ) is refused.
    pub incarnation: String,
    pub table: String,
    /// Target column names in delivery order, and which are the key.
    pub columns: Vec<String>,
    pub key: Vec<String>,
    pub apply_sql: Option<String>,
}

impl Delivery {
    pub fn new(
        spec: &PipelineSpec,
        plan: &TriggerPlan,
        cluster_id: &str,
        incarnation: &str,
    ) -> Delivery {
        Delivery {
            pipeline: spec.name.clone(),
            cluster_id: cluster_id.to_string(),
            incarnation: incarnation.to_string(),
            table: spec.target_table().to_string(),
            columns: plan.output.iter().map(|o| o.target_name.clone()).collect(),
            key: plan
                .output
                .iter()
                .filter(|o| o.is_key)
                .map(|o| o.target_name.clone())
                .collect(),
            apply_sql: spec.apply_sql.clone(),
        }
    }
}

/// One change, decoded.
#[derive(Debug, Clone)]
pub struct Change {
    pub seq: i64,
    pub lsn: u64,
    pub op: ChangeOp,
    /// Target column → value; blobs as `{"base64": …}` (as the API writes them).
    pub row: Map<String, Value>,
    /// The row as the changelog holds it (JSON text, columns in delivery order).
    pub raw: String,
}

impl Change {
    pub fn decode(e: &ChangelogEntry) -> Result<Change, TargetError> {
        let mut row: Map<String, Value> = serde_json::from_str(&e.data).map_err(|err| {
            TargetError::Refused(format!("changelog row {} is unreadable: {err}", e.seq))
        })?;
        for v in row.values_mut() {
            if let Value::Object(o) = v {
                if let Some(Value::String(hex)) = o.get("$hex") {
                    *v = serde_json::json!({ "base64": hex_to_base64(hex) });
                }
            }
        }
        Ok(Change {
            seq: e.seq,
            lsn: e.lsn,
            op: e.op,
            row,
            raw: e.data.clone(),
        })
    }

    /// The key as one comparable string.
    pub fn key_string(&self, key: &[String]) -> String {
        let k: Vec<&Value> = key
            .iter()
            .map(|c| self.row.get(c).unwrap_or(&Value::Null))
            .collect();
        serde_json::to_string(&k).expect("json")
    }
}

fn hex_to_base64(hex: &str) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Checks the incarnation recorded with a target's cursor (`None`: written before incarnations
/// were recorded, adopted).
pub fn check_incarnation(
    d: &Delivery,
    stored: Option<&str>,
    target: &str,
) -> Result<(), TargetError> {
    match stored {
        Some(i) if !i.is_empty() && i != d.incarnation => Err(TargetError::Refused(format!(
            "{target}: the cursor of pipeline {} was written by leader incarnation {i} of this \
             cluster, and this leader is incarnation {} (a copy of a data directory started as \
             a leader?): its changes may not continue what the target holds. Remove and add \
             the pipeline again to send a full copy, or delete the target's cursor row to \
             continue from this leader's changes",
            d.pipeline, d.incarnation
        ))),
        _ => Ok(()),
    }
}

/// The last change of each key, in first-seen order of the keys: a batch applied as one target
/// transaction needs only each key's final state (an upsert carries the full row, a delete
/// the key).
pub fn collapse<'a>(changes: &'a [Change], key: &[String]) -> Vec<&'a Change> {
    let mut last: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut order = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        let k = c.key_string(key);
        if last.insert(k.clone(), i).is_none() {
            order.push(k);
        }
    }
    order.into_iter().map(|k| &changes[last[&k]]).collect()
}

pub enum Target {
    Postgres(Box<PostgresTarget>),
    Flotilla(FlotillaTarget),
    File(FileTarget),
}

impl Target {
    /// Connects, checks the target can take the pipeline, and returns it with the cursor it
    /// holds (0: nothing delivered yet).
    pub async fn open(
        spec: &PipelineSpec,
        d: &Delivery,
        allow: &[super::allow::Allowed],
        http: &reqwest::Client,
    ) -> Result<(Target, i64), TargetError> {
        // Checked at every open: the operator may have narrowed the list since.
        super::allow::check(&spec.target, allow).map_err(|e| TargetError::Refused(e.0))?;
        match PipelineTarget::parse(&spec.target).map_err(|e| TargetError::Refused(e.0))? {
            PipelineTarget::Postgres(url) => {
                let (t, cursor) = PostgresTarget::open(&url, d).await?;
                Ok((Target::Postgres(Box::new(t)), cursor))
            }
            PipelineTarget::Flotilla(url) => {
                let (t, cursor) = FlotillaTarget::open(&url, d, http).await?;
                Ok((Target::Flotilla(t), cursor))
            }
            PipelineTarget::File(path) => {
                let (t, cursor) = FileTarget::open(Some(path), d)?;
                Ok((Target::File(t), cursor))
            }
            PipelineTarget::Stdout => {
                let (t, cursor) = FileTarget::open(None, d)?;
                Ok((Target::File(t), cursor))
            }
        }
    }

    /// Applies `changes` (whole source transactions, in order) and advances the cursor to the
    /// last one's seq, atomically.
    pub async fn deliver(&mut self, d: &Delivery, changes: &[Change]) -> Result<(), TargetError> {
        match self {
            Target::Postgres(t) => t.deliver(d, changes).await,
            Target::Flotilla(t) => t.deliver(d, changes).await,
            Target::File(t) => t.deliver(d, changes),
        }
    }
}

/// Checks, when a pipeline is added, what can be known then: the target is reachable and has
/// the table and columns the pipeline delivers.
pub async fn check_target(
    spec: &PipelineSpec,
    d: &Delivery,
    allow: &[super::allow::Allowed],
    http: &reqwest::Client,
) -> Result<(), TargetError> {
    Target::open(spec, d, allow, http).await.map(|_| ())
}

/// A remote system's own words, kept short: enough to act on, never a page of its output.
pub fn short_reason(text: &str) -> String {
    const MAX: usize = 300;
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}
