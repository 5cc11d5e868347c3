//! `flotilla log check | repair --data DIR`: look for damage in a stopped node's replication
//! log, and cut the log at it when the operator says so.

use clap::Subcommand;
use flotilla_node::data_lock::DataDirLock;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum LogCommand {
    /// Scan every log segment of a node's data directory and report the first damage; changes
    /// nothing (safe while the node runs).
    #[command(after_help = "Examples:
  flotilla log check --data ./data/leader     # the node must be stopped")]
    Check {
        /// The node's data directory.
        #[arg(long)]
        data: PathBuf,
    },
    /// Cut the log at its first damage: the damaged segment is truncated there and later
    /// segments are removed. The node must be stopped. On a leader the database keeps every
    /// commit; followers behind the cut bootstrap from a snapshot.
    #[command(after_help = "Examples:
  flotilla log repair --data ./data/leader         # describes the cut\n  flotilla log repair --data ./data/leader --yes   # makes it")]
    Repair {
        /// The node's data directory.
        #[arg(long)]
        data: PathBuf,
        /// Cut without asking (otherwise the cut is only described).
        #[arg(long)]
        yes: bool,
    },
}

fn log_dir(data: &Path) -> anyhow::Result<PathBuf> {
    let dir = data.join("log");
    if !dir.is_dir() {
        anyhow::bail!(
            "{} has no replication log ({} is missing): is it a leader's data directory?",
            data.display(),
            dir.display()
        );
    }
    Ok(dir)
}

pub fn run(cmd: LogCommand) -> anyhow::Result<()> {
    match cmd {
        LogCommand::Check { data } => {
            let dir = log_dir(&data)?;
            match flotilla_log::check(&dir)? {
                None => println!("the log in {} is intact", dir.display()),
                Some(r) if r.is_torn_tail() => println!(
                    "{}\nThis is a torn last record (a crash during an append): the node cuts \
                     it by itself at its next start.",
                    r.describe()
                ),
                Some(r) => anyhow::bail!(
                    "{}\nThis is corruption: the node will not start until the log is repaired \
                     (`flotilla log repair --data {}`).",
                    r.describe(),
                    data.display()
                ),
            }
        }
        LogCommand::Repair { data, yes } => {
            let dir = log_dir(&data)?;
            let _lock = DataDirLock::acquire(&data, "flotilla log repair")?;
            let Some(report) = flotilla_log::check(&dir)? else {
                println!("the log in {} is intact: nothing to repair", dir.display());
                return Ok(());
            };
            println!("{}", report.describe());
            if !yes {
                println!(
                    "A repair drops the records from lsn {} on from the log. Run again with \
                     --yes to cut it.",
                    report.damage.lsn
                );
                return Ok(());
            }
            flotilla_log::repair(&dir)?;
            println!(
                "Cut the log after lsn {}. On a leader, the database still holds the later \
                 commits: at its next start the log continues after the database's position, and \
                 followers behind it bootstrap from a snapshot.",
                report.last_kept_lsn
            );
        }
    }
    Ok(())
}
