//! `flotilla conflicts list | policy | resolve`: multi-leader conflicts (docs/multi-leader.md).

use crate::shell::render::table;
use anyhow::{bail, Context};
use clap::Subcommand;
use flotilla_client::Client;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum ConflictsCommand {
    /// The conflicts this node met (the flotilla_conflicts table), newest last.
    #[command(after_help = "Examples:
  flotilla conflicts list --node 127.0.0.1:4801
  flotilla conflicts list --node 127.0.0.1:4801 --open      # keep-both conflicts not resolved yet")]
    List {
        /// Any node's URL (a data centre's leader or one of its followers).
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        /// Only the conflicts still open.
        #[arg(long)]
        open: bool,
        #[arg(long)]
        json: bool,
    },
    /// Set how concurrent writes to a column combine (or, without --column, a table's delete
    /// rule). Checked against the table now; travels to every data centre.
    #[command(
        after_help = "Policies: lww (default), max, min, counter, keep-both, custom (with --expression
over `local` and `remote`); without --column: delete-wins (default) or update-wins.

Examples:
  flotilla conflicts policy --node 127.0.0.1:4801 --table items --column qty --policy counter
  flotilla conflicts policy --node 127.0.0.1:4801 --table items --column name --policy custom --expression \"local || ' / ' || remote\"
  flotilla conflicts policy --node 127.0.0.1:4801 --table items --policy update-wins"
    )]
    Policy {
        /// A data centre leader's URL.
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        #[arg(long)]
        table: String,
        #[arg(long)]
        column: Option<String>,
        #[arg(long)]
        policy: String,
        /// For `custom`: SQL over `local` (the earlier-stamped value) and `remote`.
        #[arg(long)]
        expression: Option<String>,
    },
    /// Delete the resolved conflicts older than a time from this data centre's table (open
    /// ones stay). Each data centre keeps its own table: prune each.
    #[command(after_help = "Examples:
  flotilla conflicts prune --node 127.0.0.1:4801 --older-than 30d
  flotilla conflicts prune --node 127.0.0.1:4801 --older-than 12h")]
    Prune {
        /// A data centre leader's URL.
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        /// How old a resolved conflict must be to go: a number with s, m, h or d (0s: every
        /// resolved conflict).
        #[arg(long, value_parser = parse_age_ms)]
        older_than: u64,
    },
    /// Resolve a conflict by writing the value to keep: the write travels to every data centre,
    /// and each marks the conflict resolved when it merges it.
    #[command(after_help = "Examples:
  flotilla conflicts resolve --node 127.0.0.1:4801 ID --keep remote
  flotilla conflicts resolve --node 127.0.0.1:4801 ID --value '\"green apple\"'   # a JSON value")]
    #[command(group(clap::ArgGroup::new("choice").required(true).args(["keep", "value"])))]
    Resolve {
        /// A data centre leader's URL.
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        /// The conflict's id (`flotilla conflicts list`).
        id: String,
        /// Keep this side's value: local (what this node had) or remote (what arrived).
        #[arg(long)]
        keep: Option<String>,
        /// Keep this value instead (JSON: a string in quotes, a number, null).
        #[arg(long)]
        value: Option<String>,
        /// Write the value even when the conflict is resolved already (a later write may have
        /// chosen another value since, which this one then replaces).
        #[arg(long)]
        force: bool,
    },
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub async fn run(cmd: ConflictsCommand) -> anyhow::Result<()> {
    match cmd {
        ConflictsCommand::List { node, open, json } => {
            let sql = format!(
                "SELECT id, tbl, row_key, coalesce(col, '(row)'), local_value, local_origin, \
                 remote_value, remote_origin, policy, winner, value, resolved \
                 FROM flotilla_conflicts {} ORDER BY rowid",
                if open { "WHERE resolved = 0" } else { "" }
            );
            let v = Client::new(&node)
                .post("/v1/query", &json!({ "sql": sql }))
                .await
                .map_err(|e| no_table(e, &node))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v["rows"])?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["rows"]
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            let r = r.as_array().cloned().unwrap_or_default();
                            let mut out: Vec<String> = r.iter().map(cell).collect();
                            out[11] = if r[11] == json!(1) {
                                "resolved".into()
                            } else {
                                "open".into()
                            };
                            out
                        })
                        .collect()
                })
                .unwrap_or_default();
            let headers = [
                "id", "table", "key", "column", "local", "from", "remote", "from", "policy",
                "winner", "value", "state",
            ]
            .map(String::from);
            print!("{}", table(&headers, &rows));
            eprintln!("({} conflicts)", rows.len());
        }
        ConflictsCommand::Policy {
            node,
            table,
            column,
            policy,
            expression,
        } => {
            let v = Client::new(&node)
                .put(
                    "/v1/conflicts/policies",
                    &json!({ "table": table, "column": column, "policy": policy, "expression": expression }),
                )
                .await?;
            let what = match &column {
                Some(c) => format!("{table}.{c}"),
                None => format!("{table} (its delete rule)"),
            };
            println!(
                "{what}: {policy} from position {}",
                v["position"].as_str().unwrap_or("?")
            );
        }
        ConflictsCommand::Resolve {
            node,
            id,
            keep,
            value,
            force,
        } => resolve(&node, &id, keep.as_deref(), value.as_deref(), force).await?,
        ConflictsCommand::Prune { node, older_than } => {
            let v = Client::new(&node)
                .post(
                    "/v1/conflicts/prune",
                    &json!({ "older_than_ms": older_than }),
                )
                .await?;
            println!(
                "pruned {} resolved conflicts (position {})",
                v["pruned"],
                v["position"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

fn no_table(e: anyhow::Error, node: &str) -> anyhow::Error {
    if e.to_string().contains("no such table: flotilla_conflicts") {
        anyhow::anyhow!(
            "{node} is not a multi-leader node (no flotilla_conflicts table): start it with --dc"
        )
    } else {
        e
    }
}

async fn resolve(
    node: &str,
    id: &str,
    keep: Option<&str>,
    value: Option<&str>,
    force: bool,
) -> anyhow::Result<()> {
    let c = Client::new(node);
    let found = c
        .post(
            "/v1/query",
            &json!({
                "sql": "SELECT tbl, row_key, col, local_value, remote_value, resolved FROM flotilla_conflicts WHERE id = ?1",
                "params": [id],
            }),
        )
        .await
        .map_err(|e| no_table(e, node))?;
    let Some(row) = found["rows"].as_array().and_then(|r| r.first()).cloned() else {
        bail!("no conflict {id} on {node} (`flotilla conflicts list` shows their ids)");
    };
    let (table, key, column) = (
        cell(&row[0]),
        cell(&row[1]),
        row[2].as_str().map(str::to_string),
    );
    let Some(column) = column else {
        bail!("conflict {id} is about the row (a delete racing an update); it was settled by the table's delete rule: insert or delete the row to change it");
    };
    if row[5].as_i64() == Some(1) && !force {
        bail!(
            "conflict {id} is resolved already: {table}.{column} may hold a value chosen since; \
             give --force to write this one anyway"
        );
    }
    let chosen = match (keep, value) {
        (Some("local"), _) => row[3].clone(),
        (Some("remote"), _) => row[4].clone(),
        (Some(other), _) => bail!("--keep {other}: use local or remote"),
        (None, Some(v)) => serde_json::from_str(v).with_context(|| {
            format!("--value {v}: not JSON (a string needs quotes: '\"text\"')")
        })?,
        (None, None) => bail!("give --keep local|remote or --value"),
    };
    let key: Vec<Value> = serde_json::from_str(&key).context("the conflict's row key")?;
    let keys = c
        .post(
            "/v1/query",
            &json!({ "sql": "SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk", "params": [table] }),
        )
        .await?;
    let key_columns: Vec<String> = keys["rows"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|r| r[0].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if key_columns.len() != key.len() {
        bail!("table {table} no longer has the key the conflict names");
    }
    let q = |i: &str| format!("\"{}\"", i.replace('"', "\"\""));
    let mut params = vec![chosen];
    let clause: Vec<String> = key_columns
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} IS ?{}", q(k), i + 2))
        .collect();
    params.extend(key);
    let where_clause = clause.join(" AND ");
    let set = format!(
        "UPDATE {} SET {} = ?1 WHERE {where_clause}",
        q(&table),
        q(&column)
    );
    // A write of the value a column already shows changes nothing, so it would not count as a
    // write of the column (nor resolve the conflict): the column is then cleared first, in the
    // same transaction.
    let mut read_params = vec![Value::Null];
    read_params.extend(params[1..].iter().cloned());
    let current = c
        .post(
            "/v1/query",
            &json!({
                "sql": format!("SELECT {} FROM {} WHERE {where_clause} AND ?1 IS ?1", q(&column), q(&table)),
                "params": read_params,
            }),
        )
        .await?;
    let shown = current["rows"]
        .as_array()
        .and_then(|r| r.first())
        .map(|r| r[0].clone());
    let mut statements = Vec::new();
    if shown.as_ref() == Some(&params[0]) {
        let mut cleared = params.clone();
        cleared[0] = Value::Null;
        statements.push(json!({ "sql": set, "params": cleared }));
    }
    statements.push(json!({ "sql": set, "params": params }));
    let v = c
        .post("/v1/execute", &json!({ "statements": statements }))
        .await?;
    let changed = v["results"]
        .as_array()
        .and_then(|r| r.last())
        .and_then(|r| r["rows_affected"].as_u64())
        .unwrap_or(0);
    if changed == 0 {
        bail!(
            "the row of conflict {id} is not in {table} any more (deleted since): nothing written"
        );
    }
    println!(
        "wrote {table}.{column} of {} at {}: every data centre marks conflict {id} resolved when it merges the write",
        row[1].as_str().unwrap_or("?"),
        v["position"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// `30d`, `12h`, `15m`, `90s` → milliseconds.
fn parse_age_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m, h or d (30d)"))?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: expected a number with s, m, h or d (30d)")),
    };
    n.checked_mul(ms).ok_or_else(|| format!("{s:?}: too long"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_read_with_their_unit() {
        assert_eq!(super::parse_age_ms("30d"), Ok(30 * 86_400_000));
        assert_eq!(super::parse_age_ms("0s"), Ok(0));
        assert_eq!(super::parse_age_ms("15m"), Ok(900_000));
        for bad in ["30", "d", "3w", "-1d", "99999999999999999999d"] {
            assert!(super::parse_age_ms(bad).is_err(), "{bad}");
        }
    }
}
