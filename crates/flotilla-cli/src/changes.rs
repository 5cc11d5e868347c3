//! `flotilla changes`: tails a leader's change feed (`GET /v1/changes`) in the terminal, one
//! JSON line per committed transaction.

use anyhow::{bail, Context};
use std::io::Write;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  flotilla changes --node 127.0.0.1:4790                      # follow from the oldest kept
  flotilla changes --node 127.0.0.1:4790 --from 1/42 --tables notes,orders
  flotilla changes --node 127.0.0.1:4790 --no-follow > changes.ndjson")]
pub struct ChangesArgs {
    /// The leader's URL.
    #[arg(long, default_value = "http://127.0.0.1:4790")]
    node: String,
    /// The last position already processed (E/L); the feed starts after it. Default: the oldest
    /// retained transaction.
    #[arg(long)]
    from: Option<String>,
    /// Only changes of these tables (comma-separated).
    #[arg(long)]
    tables: Option<String>,
    /// Stop at the leader's current head instead of waiting for new commits.
    #[arg(long)]
    no_follow: bool,
}

pub async fn run(a: ChangesArgs) -> anyhow::Result<()> {
    let base = flotilla_client::node_url(&a.node);
    let mut url = reqwest::Url::parse(&format!("{base}/v1/changes"))
        .with_context(|| format!("--node {:?} is not a URL", a.node))?;
    {
        let mut q = url.query_pairs_mut();
        if let Some(f) = &a.from {
            q.append_pair("from", f);
        }
        if let Some(t) = &a.tables {
            q.append_pair("tables", t);
        }
        q.append_pair("follow", if a.no_follow { "false" } else { "true" });
    }
    // No time limit on the whole request: the feed follows for as long as the user wants.
    let client = flotilla_client::Client::new(&a.node).unlimited();
    let mut resp = client
        .send(client.request(
            reqwest::Method::GET,
            &format!("/v1/changes?{}", url.query().unwrap_or("")),
        ))
        .await?;
    let mut out = std::io::stdout().lock();
    let mut partial: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await.context("change feed interrupted")? {
        partial.extend_from_slice(&chunk);
        while let Some(nl) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=nl).collect();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) {
                if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                    bail!("the change feed stopped: {e}");
                }
            }
            out.write_all(&line)?;
        }
        out.flush()?;
    }
    Ok(())
}
