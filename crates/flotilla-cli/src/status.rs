use crate::shell::render::table;
use clap::{Args, Subcommand};
use flotilla_client::Client;

#[derive(Args)]
#[command(after_help = "Examples:
  flotilla status --node 127.0.0.1:4790          # the leader, its followers and pipelines
  flotilla status --node 127.0.0.1:4791 --json   # a follower, as JSON")]
pub struct StatusArgs {
    /// The node's URL.
    #[arg(long, default_value = "http://127.0.0.1:4790")]
    node: String,
    /// Print the node's JSON answer.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum FollowerCommand {
    /// Forget a follower that is gone for good: it no longer holds the leader's log back.
    #[command(after_help = "Examples:
  flotilla follower remove --node 127.0.0.1:4790 f3")]
    Remove {
        /// The leader's URL.
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        /// The follower's id.
        id: String,
    },
}

pub async fn run(a: StatusArgs) -> anyhow::Result<()> {
    let s = Client::new(&a.node).get("/v1/status").await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    print!("{}", describe(&s));
    Ok(())
}

/// A node's status as text: the node, its leader or its followers, and its pipelines.
pub fn describe(s: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let text = |k: &str| {
        s[k].as_str()
            .map(str::to_string)
            .unwrap_or_else(|| s[k].to_string())
    };
    let _ = writeln!(
        out,
        "node {} ({}, {}) at position {}  cluster {}  epoch {}",
        text("id"),
        text("role"),
        text("state"),
        text("position"),
        text("cluster_id"),
        text("epoch")
    );
    if s["role"] == "follower" {
        let _ = writeln!(
            out,
            "leader {}  leader position {}  behind by {} transactions",
            text("leader"),
            text("leader_position"),
            s["lag_transactions"]
        );
        if let Some(b) = s.get("bootstrap") {
            let _ = writeln!(
                out,
                "bootstrapping: {:.1}%",
                b["percent"].as_f64().unwrap_or(0.0)
            );
        }
        if let Some(e) = s["error"].as_str() {
            let _ = writeln!(out, "last error: {e}");
        }
    }
    if s["cluster"].is_object() {
        // A cluster member: the consensus view (as `flotilla cluster status` shows it).
        out.push_str(&crate::cluster::describe(&s["cluster"]));
    }
    if let Some(followers) = s["followers"].as_array() {
        let headers: Vec<String> = [
            "follower",
            "url",
            "log",
            "state",
            "applied",
            "lag txns",
            "lag bytes",
            "lag ms",
        ]
        .iter()
        .map(|h| h.to_string())
        .collect();
        let rows: Vec<Vec<String>> = followers
            .iter()
            .map(|f| {
                [
                    "id",
                    "url",
                    "log",
                    "state",
                    "applied_position",
                    "lag_transactions",
                    "lag_bytes",
                    "lag_ms",
                ]
                .iter()
                .map(|k| {
                    f[*k]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| f[*k].to_string())
                })
                .collect()
            })
            .collect();
        if rows.is_empty() && !s["cluster"].is_object() {
            out.push_str("no followers\n");
        } else {
            out.push_str(&table(&headers, &rows));
        }
    }
    if let Some(pipelines) = s["pipelines"].as_array() {
        if !pipelines.is_empty() {
            out.push('\n');
            out.push_str(&crate::pipeline::list_table(pipelines));
        }
    }
    let ml = &s["multi_leader"];
    if ml.is_object() {
        let vv: Vec<String> = ml["version_vector"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\ndata centre {} ({}): merged {} transactions, {} conflicts; version vector {}",
            ml["dc"].as_str().unwrap_or("?"),
            ml["topology"].as_str().unwrap_or("?"),
            ml["merged_transactions"],
            ml["conflicts"],
            if vv.is_empty() {
                "-".to_string()
            } else {
                vv.join(", ")
            }
        );
        let headers: Vec<String> = [
            "peer",
            "url",
            "link",
            "read through",
            "behind",
            "last merge lag ms",
            "error",
        ]
        .iter()
        .map(|h| h.to_string())
        .collect();
        let cell = |v: &serde_json::Value| match v {
            serde_json::Value::Null => "-".to_string(),
            serde_json::Value::String(x) => x.clone(),
            other => other.to_string(),
        };
        let rows: Vec<Vec<String>> = ml["peers"]
            .as_array()
            .map(|peers| {
                peers
                    .iter()
                    .map(|p| {
                        let mut row: Vec<String> = [
                            "dc",
                            "url",
                            "link",
                            "read_through",
                            "lag_transactions",
                            "last_merge_lag_ms",
                            "error",
                        ]
                        .iter()
                        .map(|k| cell(&p[*k]))
                        .collect();
                        // A link that is not up says what it is doing (retrying, refused,
                        // stopped); how far behind it is is unknown until the peer said
                        // where its log ends.
                        if p["link"] != "up" {
                            if let Some(phase) = p["phase"].as_str() {
                                row[2] = format!("down ({})", phase.replace('_', " "));
                            }
                        }
                        if p["peer_head"].as_u64() == Some(0) {
                            row[4] = "?".into();
                        }
                        row
                    })
                    .collect()
            })
            .unwrap_or_default();
        if rows.is_empty() {
            out.push_str("no peer data centres (--peer-dc)\n");
        } else {
            out.push_str(&table(&headers, &rows));
        }
    }
    out
}

pub async fn follower(c: FollowerCommand) -> anyhow::Result<()> {
    match c {
        FollowerCommand::Remove { node, id } => {
            Client::new(&node)
                .delete(&format!("/v1/followers/{id}"))
                .await?;
            println!("follower {id} removed: it no longer holds the log back");
            Ok(())
        }
    }
}
