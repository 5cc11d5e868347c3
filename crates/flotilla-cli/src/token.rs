//! `flotilla token create | list | revoke`: API tokens (needs an admin token: `--token`, or
//! `FLOTILLA_TOKEN`; a leader's first start with authentication on writes one to
//! `<data>/admin.token`).

use crate::shell::render::table;
use clap::Subcommand;
use flotilla_client::Client;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a token; its secret is printed once.
    #[command(after_help = "Examples:
  flotilla token create --node 127.0.0.1:4790 --role read --name dashboards
  flotilla token create --node 127.0.0.1:4790 --role replicate      # for a follower")]
    Create {
        /// The leader's URL.
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        /// read, write, admin or replicate (for followers).
        #[arg(long)]
        role: String,
        /// A label, to recognise it in `flotilla token list`.
        #[arg(long, default_value = "")]
        name: String,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List the tokens (ids, names, roles; never secrets).
    #[command(after_help = "Examples:
  flotilla token list --node 127.0.0.1:4790")]
    List {
        /// Any node's URL.
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: from now on it authenticates nobody, on every node.
    #[command(after_help = "Examples:
  flotilla token revoke --node 127.0.0.1:4790 ID     # an id from token list")]
    Revoke {
        /// The leader's URL.
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        /// The token's id (`flotilla token list`), or the token itself.
        id: String,
    },
}

/// How long ago a wall-clock time (ms since the epoch) was, in words (`-`: never).
pub(crate) fn when(ms: &Value) -> String {
    let Some(ms) = ms.as_u64() else {
        return "-".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

pub async fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            node,
            role,
            name,
            json,
        } => {
            let v = Client::new(&node)
                .post("/v1/tokens", &json!({ "role": role, "name": name }))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", v["token"].as_str().unwrap_or_default());
                eprintln!(
                    "token {} ({}) made; the line above is its secret, shown only now",
                    v["id"].as_str().unwrap_or_default(),
                    v["role"].as_str().unwrap_or_default()
                );
            }
        }
        TokenCommand::List { node, json } => {
            let v = Client::new(&node).get("/v1/tokens").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["tokens"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|t| {
                            vec![
                                t["id"].as_str().unwrap_or_default().to_string(),
                                t["role"].as_str().unwrap_or_default().to_string(),
                                t["name"].as_str().unwrap_or_default().to_string(),
                                when(&t["created_ms"]),
                                if t["revoked_ms"].is_null() {
                                    "valid".into()
                                } else {
                                    format!("revoked {}", when(&t["revoked_ms"]))
                                },
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            print!(
                "{}",
                table(
                    &["id", "role", "name", "created", "state"].map(String::from),
                    &rows
                )
            );
        }
        TokenCommand::Revoke { node, id } => {
            // A whole token names its id too.
            let id = id
                .strip_prefix("flt_")
                .and_then(|rest| rest.split('_').next())
                .unwrap_or(&id)
                .to_string();
            let v = Client::new(&node)
                .delete(&format!("/v1/tokens/{id}"))
                .await?;
            println!(
                "revoked token {} at {}",
                id,
                v["position"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}
