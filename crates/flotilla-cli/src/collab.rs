//! `flotilla collab`: collaborative text columns (docs/collab.md).

use crate::shell::render::table;
use clap::Subcommand;
use flotilla_client::Client;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum CollabCommand {
    /// Make a column collaborative: each row's value becomes a document many people edit at
    /// once (the row's text now is the document's first content).
    #[command(after_help = "Examples:
  flotilla collab enable --node 127.0.0.1:4790 --table notes --column body

Then edit row 42's body in a browser at http://127.0.0.1:4790/edit/notes/42/body, or connect
any Yjs client: new WebsocketProvider('ws://127.0.0.1:4790/v1/collab', 'notes/42/body', doc)
(the text is the document's Y.Text named \"text\"). SQL reads of notes.body see the text.")]
    Enable {
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        #[arg(long)]
        table: String,
        #[arg(long)]
        column: String,
    },
    /// List the collaborative columns.
    List {
        #[arg(long, default_value = "http://127.0.0.1:4790")]
        node: String,
        #[arg(long)]
        json: bool,
    },
}

/// `s` as one URL path segment (names may hold spaces, slashes, any character).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn column_rows(v: &Value) -> Vec<Vec<String>> {
    v["columns"]
        .as_array()
        .map(|cols| {
            cols.iter()
                .map(|c| {
                    ["table", "column", "key_column"]
                        .iter()
                        .map(|k| c[*k].as_str().unwrap_or("").to_string())
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default()
}

pub async fn run(cmd: CollabCommand) -> anyhow::Result<()> {
    let headers = ["table", "column", "key"].map(String::from);
    match cmd {
        CollabCommand::Enable {
            node,
            table: t,
            column,
        } => {
            let v = Client::new(&node)
                .post(
                    "/v1/collab/columns",
                    &json!({ "table": t, "column": column }),
                )
                .await?;
            let c = &v["column"];
            let (t, col) = (
                c["table"].as_str().unwrap_or(&t),
                c["column"].as_str().unwrap_or(&column),
            );
            println!(
                "{t}.{col} is collaborative (at {}); open a row's document at {}/edit/{}/KEY/{}",
                v["position"].as_str().unwrap_or("?"),
                node.trim_end_matches('/'),
                path_segment(t),
                path_segment(col)
            );
        }
        CollabCommand::List { node, json } => {
            let v = Client::new(&node).get("/v1/collab/columns").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", table(&headers, &column_rows(&v)));
            }
        }
    }
    Ok(())
}
