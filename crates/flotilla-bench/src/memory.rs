//! `flotilla bench memory`: memory stays bounded at both ends of a replication session.
//!
//! 1. A follower is stopped while the leader commits a large backlog (2 GiB by default, of
//!    transactions of about 1 MiB), then restarted: its peak resident memory (`VmHWM` in
//!    `/proc/PID/status`, the process's high-water mark) while it catches up.
//! 2. A follower stops reading (`SIGSTOP`: it neither reads its socket nor acknowledges) while
//!    the leader commits a backlog: the leader's resident memory before and at its highest
//!    (sampled every 50 ms), against the bytes committed meanwhile.

use super::{fill, leader_with_schema, leader_with_schema_as, position, wait_for, Figure, SCHEMA};
use flotilla_client::Client;
use flotilla_testkit::cluster::{proc_mib, this_exe, LocalNode};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct MemoryResults {
    pub backlog_mib: u64,
    pub stalled_mib: u64,
    pub follower_peak_mib: Figure,
    pub follower_catchup_s: Figure,
    pub leader_before_mib: Figure,
    pub leader_peak_mib: Figure,
}

fn signal(node: &LocalNode, sig: i32) -> anyhow::Result<()> {
    let pid = pid_of(node)?;
    // SAFETY: kill(2) with a pid this process started and a valid signal number.
    if unsafe { libc::kill(pid as i32, sig) } != 0 {
        anyhow::bail!(
            "signal {sig} to {}: {}",
            node.id,
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn pid_of(node: &LocalNode) -> anyhow::Result<u32> {
    node.pid()
        .ok_or_else(|| anyhow::anyhow!("{} is not running", node.id))
}

pub(crate) async fn run(
    root: &Path,
    runs: usize,
    backlog_mib: u64,
    stalled_mib: u64,
    progress: &dyn Fn(&str),
) -> anyhow::Result<MemoryResults> {
    let exe = this_exe()?;
    let mut r = MemoryResults {
        backlog_mib,
        stalled_mib,
        follower_peak_mib: Figure::new(
            &format!("follower peak RSS catching up a {backlog_mib} MiB backlog"),
            "MiB",
        ),
        follower_catchup_s: Figure::new(
            &format!("follower catch-up of the {backlog_mib} MiB backlog"),
            "s",
        ),
        leader_before_mib: Figure::new("leader RSS before a follower stops reading", "MiB"),
        leader_peak_mib: Figure::new(
            &format!("leader peak RSS while committing {stalled_mib} MiB to a stopped follower"),
            "MiB",
        ),
    };
    for run in 0..runs {
        let dir = root.join(format!("memory-{run}"));
        progress(&format!(
            "run {}/{runs}: a follower catching up {backlog_mib} MiB",
            run + 1
        ));
        {
            // Retention must keep the whole backlog, or the follower would bootstrap instead.
            std::fs::create_dir_all(&dir)?;
            let config = dir.join("leader.toml");
            std::fs::write(
                &config,
                format!("[log]\nretention-max-mib = {}\n", backlog_mib * 2 + 1024),
            )?;
            let config = config.to_string_lossy().to_string();
            let leader =
                LocalNode::start(&exe, &dir, "leader", None, &["--config", &config]).await?;
            let lc = Client::new(&leader.url);
            leader_with_schema_as(&lc, SCHEMA).await?;
            let start = position(&lc).await?;
            let mut f = LocalNode::start(&exe, &dir, "f", Some(&leader.url), &[]).await?;
            wait_for(&Client::new(&f.url), &start).await?;
            f.kill().await;
            // About 1 MiB per transaction: 10,000 rows of 100 bytes.
            fill(&lc, backlog_mib, 10_000, 2).await?;
            let head = position(&lc).await?;
            let t = std::time::Instant::now();
            f.restart().await?;
            wait_for(&Client::new(&f.url), &head).await?;
            r.follower_catchup_s.values.push(t.elapsed().as_secs_f64());
            let metrics = reqwest::get(format!("{}/metrics", f.url))
                .await?
                .text()
                .await?;
            anyhow::ensure!(
                metrics.contains("flotilla_bootstraps_total 0"),
                "the follower bootstrapped instead of catching up from the log"
            );
            r.follower_peak_mib
                .values
                .push(proc_mib(pid_of(&f)?, "VmHWM:")?);
        }
        progress(&format!(
            "run {}/{runs}: the leader committing {stalled_mib} MiB to a stopped follower",
            run + 1
        ));
        {
            let (leader, lc) = leader_with_schema(&exe, &dir, "leader2").await?;
            fill(&lc, 16, 10_000, 2).await?;
            let start = position(&lc).await?;
            let f = LocalNode::start(&exe, &dir, "f2", Some(&leader.url), &[]).await?;
            wait_for(&Client::new(&f.url), &start).await?;
            let leader_pid = pid_of(&leader)?;
            let before = proc_mib(leader_pid, "VmRSS:")?;
            signal(&f, libc::SIGSTOP)?;
            // The highest resident size seen, in KiB, sampled while the backlog is committed.
            let peak_kib = Arc::new(AtomicU64::new(0));
            let sampling = {
                let peak_kib = peak_kib.clone();
                tokio::spawn(async move {
                    while let Ok(v) = proc_mib(leader_pid, "VmRSS:") {
                        peak_kib.fetch_max((v * 1024.0) as u64, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
            };
            let filled = fill(&lc, stalled_mib, 10_000, 2).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            sampling.abort();
            let peak = (peak_kib.load(Ordering::Relaxed) as f64 / 1024.0)
                .max(proc_mib(leader_pid, "VmRSS:")?);
            signal(&f, libc::SIGCONT)?;
            filled?;
            // The follower resumes and catches up: the session survived or came back.
            let head = position(&lc).await?;
            wait_for(&Client::new(&f.url), &head).await?;
            r.leader_before_mib.values.push(before);
            r.leader_peak_mib.values.push(peak);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(r)
}

impl MemoryResults {
    fn figures(&self) -> [&Figure; 4] {
        [
            &self.follower_peak_mib,
            &self.follower_catchup_s,
            &self.leader_before_mib,
            &self.leader_peak_mib,
        ]
    }

    pub(crate) fn print(&self) {
        println!("memory at both ends of a replication session (median [min..max])");
        for f in self.figures() {
            println!(
                "  {:<70} {:>8.1} {} [{:.1}..{:.1}]",
                f.name,
                f.median(),
                f.unit,
                f.min(),
                f.max()
            );
        }
        println!(
            "  leader growth while {} MiB were committed to a stopped follower: {:.1} MiB",
            self.stalled_mib,
            self.leader_peak_mib.median() - self.leader_before_mib.median()
        );
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "scenario": "memory",
            "backlog_mib": self.backlog_mib,
            "stalled_mib": self.stalled_mib,
            "figures": self.figures().iter().map(|f| f.json()).collect::<Vec<_>>(),
        })
    }
}
