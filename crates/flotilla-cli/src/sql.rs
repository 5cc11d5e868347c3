use clap::Args;
use flotilla_client::Client;
use serde_json::{json, Value};

#[derive(Args)]
pub struct SqlArgs {
    /// The node's URL.
    #[arg(long, default_value = "http://127.0.0.1:4790")]
    node: String,
    /// Print the node's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
    /// For reads: wait until the node has applied this position (EPOCH/LSN).
    #[arg(long)]
    min_position: Option<String>,
    /// The SQL statement.
    sql: String,
}

/// A read-only statement goes to /v1/query; the node refuses writes there with
/// `not_read_only`, and then the statement is sent to /v1/execute.
pub async fn run(a: SqlArgs) -> anyhow::Result<()> {
    let client = Client::new(&a.node);
    let mut q = json!({ "sql": a.sql });
    if let Some(p) = &a.min_position {
        q["min_position"] = json!(p);
    }
    let answer = match client.post("/v1/query", &q).await {
        Ok(v) => v,
        Err(e) if e.to_string().contains("not_read_only") => {
            client
                .post("/v1/execute", &json!({ "statements": [{ "sql": a.sql }] }))
                .await?
        }
        Err(e) => return Err(e),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else if let Some(cols) = answer["columns"].as_array() {
        let headers: Vec<String> = cols
            .iter()
            .map(|c| c.as_str().unwrap_or("").to_string())
            .collect();
        let rows: Vec<Vec<String>> = answer["rows"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        r.as_array()
                            .map(|vs| vs.iter().map(cell).collect())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        print!("{}", table(&headers, &rows));
        println!(
            "({} rows at position {})",
            rows.len(),
            answer["position"].as_str().unwrap_or("?")
        );
    } else {
        let results = answer["results"].as_array().cloned().unwrap_or_default();
        for r in results {
            println!(
                "rows affected: {}, last insert rowid: {}",
                r["rows_affected"], r["last_insert_rowid"]
            );
        }
        println!(
            "committed at position {}",
            answer["position"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        Value::Object(o) if o.contains_key("base64") => {
            format!("<blob {}>", o["base64"].as_str().unwrap_or(""))
        }
        other => other.to_string(),
    }
}

/// A plain-text table with aligned columns.
pub fn table(headers: &[String], rows: &[Vec<String>]) -> String {
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
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
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
