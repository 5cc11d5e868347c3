//! `flotilla changes`: tails a leader's change feed (`GET /v1/changes`) in the terminal, one
//! JSON line per committed transaction.

use anyhow::{bail, Context};
use std::io::Write;

#[derive(clap::Args)]
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
    let mut url = reqwest::Url::parse(&format!("{}/v1/changes", a.node.trim_end_matches('/')))
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
    let client = flotilla_client::Client::new(&a.node);
    let mut resp = client
        .request(
            reqwest::Method::GET,
            &format!("/v1/changes?{}", url.query().unwrap_or("")),
        )
        .send()
        .await
        .with_context(|| format!("cannot reach {}", a.node))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let msg = body["error"]["message"].as_str().unwrap_or("(no message)");
        bail!("{url}: {status}: {msg}");
    }
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
