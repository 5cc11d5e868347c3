//! `flotilla device add | list | revoke` and `flotilla shape set | list | remove`: the offline
//! devices a data centre's leader syncs with, and the shapes that say which rows each pulls
//! and may push (admin role; docs/devices.md).

use crate::shell::render::table;
use clap::Subcommand;
use flotilla_client::Client;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum DeviceCommand {
    /// Register a device of a user and print its token (shown only now).
    #[command(after_help = "Examples:
  flotilla device add --node 127.0.0.1:4790 laptop --user ana
  flotilla device add --node 127.0.0.1:4790 ana-phone --user ana --json")]
    Add {
        /// The data centre leader's URL.
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        /// The device's name (letters, digits, '-' and '_').
        name: String,
        /// The user it belongs to: a shape's `:user`.
        #[arg(long)]
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// List the devices: user, token state, origins, last sync and cursor.
    #[command(after_help = "Examples:
  flotilla device list --node 127.0.0.1:4790")]
    List {
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device's token: its next sync is refused.
    #[command(after_help = "Examples:
  flotilla device revoke --node 127.0.0.1:4790 laptop")]
    Revoke {
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        name: String,
    },
}

#[derive(Subcommand)]
pub enum ShapeCommand {
    /// Set a table's shape: the columns devices pull and may write, and which rows.
    #[command(after_help = "Examples:
  flotilla shape set --node 127.0.0.1:4790 --table events --where \"owner = :user\"
  flotilla shape set --node 127.0.0.1:4790 --table notes --columns id,owner,body --where \"owner = :user\"
  flotilla shape set --node 127.0.0.1:4790 --table holidays            # every row, every column

The predicate is SQL over the table's columns; :user and :device are the syncing device's.")]
    Set {
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        #[arg(long)]
        table: String,
        /// Comma-separated; the key's columns among them (default: every column).
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
        /// Which rows (default: every row).
        #[arg(long = "where")]
        predicate: Option<String>,
    },
    /// List the shapes.
    List {
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a table's shape: devices stop pulling it, and drop their copies of its rows.
    Remove {
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        #[arg(long)]
        table: String,
    },
}

pub async fn run(cmd: DeviceCommand) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Add {
            node,
            name,
            user,
            json,
        } => {
            let v = Client::new(&node)
                .post("/v1/devices", &json!({ "name": name, "user": user }))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", v["token"].as_str().unwrap_or_default());
                eprintln!(
                    "device {name} of {user} added; the line above is its token, shown only now"
                );
            }
        }
        DeviceCommand::List { node, json } => {
            let v = Client::new(&node).get("/v1/devices").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["devices"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|d| {
                            let origins: Vec<String> = d["origins"]
                                .as_array()
                                .map(|o| {
                                    o.iter()
                                        .map(|o| {
                                            format!(
                                                "{} (pushed {})",
                                                o["origin"].as_str().unwrap_or("?"),
                                                o["pushed_through"]
                                            )
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                            vec![
                                d["name"].as_str().unwrap_or_default().to_string(),
                                d["user"].as_str().unwrap_or_default().to_string(),
                                if d["revoked_ms"].is_null() {
                                    "valid".into()
                                } else {
                                    format!("revoked {}", crate::token::when(&d["revoked_ms"]))
                                },
                                if origins.is_empty() {
                                    "-".into()
                                } else {
                                    origins.join(", ")
                                },
                                crate::token::when(&d["last_sync_ms"]),
                                d["cursor"].as_str().unwrap_or("-").to_string(),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            print!(
                "{}",
                table(
                    &[
                        "device",
                        "user",
                        "token",
                        "origins",
                        "last sync",
                        "position"
                    ]
                    .map(String::from),
                    &rows
                )
            );
        }
        DeviceCommand::Revoke { node, name } => {
            let v = Client::new(&node)
                .delete(&format!("/v1/devices/{name}"))
                .await?;
            println!(
                "revoked device {name} (token {}) at {}",
                v["token_id"].as_str().unwrap_or("?"),
                v["position"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

fn shape_rows(v: &Value) -> Vec<Vec<String>> {
    v["shapes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    vec![
                        s["table"].as_str().unwrap_or_default().to_string(),
                        s["columns"]
                            .as_array()
                            .map(|c| {
                                c.iter()
                                    .filter_map(|c| c.as_str())
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_else(|| "(all)".into()),
                        s["where"].as_str().unwrap_or("(every row)").to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default()
}

pub async fn shape(cmd: ShapeCommand) -> anyhow::Result<()> {
    let headers = ["table", "columns", "where"].map(String::from);
    match cmd {
        ShapeCommand::Set {
            node,
            table: t,
            columns,
            predicate,
        } => {
            let v = Client::new(&node)
                .put(
                    "/v1/shapes",
                    &json!({ "table": t, "columns": columns, "where": predicate }),
                )
                .await?;
            println!(
                "shape of {t} set at {}; devices pull their whole shape again at their next sync",
                v["position"].as_str().unwrap_or("?")
            );
            print!("{}", table(&headers, &shape_rows(&v)));
        }
        ShapeCommand::List { node, json } => {
            let v = Client::new(&node).get("/v1/shapes").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", table(&headers, &shape_rows(&v)));
            }
        }
        ShapeCommand::Remove { node, table: t } => {
            let v = Client::new(&node)
                .delete(&format!("/v1/shapes/{t}"))
                .await?;
            println!(
                "shape of {t} removed at {}",
                v["position"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}
