//! SQLite values as JSON: integers and reals are numbers, text is a string, NULL is null,
//! BLOBs are `{"base64": "..."}` (accepted the same way in parameters), text that is not UTF-8
//! is `{"text_base64": "..."}`.

use base64::Engine;
use rusqlite::types::{Value, ValueRef};
use serde_json::{json, Value as Json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A parameter that is not a SQLite value: which one (0-based) and why.
#[derive(Debug, thiserror::Error)]
#[error("parameter {index}: {detail}")]
pub struct ParamError {
    pub index: usize,
    pub detail: String,
}

fn bad(index: usize, detail: String) -> ParamError {
    ParamError { index, detail }
}

/// How rows are answered: lists in column order (the default), or objects keyed by column name
/// (`"associative": true`; of columns with the same name, the last one's value is kept).
#[derive(Debug, Clone, Copy, Default)]
pub struct RowShape {
    pub associative: bool,
}

impl RowShape {
    pub fn row(&self, columns: &[String], values: Vec<Json>) -> Json {
        if self.associative {
            Json::Object(columns.iter().cloned().zip(values).collect())
        } else {
            Json::Array(values)
        }
    }

    /// A statement's result from `/v1/execute`: its counts and, for a statement with result
    /// columns (`RETURNING`, a query), its columns and rows.
    pub fn statement_result(&self, r: &flotilla_store::StatementResult) -> Json {
        let mut out = json!({
            "rows_affected": r.rows_affected,
            "last_insert_rowid": r.last_insert_rowid,
        });
        if let Some(returned) = &r.returned {
            out["columns"] = json!(returned.columns);
            out["rows"] = Json::Array(
                returned
                    .rows
                    .iter()
                    .map(|row| {
                        self.row(
                            &returned.columns,
                            row.iter().map(|c| to_json(c.as_ref())).collect(),
                        )
                    })
                    .collect(),
            );
        }
        out
    }

    pub fn statement_results(&self, results: &[flotilla_store::StatementResult]) -> Json {
        Json::Array(results.iter().map(|r| self.statement_result(r)).collect())
    }
}

pub fn to_json(v: ValueRef<'_>) -> Json {
    match v {
        ValueRef::Null => Json::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) => serde_json::Number::from_f64(f)
            .map(Json::Number)
            // JSON has no infinities: they are sent as strings.
            .unwrap_or_else(|| json!(f.to_string())),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => json!(s),
            // JSON strings hold Unicode only: text SQLite holds that is not UTF-8 keeps its
            // exact bytes this way rather than turning into U+FFFD (which would merge values).
            Err(_) => json!({ "text_base64": B64.encode(t) }),
        },
        ValueRef::Blob(b) => json!({ "base64": B64.encode(b) }),
    }
}

/// Converts parameter `index` (0-based, for messages), as the client wrote it, to a SQLite
/// value. A number written as an integer (no fraction, no exponent) must fit SQLite's 64-bit
/// signed integers: a JSON parser would quietly turn a larger one into an approximate REAL.
pub fn from_raw_json(index: usize, raw: &serde_json::value::RawValue) -> Result<Value, ParamError> {
    let text = raw.get().trim();
    let integer_literal = text.starts_with(|c: char| c == '-' || c.is_ascii_digit())
        && !text.contains(['.', 'e', 'E']);
    if integer_literal {
        return text.parse::<i64>().map(Value::Integer).map_err(|_| {
            bad(
                index,
                format!(
                    "integer {text} does not fit SQLite's 64-bit signed integers \
                 (-9223372036854775808 to 9223372036854775807); send it as a string or a real \
                 (e.g. {text}.0) if that is what you mean"
                ),
            )
        });
    }
    let v: Json = serde_json::from_str(text).map_err(|e| bad(index, e.to_string()))?;
    from_json(index, &v)
}

/// Converts parameter `index` (0-based, for messages) to a SQLite value.
pub fn from_json(index: usize, v: &Json) -> Result<Value, ParamError> {
    Ok(match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Integer(*b as i64),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Integer(i)
            } else if n.is_u64() {
                return Err(bad(
                    index,
                    format!("integer {n} does not fit SQLite's 64-bit signed integers"),
                ));
            } else {
                Value::Real(n.as_f64().expect("finite number"))
            }
        }
        Json::String(s) => Value::Text(s.clone()),
        Json::Object(o) if o.len() == 1 && o.contains_key("base64") => {
            let Some(text) = o["base64"].as_str() else {
                return Err(bad(index, "\"base64\" must be a string".into()));
            };
            Value::Blob(
                B64.decode(text)
                    .map_err(|e| bad(index, format!("invalid base64: {e}")))?,
            )
        }
        other => {
            return Err(bad(
                index,
                format!(
                    "{other} is not a SQLite value (use a number, a string, null, or \
                     {{\"base64\": \"...\"}} for a BLOB)"
                ),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text that is not UTF-8 keeps its bytes: two such values never look alike.
    #[test]
    fn text_that_is_not_utf8_keeps_its_bytes() {
        assert_eq!(to_json(ValueRef::Text(b"caf\xc3\xa9")), json!("café"));
        let a = to_json(ValueRef::Text(b"\x80"));
        let b = to_json(ValueRef::Text(b"\x81"));
        assert_eq!(a, json!({"text_base64": "gA=="}));
        assert_ne!(a, b);
        assert_ne!(a, to_json(ValueRef::Text("\u{fffd}".as_bytes())));
    }

    #[test]
    fn round_trips() {
        for v in [
            Value::Null,
            Value::Integer(-5),
            Value::Real(1.5),
            Value::Text("héllo".into()),
            Value::Blob(vec![0, 255, 7]),
        ] {
            let j = to_json(ValueRef::from(&v));
            assert_eq!(from_json(0, &j).unwrap(), v);
        }
    }

    #[test]
    fn integers_out_of_range_are_refused_however_written() {
        let raw = |s: &str| serde_json::value::RawValue::from_string(s.to_string()).unwrap();
        for text in [
            "99999999999999999999",
            "9223372036854775808",
            "18446744073709551615",
            "-9223372036854775809",
            "-99999999999999999999999",
        ] {
            let err = from_raw_json(1, &raw(text)).unwrap_err();
            assert!(
                err.index == 1
                    && err.to_string().contains("parameter 1")
                    && err.detail.contains("64-bit"),
                "{text}: {err}"
            );
        }
        assert_eq!(
            from_raw_json(0, &raw("9223372036854775807")).unwrap(),
            Value::Integer(i64::MAX)
        );
        assert_eq!(
            from_raw_json(0, &raw("-9223372036854775808")).unwrap(),
            Value::Integer(i64::MIN)
        );
        assert_eq!(from_raw_json(0, &raw("-0")).unwrap(), Value::Integer(0));
        // Fractions and exponents are reals, as JSON writers mean them.
        assert_eq!(from_raw_json(0, &raw("1e23")).unwrap(), Value::Real(1e23));
        assert_eq!(from_raw_json(0, &raw("2.5")).unwrap(), Value::Real(2.5));
        assert_eq!(
            from_raw_json(0, &raw("\"9\"")).unwrap(),
            Value::Text("9".into())
        );
        assert!(from_raw_json(0, &raw("[1]")).is_err());
    }

    #[test]
    fn rejects_non_values() {
        assert!(from_json(2, &json!([1]))
            .unwrap_err()
            .to_string()
            .starts_with("parameter 2"));
        assert!(from_json(0, &json!({"x": 1})).is_err());
        assert!(from_json(0, &json!({"base64": "!!"}))
            .unwrap_err()
            .detail
            .contains("base64"));
        assert!(from_json(0, &json!(u64::MAX))
            .unwrap_err()
            .detail
            .contains("64-bit"));
    }
}
