//! `flotilla`: run a node, talk to one, or see a cluster work (`flotilla demo`).

mod backup;
mod cert;
mod changes;
mod cluster;
mod collab;
mod conflicts;
mod demo;
mod demo_failover;
mod demo_multi_dc;
mod demo_trigger;
mod device;
mod log_tool;
mod pipeline;
mod serve;
mod shell;
mod sql;
mod status;
mod token;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "A replicated SQL database built on SQLite"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The API token to present to nodes (needed where authentication is on).
    #[arg(long, global = true, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA certificate (PEM) https:// nodes are verified against. For `serve`: the CA its
    /// leader and pipeline targets are verified against.
    #[arg(long, global = true, env = "FLOTILLA_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: a leader, or with --follow a follower of a leader.
    Serve(Box<serve::ServeArgs>),
    /// Run SQL on a node: reads there, writes on its leader; statements given together run as
    /// one transaction.
    Sql(sql::SqlArgs),
    /// An interactive SQL shell (history, multi-line input, .help for its dot-commands), or a
    /// script runner with -f or standard input.
    Shell(shell::ShellArgs),
    /// Show a node and, on a leader, its followers with their lag.
    Status(status::StatusArgs),
    /// Manage a leader's followers.
    #[command(subcommand)]
    Follower(status::FollowerCommand),
    /// A cluster that elects its leader (`serve --cluster`): its members and who leads.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Hand a cluster's leadership to a member (switchover, with nothing lost).
    Promote(cluster::PromoteArgs),
    /// Copy a node's database to a file: SQLite (opens with sqlite3) or a SQL dump.
    Backup(backup::BackupArgs),
    /// Load a backup (a SQLite file or a SQL dump) into a cluster, replicated to every follower.
    Restore(backup::RestoreArgs),
    /// Tail a leader's change feed: one JSON line per committed transaction.
    Changes(changes::ChangesArgs),
    /// Trigger-based replication: filtered, reshaped changes delivered to PostgreSQL, another
    /// Flotilla or a file.
    #[command(subcommand)]
    Pipeline(pipeline::PipelineCommand),
    /// Multi-leader conflicts: list them, set policies, resolve one.
    #[command(subcommand)]
    Conflicts(conflicts::ConflictsCommand),
    /// Offline devices: register one (its token), list them, revoke one.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Which rows of which tables devices pull and may push.
    #[command(subcommand)]
    Shape(device::ShapeCommand),
    /// Collaborative text columns: documents many people edit at once, live.
    #[command(subcommand)]
    Collab(collab::CollabCommand),
    /// API tokens: make, list and revoke them (admin role).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// TLS certificates for a test cluster.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Inspect or repair a stopped node's replication log.
    #[command(subcommand)]
    Log(log_tool::LogCommand),
    /// Start a leader and followers on this machine, replicate, and check they are identical.
    Demo(demo::DemoArgs),
    /// Measure replication: commit throughput, follower lag, catch-up, bootstrap.
    Bench(flotilla_bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a terminal: logs sent to a file stay plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        flotilla_client::set_defaults(cli.token.clone(), cli.tls_ca.as_deref())?;
        match cli.command {
            Command::Serve(a) => serve::run(*a, cli.tls_ca.clone()).await,
            Command::Token(c) => token::run(c).await,
            Command::Device(c) => device::run(c).await,
            Command::Shape(c) => device::shape(c).await,
            Command::Collab(c) => collab::run(c).await,
            Command::Conflicts(c) => conflicts::run(c).await,
            Command::Cert(c) => cert::run(c),
            Command::Sql(a) => sql::run(a).await,
            Command::Shell(a) => shell::run(a).await,
            Command::Status(a) => status::run(a).await,
            Command::Follower(c) => status::follower(c).await,
            Command::Cluster(c) => cluster::run(c).await,
            Command::Promote(a) => cluster::promote(a).await,
            Command::Changes(a) => changes::run(a).await,
            Command::Backup(a) => backup::backup(a).await,
            Command::Restore(a) => backup::restore(a).await,
            Command::Pipeline(c) => pipeline::run(c).await,
            Command::Log(c) => log_tool::run(c),
            Command::Demo(a) => demo::run(a).await,
            Command::Bench(a) => flotilla_bench::run(a).await,
        }
    });
    // A statement still running on a blocking thread (a query past its deadline check, a
    // stalled stream) must not hold the process: dropping a runtime would wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
