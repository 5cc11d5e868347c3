//! The decoders of request bodies, as plain functions of bytes: the handlers call them, and a
//! fuzz target (`fuzz/fuzz_targets/decode_http_requests.rs`) throws arbitrary bytes at them.
//! None may panic; every refusal names what is wrong.

use super::values::from_raw_json;
use super::ApiError;
use flotilla_store::Params;
use flotilla_types::Position;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Parses a JSON body into `T`, saying whether it is malformed or merely not what is expected.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "malformed JSON"
            }
            _ => "invalid request",
        };
        ApiError::bad_request("bad_request", format!("{kind}: {e}"))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteBody {
    statements: Vec<StatementBody>,
    #[serde(default)]
    idempotency_key: Option<String>,
    /// A time limit below the node's (`limits.write-timeout-ms`).
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    associative: bool,
    /// On a follower: send the request to the leader instead of answering 421.
    #[serde(default)]
    forward: Option<bool>,
    /// The copies to wait for (`None`: the node's `durability.default`).
    #[serde(default)]
    durability: Option<flotilla_types::Durability>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatementBody {
    sql: String,
    /// As written: a list, or an object of named values; integers are checked against
    /// SQLite's range before any rounding.
    #[serde(default)]
    params: Option<Box<RawValue>>,
}

/// A `POST /v1/execute` request, checked.
#[derive(Debug)]
pub struct ExecuteRequest {
    pub statements: Vec<(String, Params)>,
    pub idempotency_key: Option<String>,
    /// The statements' time limit (the node's, or less if asked).
    pub timeout_ms: u64,
    /// Rows as objects keyed by column name instead of lists.
    pub associative: bool,
    /// What the client asked about forwarding from a follower (`None`: the node's setting).
    pub forward: Option<bool>,
    /// The copies to wait for (`None`: the node's default).
    pub durability: Option<flotilla_types::Durability>,
}

/// A statement's `"params"`: a list binds by position, an object by name.
fn decode_params(raw: Option<&RawValue>) -> Result<Params, String> {
    let Some(raw) = raw else {
        return Ok(Params::default());
    };
    let text = raw.get().trim_start();
    if text.starts_with('{') {
        let named: std::collections::BTreeMap<String, Box<RawValue>> =
            serde_json::from_str(raw.get()).map_err(|e| format!("params: {e}"))?;
        let mut out = Vec::with_capacity(named.len());
        for (i, (name, v)) in named.into_iter().enumerate() {
            if name.is_empty() {
                return Err("params: a parameter name is empty".into());
            }
            let value =
                from_raw_json(i, &v).map_err(|e| format!("parameter {name:?}: {}", e.detail))?;
            out.push((name, value));
        }
        Ok(Params::Named(out))
    } else if text.starts_with('[') {
        let list: Vec<Box<RawValue>> =
            serde_json::from_str(raw.get()).map_err(|e| format!("params: {e}"))?;
        list.iter()
            .enumerate()
            .map(|(j, v)| from_raw_json(j, v))
            .collect::<Result<Vec<_>, _>>()
            .map(Params::Positional)
            .map_err(|e| e.to_string())
    } else if text == "null" {
        Ok(Params::default())
    } else {
        Err(
            "\"params\" must be a list (for ? parameters) or an object (for :name, @name, \
             $name)"
                .into(),
        )
    }
}

pub fn decode_execute(raw: &[u8], node_limit_ms: u64) -> Result<ExecuteRequest, ApiError> {
    let req: ExecuteBody = decode_json(raw)?;
    if req.statements.is_empty() {
        return Err(ApiError::bad_request(
            "bad_request",
            "\"statements\" is empty: give at least one statement",
        ));
    }
    if let Some(k) = &req.idempotency_key {
        if k.is_empty() || k.len() > 256 {
            return Err(ApiError::bad_request(
                "bad_request",
                "\"idempotency_key\" must be 1 to 256 characters",
            ));
        }
    }
    let timeout_ms = request_timeout_ms(req.timeout_ms, node_limit_ms)?;
    let mut statements = Vec::with_capacity(req.statements.len());
    for (i, s) in req.statements.into_iter().enumerate() {
        let params = decode_params(s.params.as_deref()).map_err(|e| {
            ApiError::bad_request("bad_request", format!("statement {i}: {e}")).with("statement", i)
        })?;
        statements.push((s.sql, params));
    }
    Ok(ExecuteRequest {
        statements,
        idempotency_key: req.idempotency_key,
        timeout_ms,
        associative: req.associative,
        forward: req.forward,
        durability: req.durability,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    sql: String,
    #[serde(default)]
    params: Option<Box<RawValue>>,
    #[serde(default)]
    min_position: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    associative: bool,
    #[serde(default)]
    consistency: Option<String>,
    #[serde(default)]
    max_lag_ms: Option<u64>,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// What this node holds (after `min_position`, if given).
    #[default]
    Local,
    /// Everything any client was told was committed before the read began: the cluster
    /// confirms its leader still leads (Raft's ReadIndex), and this member applies that far.
    Linearizable,
}

/// A `POST /v1/query` request, checked.
#[derive(Debug)]
pub struct QueryRequest {
    pub sql: String,
    pub params: Params,
    /// Rows as objects keyed by column name instead of lists.
    pub associative: bool,
    pub min_position: Option<Position>,
    pub consistency: Consistency,
    /// Refuse the read on a replica that may be further behind its leader than this.
    pub max_lag_ms: Option<u64>,
    /// How long to wait for the position and a reader.
    pub wait_ms: u64,
    /// How long the statement may run.
    pub run_ms: u64,
}

pub fn decode_query(raw: &[u8], node_limit_ms: u64) -> Result<QueryRequest, ApiError> {
    let req: QueryBody = decode_json(raw)?;
    let params = decode_params(req.params.as_deref())
        .map_err(|e| ApiError::bad_request("bad_request", e))?;
    let min_position = match &req.min_position {
        None => None,
        Some(text) => Some(
            text.parse()
                .map_err(|e: flotilla_types::PositionParseError| {
                    ApiError::bad_request("bad_request", format!("min_position: {e}"))
                })?,
        ),
    };
    let consistency = match req.consistency.as_deref() {
        None | Some("local") => Consistency::Local,
        Some("linearizable") => Consistency::Linearizable,
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_request",
                format!("consistency: {other:?} is not one of \"local\", \"linearizable\""),
            ))
        }
    };
    Ok(QueryRequest {
        run_ms: request_timeout_ms(req.timeout_ms, node_limit_ms)?,
        consistency,
        max_lag_ms: req.max_lag_ms,
        wait_ms: req.timeout_ms.unwrap_or(5_000).min(600_000),
        sql: req.sql,
        params,
        associative: req.associative,
        min_position,
    })
}

/// The time limit of a request: the node's, or less if the request asks for less.
pub fn request_timeout_ms(asked: Option<u64>, node_limit_ms: u64) -> Result<u64, ApiError> {
    match asked {
        None => Ok(node_limit_ms),
        Some(0) => Err(ApiError::bad_request(
            "bad_request",
            "\"timeout_ms\" must be at least 1",
        )),
        Some(ms) => Ok(ms.min(node_limit_ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The short version of the fuzz target: arbitrary bytes, and arbitrary JSON-ish text,
        /// never panic a decoder.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400),
                                text in r#"[{}\[\]":,0-9a-z_ .eE+-]{0,200}"#) {
            for input in [bytes.as_slice(), text.as_bytes()] {
                let _ = decode_execute(input, 1000);
                let _ = decode_query(input, 1000);
            }
        }
    }

    #[test]
    fn valid_requests_decode() {
        let e = decode_execute(
            br#"{"statements": [{"sql": "SELECT ?", "params": [1, 2.5, "x", null, {"base64": "AA=="}]}], "timeout_ms": 99999}"#,
            1000,
        )
        .unwrap();
        assert_eq!(e.timeout_ms, 1000);
        assert_eq!(e.statements[0].1.len(), 5);
        let named = decode_execute(
            br#"{"statements": [{"sql": "SELECT :a", "params": {"a": 9223372036854775807}}], "associative": true}"#,
            1000,
        )
        .unwrap();
        assert!(named.associative);
        assert_eq!(
            named.statements[0].1,
            Params::Named(vec![(
                "a".into(),
                rusqlite::types::Value::Integer(i64::MAX)
            )])
        );
        let e = decode_execute(
            br#"{"statements": [{"sql": "SELECT :a", "params": {"a": 9223372036854775808}}]}"#,
            1000,
        )
        .unwrap_err();
        assert!(
            e.message.contains("parameter \"a\"") && e.message.contains("64-bit"),
            "{}",
            e.message
        );
        let e = decode_execute(
            br#"{"statements": [{"sql": "SELECT 1", "params": 5}]}"#,
            1000,
        )
        .unwrap_err();
        assert!(e.message.contains("must be a list"), "{}", e.message);
        let q = decode_query(
            br#"{"sql": "SELECT 1", "min_position": "1/5", "timeout_ms": 20}"#,
            1000,
        )
        .unwrap();
        assert_eq!(q.min_position, Some(Position::new(1, 5)));
        assert_eq!((q.wait_ms, q.run_ms), (20, 20));
        assert!(decode_query(br#"{"sql": "x", "timeout_ms": 0}"#, 1000).is_err());
        let q = decode_query(
            br#"{"sql": "SELECT 1", "consistency": "linearizable", "max_lag_ms": 250}"#,
            1000,
        )
        .unwrap();
        assert_eq!(
            (q.consistency, q.max_lag_ms),
            (Consistency::Linearizable, Some(250))
        );
        let e = decode_query(br#"{"sql": "SELECT 1", "consistency": "strong"}"#, 1000).unwrap_err();
        assert!(
            e.message.contains("\"strong\" is not one of"),
            "{}",
            e.message
        );
    }
}
