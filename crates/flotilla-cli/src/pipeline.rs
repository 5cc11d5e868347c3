//! `flotilla pipeline add | list | status | pause | resume | remove`: trigger-based
//! replication, managed on a leader over its API.

use anyhow::Context;
use clap::{Args, Subcommand};
use flotilla_client::Client;
use flotilla_types::{split_assignment, Computed, PipelineSpec, Rename};
use serde_json::Value;

#[derive(Subcommand)]
pub enum PipelineCommand {
    /// Add a pipeline: Flotilla installs triggers on the source table and delivers each change
    /// (filtered, reshaped) to the target, starting with the rows already there.
    #[command(after_help = "Examples:
  flotilla pipeline add --node 127.0.0.1:4790 big-orders --source orders --where 'total > 100' \\
      --rename total=amount --into big_orders --target postgres://app:secret@127.0.0.1:5432/shop
  flotilla pipeline add --node 127.0.0.1:4790 audit --source notes \\
      --target file:$PWD/data/leader/exports/audit.ndjson   # absolute, under the leader's exports/")]
    Add(Box<AddArgs>),
    /// List the pipelines with their state and backlog.
    #[command(after_help = "Examples:
  flotilla pipeline list --node 127.0.0.1:4790")]
    List(NodeArg),
    /// One pipeline in detail.
    #[command(after_help = "Examples:
  flotilla pipeline status --node 127.0.0.1:4790 big-orders")]
    Status(NamedArgs),
    /// Stop delivering (changes keep being captured).
    #[command(after_help = "Examples:
  flotilla pipeline pause --node 127.0.0.1:4790 big-orders")]
    Pause(NamedArgs),
    /// Deliver again, from where delivery stopped.
    #[command(after_help = "Examples:
  flotilla pipeline resume --node 127.0.0.1:4790 big-orders")]
    Resume(NamedArgs),
    /// Remove a pipeline: its triggers and undelivered changes are dropped.
    #[command(after_help = "Examples:
  flotilla pipeline remove --node 127.0.0.1:4790 big-orders")]
    Remove(NamedArgs),
}

#[derive(Args)]
pub struct NodeArg {
    /// The leader's URL.
    #[arg(long, default_value = "http://127.0.0.1:4790")]
    node: String,
    /// Print the node's JSON answer.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct NamedArgs {
    #[command(flatten)]
    node: NodeArg,
    /// The pipeline's name.
    name: String,
}

#[derive(Args)]
pub struct AddArgs {
    #[command(flatten)]
    node: NodeArg,
    /// The pipeline's name (letters, digits, '-' and '_').
    name: String,
    /// The source table (it needs a PRIMARY KEY).
    #[arg(long)]
    source: String,
    /// Source columns to deliver, comma-separated (default: all; the key always).
    #[arg(long, value_delimiter = ',')]
    columns: Vec<String>,
    /// Deliver only rows for which this SQL expression over the source row is true.
    #[arg(long = "where")]
    predicate: Option<String>,
    /// Rename a column at the target: OLD=NEW (repeatable).
    #[arg(long = "rename")]
    renames: Vec<String>,
    /// Add a target column computed by a SQL expression over the source row: NAME=EXPR
    /// (repeatable).
    #[arg(long = "compute")]
    computed: Vec<String>,
    /// The target table (default: the source table's name).
    #[arg(long)]
    into: Option<String>,
    /// postgres://USER[:PASSWORD]@HOST:PORT/DB, http://HOST:PORT (another Flotilla), file:PATH
    /// (NDJSON), or file:- (stdout).
    #[arg(long)]
    target: String,
    /// A statement run on the target for each change ($1 the operation, then the delivered
    /// columns in order, as text).
    #[arg(long)]
    apply_sql: Option<String>,
    /// Warn in status and metrics when more changes than this wait.
    #[arg(long)]
    backlog_warn_rows: Option<u64>,
}

impl AddArgs {
    fn spec(&self) -> anyhow::Result<PipelineSpec> {
        let renames = self
            .renames
            .iter()
            .map(|r| {
                split_assignment(r)
                    .map(|(from, to)| Rename {
                        from: from.into(),
                        to: to.into(),
                    })
                    .with_context(|| format!("--rename {r:?}: use OLD=NEW"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let computed = self
            .computed
            .iter()
            .map(|c| {
                split_assignment(c)
                    .map(|(name, expr)| Computed {
                        name: name.into(),
                        expr: expr.into(),
                    })
                    .with_context(|| format!("--compute {c:?}: use NAME=SQL_EXPRESSION"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let spec = PipelineSpec {
            name: self.name.clone(),
            source: self.source.clone(),
            columns: self.columns.iter().map(|c| c.trim().to_string()).collect(),
            predicate: self.predicate.clone(),
            renames,
            computed,
            into: self.into.clone(),
            target: self.target.clone(),
            apply_sql: self.apply_sql.clone(),
            backlog_warn_rows: self.backlog_warn_rows,
        };
        spec.check().map_err(anyhow::Error::msg)?;
        Ok(spec)
    }
}

fn show(v: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!("{}", line(v));
    if let Some(e) = v["last_error"].as_str() {
        println!("  last error: {e}");
    }
    if let Some(w) = v["backlog_warning"].as_str() {
        println!("  warning: {w}");
    }
    Ok(())
}

/// Everything the node says about one pipeline, one field a line.
fn detail(v: &Value) -> String {
    let Some(fields) = v.as_object() else {
        return format!("{v}\n");
    };
    let width = fields.keys().map(|k| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, value) in fields {
        let shown = match value {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Array(a) if a.iter().all(Value::is_string) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        };
        out.push_str(&format!("{:<width$}  {shown}\n", k.replace('_', " ")));
    }
    out
}

/// Pipelines as a table with a header (`pipeline list`, `status`).
pub fn list_table(list: &[Value]) -> String {
    let headers: Vec<String> = [
        "pipeline",
        "state",
        "source",
        "into",
        "target",
        "delivered",
        "backlog",
        "oldest",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect();
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|v| {
            vec![
                text(&v["name"]),
                text(&v["state"]),
                text(&v["source"]),
                text(&v["into"]),
                text(&v["target"]),
                text(&v["delivered_rows"]),
                text(&v["backlog_rows"]),
                v["oldest_change_age_ms"]
                    .as_u64()
                    .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    crate::shell::render::table(&headers, &rows)
}

fn line(v: &Value) -> String {
    let age = v["oldest_change_age_ms"]
        .as_u64()
        .map(|ms| format!(", oldest {:.1} s", ms as f64 / 1000.0))
        .unwrap_or_default();
    format!(
        "{:<20} {:<10} {} -> {} ({})  delivered {}  backlog {}{age}",
        v["name"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?"),
        v["source"].as_str().unwrap_or("?"),
        v["into"].as_str().unwrap_or("?"),
        v["target"].as_str().unwrap_or("?"),
        v["delivered_rows"],
        v["backlog_rows"],
    )
}

pub async fn run(c: PipelineCommand) -> anyhow::Result<()> {
    match c {
        PipelineCommand::Add(a) => {
            let spec = a.spec()?;
            let v = Client::new(&a.node.node)
                .post("/v1/pipelines", &serde_json::to_value(&spec)?)
                .await?;
            if a.node.json {
                return show(&v, true);
            }
            println!(
                "pipeline {} added at position {}: {} -> {} ({})",
                spec.name,
                v["position"].as_str().unwrap_or("?"),
                spec.source,
                spec.target_table(),
                flotilla_types::PipelineTarget::redacted(&spec.target)
            );
            Ok(())
        }
        PipelineCommand::List(a) => {
            let v = Client::new(&a.node).get("/v1/pipelines").await?;
            if a.json {
                return show(&v, true);
            }
            let list = v["pipelines"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no pipelines (add one with `flotilla pipeline add`)");
                return Ok(());
            }
            print!("{}", list_table(&list));
            for p in &list {
                if let Some(e) = p["last_error"].as_str() {
                    println!("{}: last error: {e}", p["name"].as_str().unwrap_or("?"));
                }
            }
            Ok(())
        }
        PipelineCommand::Status(a) => {
            let v = Client::new(&a.node.node)
                .get(&format!("/v1/pipelines/{}", a.name))
                .await?;
            if a.node.json {
                return show(&v, true);
            }
            print!("{}", detail(&v));
            Ok(())
        }
        PipelineCommand::Pause(a) => {
            let v = Client::new(&a.node.node)
                .post(&format!("/v1/pipelines/{}/pause", a.name), &Value::Null)
                .await?;
            show(&v, a.node.json)
        }
        PipelineCommand::Resume(a) => {
            let v = Client::new(&a.node.node)
                .post(&format!("/v1/pipelines/{}/resume", a.name), &Value::Null)
                .await?;
            show(&v, a.node.json)
        }
        PipelineCommand::Remove(a) => {
            Client::new(&a.node.node)
                .delete(&format!("/v1/pipelines/{}", a.name))
                .await?;
            println!(
                "pipeline {} removed (its triggers and undelivered changes are gone)",
                a.name
            );
            Ok(())
        }
    }
}
