//! The device sync protocol (`POST /v1/sync`, docs/devices.md): what a device sends and what
//! the server answers, as JSON. Shared by the server and the device crate so the two never
//! disagree on a field. Versioned: `protocol` is [`SYNC_PROTOCOL_VERSION`]; a server refuses
//! another version with the versions it speaks.
//!
//! Values travel as the API writes them: JSON null, numbers, strings; BLOBs as
//! `{"base64": "…"}` (or `{"hex": "…"}`, what a SQLite trigger can write), text that is not
//! UTF-8 as `{"text_base64": "…"}`, infinite reals as `{"real": "inf"}` / `"-inf"`.

use crate::SqlValue;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;

pub const SYNC_PROTOCOL_VERSION: u32 = 1;

/// A row (or a key) by column name.
pub type JsonRow = Map<String, Json>;

/// A version vector as JSON: origin → position of its newest transaction.
pub type JsonVersionVector = BTreeMap<String, u64>;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    pub protocol: u32,
    /// The origin the server gave this local database at its first sync (`None`: this is the
    /// first sync of a fresh local database, and the server gives it one).
    #[serde(default)]
    pub origin: Option<String>,
    /// The version vectors the pushed transactions depend on, by an id the device chose
    /// (each is the server's vector as of one of the device's pulls: sent once, not per
    /// transaction).
    #[serde(default)]
    pub deps: BTreeMap<String, JsonVersionVector>,
    /// The device's transactions the server has not acknowledged, in order.
    #[serde(default)]
    pub push: Vec<PushTransaction>,
    /// What to pull after the push (`None`: push only).
    #[serde(default)]
    pub pull: Option<PullRequest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushTransaction {
    /// The transaction's number in its origin: 1, 2, 3… without gaps.
    pub seq: u64,
    /// The device's hybrid logical clock when it committed (see `Hlc`).
    pub hlc: u64,
    /// Which of the request's `deps` it was made on.
    pub deps: String,
    pub changes: Vec<PushChange>,
    /// Edits of collaborative documents made in the same transaction (after its row changes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub docs: Vec<DocUpdate>,
}

/// An update of a collaborative document (docs/collab.md): the row's `column` of `table`
/// whose key is `key`. Merged, never a conflict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DocUpdate {
    pub table: String,
    /// The row's key, by column name.
    pub key: JsonRow,
    pub column: String,
    /// A Yjs update (format v1), base64.
    pub update: String,
}

impl DocUpdate {
    pub fn new(table: &str, key: JsonRow, column: &str, update: &[u8]) -> DocUpdate {
        DocUpdate {
            table: table.to_string(),
            key,
            column: column.to_string(),
            update: B64.encode(update),
        }
    }

    /// The update's bytes, or why they are not base64.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        B64.decode(&self.update).map_err(|e| {
            format!(
                "the update of document {}.{} is not base64: {e}",
                self.table, self.column
            )
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushChange {
    pub table: String,
    /// `insert`, `update` or `delete`.
    pub op: String,
    /// The row before (update, delete), by column name.
    #[serde(default)]
    pub before: Option<JsonRow>,
    /// The row after (insert, update), by column name.
    #[serde(default)]
    pub after: Option<JsonRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// The server position the device has everything of its shape through (`None`: nothing
    /// yet, send the whole shape).
    #[serde(default)]
    pub cursor: Option<String>,
    /// The digest of the shapes the device's rows were pulled under (`None` with no cursor);
    /// when the server's differ, the whole shape is sent again.
    #[serde(default)]
    pub shapes: Option<String>,
    /// At most this many row changes in the answer (the server's bound applies too).
    #[serde(default)]
    pub max_changes: Option<u32>,
    /// The device keeps collaborative documents: send their updates (`PullItem::Doc`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub documents: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncResponse {
    pub protocol: u32,
    /// The device's origin (given at its first sync; the same afterwards).
    pub origin: String,
    /// The data centre the server is.
    pub server: String,
    /// The server has every transaction of this origin through this one (pushed now or
    /// before): the device may forget them.
    pub acknowledged: u64,
    #[serde(default)]
    pub pull: Option<PullResponse>,
    /// The largest request body the server takes (a device sizes its pushes to it).
    #[serde(default)]
    pub max_request_bytes: Option<u64>,
    /// The user and the device the token was made for (`flotilla device add NAME --user U`):
    /// what `:user` and `:device` are in the device's shape.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullResponse {
    /// The device has everything of its shape through this server position once it applied
    /// `items`: its next cursor.
    pub cursor: String,
    /// More changes wait after `cursor`: pull again.
    pub more: bool,
    /// `items` are the whole shape, not changes: the device drops its tables of the shape
    /// and takes these (then replays what it has not pushed).
    pub reset: bool,
    /// The digest of the shapes these items were chosen by (for the next pull).
    pub shapes: String,
    /// The shape's tables and the columns a device may write.
    pub tables: Vec<ShapeTable>,
    /// The server's version vector at `cursor` (what the device's next transactions depend
    /// on); `None` when the cursor did not move.
    #[serde(default)]
    pub vv: Option<JsonVersionVector>,
    /// The server's hybrid logical clock (the device's clock keeps ahead of it).
    pub hlc: u64,
    pub items: Vec<PullItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShapeTable {
    pub table: String,
    /// The columns of the shape, in the table's order (the key's among them).
    pub columns: Vec<String>,
    pub key: Vec<String>,
    /// Its collaborative text columns (docs/collab.md), to a device that keeps documents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub documents: Vec<String>,
}

/// One thing for the device to apply, in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PullItem {
    /// Run this schema statement (a table of the shape was created or altered, or an index
    /// on one).
    Schema { table: String, sql: String },
    /// The row is now this (shape columns only): insert it or replace the columns given.
    Upsert { table: String, row: JsonRow },
    /// The row with this key left the shape or was deleted.
    Delete { table: String, key: JsonRow },
    /// A conflict the server recorded on a row of the device's shape (a row of
    /// `flotilla_conflicts`, by column name), new or changed.
    Conflict { row: JsonRow },
    /// Merge this update into a collaborative document of a row of the shape (sent to a
    /// device that asked for `documents`).
    Doc(DocUpdate),
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A value as the protocol writes it.
pub fn value_to_json(v: &SqlValue) -> Json {
    match v {
        SqlValue::Null => Json::Null,
        SqlValue::Integer(i) => Json::from(*i),
        SqlValue::Real(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .unwrap_or_else(|| {
                // JSON has no infinities: `{"real": "inf"}` (SQLite stores no NaN).
                let mut m = Map::new();
                let text = if f.is_nan() {
                    "nan"
                } else if *f > 0.0 {
                    "inf"
                } else {
                    "-inf"
                };
                m.insert("real".into(), Json::String(text.into()));
                Json::Object(m)
            }),
        SqlValue::Text(s) => Json::String(s.clone()),
        SqlValue::TextBytes(b) => {
            let mut m = Map::new();
            m.insert("text_base64".into(), Json::String(B64.encode(b)));
            Json::Object(m)
        }
        SqlValue::Blob(b) => {
            let mut m = Map::new();
            m.insert("base64".into(), Json::String(B64.encode(b)));
            Json::Object(m)
        }
    }
}

/// A value the protocol carries, or why it is not one.
pub fn value_from_json(v: &Json) -> Result<SqlValue, String> {
    Ok(match v {
        Json::Null => SqlValue::Null,
        Json::Bool(b) => {
            return Err(format!(
                "{b} is not a value: SQLite has no booleans (send 1 or 0)"
            ))
        }
        Json::Number(n) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(
                n.as_f64()
                    .ok_or_else(|| format!("{n} is not a SQLite number"))?,
            ),
        },
        Json::String(s) => SqlValue::Text(s.clone()),
        Json::Object(m) if m.len() == 1 => {
            let (k, inner) = m.iter().next().expect("one entry");
            let Json::String(text) = inner else {
                return Err(format!("{{\"{k}\": …}} must hold a string"));
            };
            match k.as_str() {
                "base64" => SqlValue::Blob(
                    B64.decode(text)
                        .map_err(|e| format!("{{\"base64\"}} is not base64: {e}"))?,
                ),
                "text_base64" => {
                    let bytes = B64
                        .decode(text)
                        .map_err(|e| format!("{{\"text_base64\"}} is not base64: {e}"))?;
                    match String::from_utf8(bytes) {
                        Ok(s) => SqlValue::Text(s),
                        Err(e) => SqlValue::TextBytes(e.into_bytes()),
                    }
                }
                "hex" => SqlValue::Blob(hex_bytes(text)?),
                "real" => SqlValue::Real(match text.as_str() {
                    "inf" => f64::INFINITY,
                    "-inf" => f64::NEG_INFINITY,
                    "nan" => f64::NAN,
                    other => {
                        return Err(format!(
                            "{{\"real\": {other:?}}}: expected \"inf\", \"-inf\" or \"nan\""
                        ))
                    }
                }),
                other => {
                    return Err(format!(
                        "{{\"{other}\": …}} is not a value (BLOBs are {{\"base64\": …}} or {{\"hex\": …}})"
                    ))
                }
            }
        }
        other => return Err(format!("{other} is not a value")),
    })
}

fn hex_bytes(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err("{\"hex\"} has an odd number of digits".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("{{\"hex\"}} holds a non-hex digit near {i}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_hex_blobs_are_read() {
        for v in [
            SqlValue::Null,
            SqlValue::Integer(-7),
            SqlValue::Real(1.5),
            SqlValue::Text("héllo".into()),
            SqlValue::Blob(vec![0, 255, 16]),
            SqlValue::TextBytes(vec![0xff, 0x41]),
            SqlValue::Real(f64::INFINITY),
            SqlValue::Real(f64::NEG_INFINITY),
        ] {
            assert_eq!(value_from_json(&value_to_json(&v)).unwrap(), v);
        }
        let hex: Json = serde_json::json!({"hex": "00FF10"});
        assert_eq!(
            value_from_json(&hex).unwrap(),
            SqlValue::Blob(vec![0, 255, 16])
        );
        assert!(value_from_json(&serde_json::json!({"hex": "0g"})).is_err());
        assert!(value_from_json(&serde_json::json!([1])).is_err());
        assert!(value_from_json(&serde_json::json!({"blob": "x"})).is_err());
        assert!(value_from_json(&serde_json::json!(true)).is_err());
        assert!(value_from_json(&serde_json::json!({"real": "huge"})).is_err());
    }
}
