//! `flotilla backup` and `flotilla restore`: a consistent copy of a node's database to a file,
//! and a file loaded into a cluster's leader, with progress bars.

use anyhow::{bail, Context};
use clap::Args;
use flotilla_client::Client;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
#[command(after_help = "Examples:
  flotilla backup --node 127.0.0.1:4790 nightly.db            # a SQLite file: sqlite3 nightly.db
  flotilla backup --node 127.0.0.1:4791 dump.sql --format sql # a SQL dump, taken from a follower
")]
pub struct BackupArgs {
    /// The node to copy (any node; a follower spares the leader).
    #[arg(long, default_value = "http://127.0.0.1:4790")]
    node: String,
    /// sqlite (a database file `sqlite3` opens, with Flotilla's own tables) or sql (a dump of
    /// the application's tables, views, indexes and triggers).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "sql"])]
    format: String,
    /// Where to write it (written beside as FILE.partial, renamed when complete).
    file: PathBuf,
    /// Do not draw a progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
#[command(after_help = "Examples:
  flotilla restore --node 127.0.0.1:4790 nightly.db              # into an empty cluster
  flotilla restore --node 127.0.0.1:4790 nightly.db --replace    # replace what is there
  flotilla restore --node 127.0.0.1:4790 nightly.db --replace --to 1/5230   # point in time
  flotilla restore --node 127.0.0.1:4790 dump.sql                # a SQL dump (sqlite3 .dump too)
")]
pub struct RestoreArgs {
    /// The cluster's leader.
    #[arg(long, default_value = "http://127.0.0.1:4790")]
    node: String,
    /// A SQLite database file or a SQL dump.
    file: PathBuf,
    /// Replace the cluster's tables (refused without it when the cluster holds any).
    #[arg(long)]
    replace: bool,
    /// Roll a Flotilla backup of this cluster forward through the leader's log to this
    /// position (EPOCH/LSN) before installing it.
    #[arg(long, value_name = "POSITION")]
    to: Option<String>,
    /// Do not draw a progress bar.
    #[arg(long)]
    quiet: bool,
}

fn bar(total: Option<u64>, quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                .expect("template"),
        ),
    };
    bar.set_message(what.to_string());
    bar
}

pub async fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let client = Client::new(&a.node);
    println!("{}", download(&client, &a.format, &a.file, a.quiet).await?);
    Ok(())
}

/// Writes a backup of `client`'s node to `file`; what was done, in a sentence.
pub async fn download(
    client: &Client,
    format: &str,
    file: &Path,
    quiet: bool,
) -> anyhow::Result<String> {
    let client = client.unlimited();
    let req = client.request(reqwest::Method::GET, &format!("/v1/backup?format={format}"));
    let resp = client.send(req).await.context("the backup did not start")?;
    let position = resp
        .headers()
        .get("x-flotilla-position")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    let progress = bar(resp.content_length(), quiet, "backup");
    let partial = partial_path(file);
    let mut out = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut stream = resp.bytes_stream();
    let mut written = 0u64;
    let result: anyhow::Result<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                anyhow::anyhow!(
                    "the download broke off after {written} bytes ({})",
                    client.unreachable(e)
                )
            })?;
            out.write_all(&chunk)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            written += chunk.len() as u64;
            progress.set_position(written);
        }
        out.sync_all()
            .with_context(|| format!("cannot flush {}", partial.display()))?;
        Ok(())
    }
    .await;
    progress.finish_and_clear();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, file)
        .with_context(|| format!("cannot rename {} into place", partial.display()))?;
    Ok(format!(
        "backed up {} at position {position} to {} ({})",
        client.url(),
        file.display(),
        human_bytes(written)
    ))
}

pub async fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let client = Client::new(&a.node);
    let done = upload(&client, &a.file, a.replace, a.to.as_deref(), a.quiet).await?;
    println!("{done}");
    println!("followers reload it from a snapshot by themselves");
    Ok(())
}

/// Restores `path` into `client`'s cluster (its leader); what was done, in a sentence.
pub async fn upload(
    client: &Client,
    path: &Path,
    replace: bool,
    to: Option<&str>,
    quiet: bool,
) -> anyhow::Result<String> {
    let client = client.unlimited();
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if size == 0 {
        bail!("{} is empty", path.display());
    }
    let progress = bar(Some(size), quiet, "upload");
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let shown = progress.clone();
    let chunks = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
    .inspect(move |c| {
        if let Ok(c) = c {
            shown.inc(c.len() as u64);
            if shown.position() >= size {
                shown.set_message("installing");
            }
        }
    });
    let mut query = vec![("replace", replace.to_string())];
    if let Some(to) = to {
        query.push(("to", to.to_string()));
    }
    let req = client
        .request(reqwest::Method::POST, "/v1/restore")
        .query(&query)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(chunks));
    let answer = client.send(req).await;
    progress.finish_and_clear();
    let answer: serde_json::Value = answer
        .map_err(|e| {
            // The node's own refusal means nothing changed; a lost connection does not tell.
            if e.to_string().starts_with(char::is_numeric) {
                e.context("nothing was restored")
            } else {
                e.context(
                    "the restore's answer was lost: `flotilla status` shows whether it took \
                     place (a new position)",
                )
            }
        })?
        .json()
        .await
        .context("the node's answer is not JSON")?;
    let objects = answer["objects"].as_array().map_or(0, Vec::len);
    Ok(format!(
        "restored {} ({}, {}) into {}: {objects} schema object{} (tables, views, indexes, \
         triggers); the cluster continues at position {}{}",
        path.display(),
        answer["format"].as_str().unwrap_or("?"),
        human_bytes(size),
        client.url(),
        if objects == 1 { "" } else { "s" },
        answer["position"].as_str().unwrap_or("?"),
        match answer["rolled_forward_to"].as_str() {
            Some(to) => format!(" (rolled forward to {to})"),
            None => String::new(),
        }
    ))
}

fn partial_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
