//! `flotilla shell`: an interactive SQL shell (line editing and history with rustyline), and
//! the script runner `flotilla sql -f` and `flotilla shell < file` share.

mod dot;
pub mod render;
pub mod session;

use anyhow::Context;
use clap::Args;
use flotilla_client::Client;
use render::Mode;
use session::Session;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Args)]
#[command(after_help = "Examples:
  flotilla shell --node 127.0.0.1:4791                 # reads here, writes go to the leader
  flotilla shell --node 127.0.0.1:4790 -f schema.sql   # one transaction (dot-commands split it)
  flotilla shell --node 127.0.0.1:4790 --one-by-one < import.sql
  echo 'SELECT count(*) FROM notes;' | flotilla shell --node 127.0.0.1:4790 --mode csv

Inside, .help lists the dot-commands (.tables, .schema, .mode, .timer, .backup, ...).")]
pub struct ShellArgs {
    /// The node to read from (writes go to its leader by themselves).
    #[arg(long, default_value = "http://127.0.0.1:4790")]
    pub node: String,
    /// Run the statements in FILE and exit ("-": standard input, also the default when it
    /// is not a terminal).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Run each statement as its own transaction (default: statements given together, such
    /// as a whole script, run as one).
    #[arg(long)]
    pub one_by_one: bool,
    /// How rows are shown.
    #[arg(long, default_value = "table", value_parser = ["table", "json", "csv", "line"])]
    pub mode: String,
    /// Writes wait for this durability: async, semi-sync or quorum [default: the leader's].
    #[arg(long, value_parser = ["async", "semi-sync", "quorum"])]
    pub durability: Option<String>,
}

pub async fn run(a: ShellArgs) -> anyhow::Result<()> {
    let mut session = Session::new(Client::new(&a.node));
    session.one_by_one = a.one_by_one;
    session.mode = Mode::parse(&a.mode).unwrap_or(Mode::Table);
    session.durability = a.durability.as_deref().map(|d| d.parse()).transpose()?;
    let script = match &a.file {
        Some(p) if p.as_os_str() == "-" => Some(read_stdin()?),
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        ),
        None if !std::io::stdin().is_terminal() => Some(read_stdin()?),
        None => None,
    };
    match script {
        Some(text) => run_script(&mut session, &text).await,
        None => interactive(&mut session).await,
    }
}

pub fn read_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read the script from standard input (is it UTF-8?)")?;
    Ok(text)
}

/// Runs a script: its statements between dot-commands run as one transaction (or one by one);
/// the first error stops it.
pub async fn run_script(session: &mut Session, text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    let mut pending: Vec<String> = Vec::new();
    let mut buffer = String::new();
    for (n, line) in text.lines().enumerate() {
        if flotilla_store::sql_text::only_comments(&buffer) && line.trim_start().starts_with('.') {
            session.run(&std::mem::take(&mut pending), &mut out).await?;
            buffer.clear();
            match dot::run(session, line.trim(), &mut out)
                .await
                .with_context(|| format!("line {}: {}", n + 1, line.trim()))?
            {
                dot::Flow::Continue => {}
                dot::Flow::Quit => return Ok(()),
                dot::Flow::Read(path) => Box::pin(read_file(session, &path)).await?,
            }
            continue;
        }
        buffer.push_str(line);
        buffer.push('\n');
        let (complete, rest) = flotilla_store::sql_text::split(&buffer);
        pending.extend(complete);
        buffer = rest;
    }
    // A last statement without its ';' runs too.
    if !flotilla_store::sql_text::only_comments(&buffer) {
        pending.push(buffer.trim().to_string());
    }
    session.run(&pending, &mut out).await?;
    out.flush()?;
    Ok(())
}

async fn read_file(session: &mut Session, path: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    run_script(session, &text).await
}

fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLOTILLA_HISTORY") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".flotilla_history"))
}

async fn interactive(session: &mut Session) -> anyhow::Result<()> {
    let status = session.node.get("/v1/status").await?;
    println!(
        "flotilla shell: {} ({} {}, cluster {}, position {})",
        session.node.url(),
        status["role"].as_str().unwrap_or("?"),
        status["id"].as_str().unwrap_or("?"),
        status["cluster_id"].as_str().unwrap_or("?"),
        status["position"].as_str().unwrap_or("?"),
    );
    if status["role"] == "follower" {
        println!(
            "reads run here; writes go to the leader at {}",
            status["leader"].as_str().unwrap_or("?")
        );
    }
    println!("Enter SQL ending in ';' (it may span lines), .help for help, Ctrl-D to leave.");
    let mut editor = rustyline::DefaultEditor::new().context("cannot start the line editor")?;
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let mut out = std::io::stdout();
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "flotilla> "
        } else {
            "     ...> "
        };
        let line = tokio::task::block_in_place(|| editor.readline(prompt));
        let line = match line {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading the terminal failed"),
        };
        if buffer.is_empty() && line.trim_start().starts_with('.') {
            let _ = editor.add_history_entry(line.trim());
            match dot::run(session, line.trim(), &mut out).await {
                Ok(dot::Flow::Continue) => {}
                Ok(dot::Flow::Quit) => break,
                Ok(dot::Flow::Read(path)) => {
                    if let Err(e) = read_file(session, &path).await {
                        eprintln!("error: {e:#}");
                    }
                }
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        let (complete, rest) = flotilla_store::sql_text::split(&buffer);
        if complete.is_empty() {
            if flotilla_store::sql_text::only_comments(&buffer) {
                buffer.clear();
            }
            continue;
        }
        let entered = buffer[..buffer.len() - rest.len()].trim().to_string();
        let _ = editor.add_history_entry(entered.replace('\n', " "));
        buffer = if rest.trim().is_empty() {
            String::new()
        } else {
            rest
        };
        if let Err(e) = session.run(&complete, &mut out).await {
            eprintln!("error: {e:#}");
        }
        out.flush()?;
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}
