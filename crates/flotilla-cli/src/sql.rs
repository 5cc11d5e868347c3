//! `flotilla sql`: run SQL on a node, from the command line, a file or standard input. Reads
//! run on the node; writes go to its leader (following a 421); statements given together run
//! as one transaction.

use crate::shell::render::Mode;
use crate::shell::session::Session;
use anyhow::Context;
use clap::Args;
use flotilla_client::Client;
use std::path::PathBuf;

#[derive(Args)]
#[command(after_help = "Examples:
  flotilla sql --node 127.0.0.1:4790 \"CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)\"
  flotilla sql --node 127.0.0.1:4790 \"INSERT INTO notes(body) VALUES ('a'); INSERT INTO notes(body) VALUES ('b')\"
  flotilla sql --node 127.0.0.1:4791 \"SELECT * FROM notes\" --mode csv
  flotilla sql --node 127.0.0.1:4790 -f schema.sql          # one transaction
  flotilla sql --node 127.0.0.1:4790 --one-by-one < import.sql")]
pub struct SqlArgs {
    /// The node's URL (host:port means http://host:port).
    #[arg(long, default_value = "http://127.0.0.1:4790")]
    node: String,
    /// Print the node's JSON answers instead of tables.
    #[arg(long)]
    json: bool,
    /// For reads: wait until the node has applied this position (EPOCH/LSN).
    #[arg(long)]
    min_position: Option<String>,
    /// Run the statements in FILE ("-": standard input, also the default without SQL).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "sql"
    )]
    file: Option<PathBuf>,
    /// Run each statement as its own transaction.
    #[arg(long)]
    one_by_one: bool,
    /// How rows are shown.
    #[arg(long, default_value = "table", value_parser = ["table", "json", "csv", "line"])]
    mode: String,
    /// Writes wait for this durability: async, semi-sync or quorum [default: the leader's].
    #[arg(long, value_parser = ["async", "semi-sync", "quorum"])]
    durability: Option<String>,
    /// SQL: one statement, or several separated by ';' (run as one transaction).
    sql: Option<String>,
}

pub async fn run(a: SqlArgs) -> anyhow::Result<()> {
    let mut session = Session::new(Client::new(&a.node));
    session.raw_json = a.json;
    session.one_by_one = a.one_by_one;
    session.mode = Mode::parse(&a.mode).unwrap_or(Mode::Table);
    session.durability = a.durability.as_deref().map(|d| d.parse()).transpose()?;
    if let Some(p) = &a.min_position {
        p.parse::<flotilla_types::Position>()
            .map_err(|e| anyhow::anyhow!("--min-position {p:?}: {e}"))?;
        session.position = Some(p.clone());
    }
    let text = match (&a.sql, &a.file) {
        (Some(sql), _) => sql.clone(),
        (None, Some(p)) if p.as_os_str() != "-" => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
        }
        (None, _) => crate::shell::read_stdin()?,
    };
    crate::shell::run_script(&mut session, &text).await
}
