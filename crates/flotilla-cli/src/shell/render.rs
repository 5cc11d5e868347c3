//! Rows as the shell and `flotilla sql` show them: an aligned table (the default), JSON, CSV,
//! or one `column = value` line each.
//!
//! In a table, SQL NULL is `NULL` and the text 'NULL' is shown quoted, so the two never look
//! alike; a BLOB is `x'0a1b…'` (its first 16 bytes) with its size; text that is not UTF-8 is
//! shown as its bytes the same way.

use base64::Engine;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Table,
    Json,
    Csv,
    Line,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "table" => Some(Mode::Table),
            "json" => Some(Mode::Json),
            "csv" => Some(Mode::Csv),
            "line" => Some(Mode::Line),
            _ => None,
        }
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The bytes of a `{"base64": …}` or `{"text_base64": …}` value.
fn bytes_of(v: &Value) -> Option<(bool, Vec<u8>)> {
    let o = v.as_object()?;
    if let Some(b) = o.get("base64").and_then(Value::as_str) {
        return Some((true, B64.decode(b).ok()?));
    }
    let t = o.get("text_base64").and_then(Value::as_str)?;
    Some((false, B64.decode(t).ok()?))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A value for reading: how a table shows it.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) if s.eq_ignore_ascii_case("null") => format!("'{s}'"),
        Value::String(s) => s.clone(),
        other => match bytes_of(other) {
            Some((blob, b)) if b.len() <= 16 => {
                format!("{}x'{}'", if blob { "" } else { "text " }, hex(&b))
            }
            Some((blob, b)) => format!(
                "{}x'{}…' ({} bytes)",
                if blob { "" } else { "text " },
                hex(&b[..16]),
                b.len()
            ),
            None => other.to_string(),
        },
    }
}

/// A value in a CSV field: NULL is an empty field, a BLOB its hex.
fn csv_field(v: &Value) -> String {
    let text = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        other => match bytes_of(other) {
            Some((_, b)) => format!("x'{}'", hex(&b)),
            None => other.to_string(),
        },
    };
    if text.contains([',', '"', '\n', '\r']) || text.starts_with(' ') || text.ends_with(' ') {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// A plain-text table with aligned columns (numbers to the right).
pub fn table(headers: &[String], rows: &[Vec<String>]) -> String {
    table_aligned(headers, rows, &[])
}

fn table_aligned(headers: &[String], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = widths.get(i).copied().unwrap_or(0);
                if right.get(i).copied().unwrap_or(false) {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        format!("{}\n", parts.join("  ").trim_end())
    };
    let mut out = line(headers);
    out.push_str(&line(
        &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
    ));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// Renders one result's rows (`rows` as the API answers them: lists, or objects).
pub fn rows(mode: Mode, columns: &[String], rows: &[Value]) -> String {
    let values = |r: &Value| -> Vec<Value> {
        match r {
            Value::Array(a) => a.clone(),
            Value::Object(o) => columns
                .iter()
                .map(|c| o.get(c).cloned().unwrap_or(Value::Null))
                .collect(),
            other => vec![other.clone()],
        }
    };
    match mode {
        Mode::Table => {
            let all: Vec<Vec<Value>> = rows.iter().map(values).collect();
            // A column is right-aligned when every value in it is a number.
            let right: Vec<bool> = (0..columns.len())
                .map(|i| {
                    !all.is_empty()
                        && all
                            .iter()
                            .all(|r| r.get(i).is_some_and(|v| v.is_number() || v.is_null()))
                })
                .collect();
            let cells: Vec<Vec<String>> =
                all.iter().map(|r| r.iter().map(cell).collect()).collect();
            let mut out = table_aligned(columns, &cells, &right);
            out.push_str(&format!(
                "({} row{})\n",
                rows.len(),
                if rows.len() == 1 { "" } else { "s" }
            ));
            out
        }
        Mode::Json => {
            let objects: Vec<Value> = rows
                .iter()
                .map(|r| Value::Object(columns.iter().cloned().zip(values(r)).collect()))
                .collect();
            format!(
                "{}\n",
                serde_json::to_string_pretty(&Value::Array(objects)).expect("JSON")
            )
        }
        Mode::Csv => {
            let mut out = columns
                .iter()
                .map(|c| csv_field(&Value::String(c.clone())))
                .collect::<Vec<_>>()
                .join(",");
            out.push('\n');
            for r in rows {
                out.push_str(
                    &values(r)
                        .iter()
                        .map(csv_field)
                        .collect::<Vec<_>>()
                        .join(","),
                );
                out.push('\n');
            }
            out
        }
        Mode::Line => {
            let width = columns.iter().map(|c| c.chars().count()).max().unwrap_or(0);
            let mut out = String::new();
            for (i, r) in rows.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                for (c, v) in columns.iter().zip(values(r)) {
                    out.push_str(&format!("{c:>width$} = {}\n", cell(&v)));
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_and_the_text_null_look_different() {
        let out = rows(
            Mode::Table,
            &["a".into(), "b".into()],
            &[json!([null, "NULL"]), json!([1, {"base64": "AAE="}])],
        );
        assert!(out.contains("NULL  'NULL'"), "{out}");
        assert!(out.contains("x'0001'"), "{out}");
        assert!(out.ends_with("(2 rows)\n"), "{out}");
    }

    #[test]
    fn csv_quotes_what_needs_it_and_leaves_null_empty() {
        let out = rows(
            Mode::Csv,
            &["a".into(), "b".into()],
            &[json!(["x,y", null]), json!(["say \"hi\"", 2])],
        );
        assert_eq!(out, "a,b\n\"x,y\",\n\"say \"\"hi\"\"\",2\n");
    }

    #[test]
    fn line_and_json_modes_name_each_column() {
        let cols = ["id".to_string(), "name".to_string()];
        let r = [json!({"id": 1, "name": "a"})];
        assert_eq!(rows(Mode::Line, &cols, &r), "  id = 1\nname = a\n");
        let j: Value = serde_json::from_str(&rows(Mode::Json, &cols, &r)).unwrap();
        assert_eq!(j, json!([{"id": 1, "name": "a"}]));
    }
}
