//! SQLite values as JSON: integers and reals are numbers, text is a string, NULL is null,
//! BLOBs are `{"base64": "..."}` (accepted the same way in parameters).

use base64::Engine;
use rusqlite::types::{Value, ValueRef};
use serde_json::{json, Value as Json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub fn to_json(v: ValueRef<'_>) -> Json {
    match v {
        ValueRef::Null => Json::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) => serde_json::Number::from_f64(f)
            .map(Json::Number)
            // JSON has no infinities: they are sent as strings.
            .unwrap_or_else(|| json!(f.to_string())),
        ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => json!({ "base64": B64.encode(b) }),
    }
}

/// Converts parameter `index` (0-based, for messages) to a SQLite value.
pub fn from_json(index: usize, v: &Json) -> Result<Value, String> {
    Ok(match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Integer(*b as i64),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Integer(i)
            } else if n.is_u64() {
                return Err(format!(
                    "parameter {index}: integer {n} does not fit SQLite's 64-bit signed integers"
                ));
            } else {
                Value::Real(n.as_f64().expect("finite number"))
            }
        }
        Json::String(s) => Value::Text(s.clone()),
        Json::Object(o) if o.len() == 1 && o.contains_key("base64") => {
            let Some(text) = o["base64"].as_str() else {
                return Err(format!("parameter {index}: \"base64\" must be a string"));
            };
            Value::Blob(
                B64.decode(text)
                    .map_err(|e| format!("parameter {index}: invalid base64: {e}"))?,
            )
        }
        other => {
            return Err(format!(
                "parameter {index}: {other} is not a SQLite value (use a number, a string, null, \
                 or {{\"base64\": \"...\"}} for a BLOB)"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn rejects_non_values() {
        assert!(from_json(2, &json!([1]))
            .unwrap_err()
            .starts_with("parameter 2"));
        assert!(from_json(0, &json!({"x": 1})).is_err());
        assert!(from_json(0, &json!({"base64": "!!"}))
            .unwrap_err()
            .contains("base64"));
        assert!(from_json(0, &json!(u64::MAX))
            .unwrap_err()
            .contains("64-bit"));
    }
}
