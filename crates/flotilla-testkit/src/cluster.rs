//! Local clusters of real `flotilla serve` processes, for the demo and the benchmarks: each node
//! is a child process on a free loopback port in a temporary directory, killed when dropped
//! (also when the command is interrupted).

use anyhow::{bail, Context};

/// The running `flotilla` executable (the demo and benchmarks start copies of themselves).
pub fn this_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the flotilla executable")
}
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

pub struct LocalNode {
    exe: PathBuf,
    pub id: String,
    pub dir: PathBuf,
    pub url: String,
    follow: Option<String>,
    extra: Vec<String>,
    /// The group id the process runs with (a firewall rule can then match what it sends).
    gid: Option<u32>,
    child: Option<Child>,
}

impl LocalNode {
    /// Starts a node and waits until it listens.
    pub async fn start(
        exe: &Path,
        root: &Path,
        id: &str,
        follow: Option<&str>,
        extra: &[&str],
    ) -> anyhow::Result<LocalNode> {
        let mut node = LocalNode {
            exe: exe.to_path_buf(),
            id: id.to_string(),
            dir: root.join(id),
            url: String::new(),
            follow: follow.map(str::to_string),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            gid: None,
            child: None,
        };
        node.spawn("127.0.0.1:0").await?;
        Ok(node)
    }

    /// Starts a node listening on `listen` (a port picked beforehand: cluster members name
    /// each other's URLs when they start).
    pub async fn start_on(
        exe: &Path,
        root: &Path,
        id: &str,
        listen: &str,
        extra: &[&str],
    ) -> anyhow::Result<LocalNode> {
        LocalNode::start_on_as(exe, root, id, listen, extra, None).await
    }

    /// [`LocalNode::start_on`] with the process in group `gid` (needs root): what it sends can
    /// then be told apart by a firewall (`iptables -m owner --gid-owner`), also on loopback.
    pub async fn start_on_as(
        exe: &Path,
        root: &Path,
        id: &str,
        listen: &str,
        extra: &[&str],
        gid: Option<u32>,
    ) -> anyhow::Result<LocalNode> {
        let mut node = LocalNode {
            exe: exe.to_path_buf(),
            id: id.to_string(),
            dir: root.join(id),
            url: String::new(),
            follow: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            gid,
            child: None,
        };
        node.spawn(listen).await?;
        Ok(node)
    }

    async fn spawn(&mut self, listen: &str) -> anyhow::Result<()> {
        let addr_file = self.dir.join("http.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = Command::new(&self.exe);
        cmd.arg("serve")
            .arg("--id")
            .arg(&self.id)
            .arg("--data")
            .arg(&self.dir)
            .arg("--listen")
            .arg(listen)
            .args(&self.extra)
            .env("FLOTILLA_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(
                match std::fs::File::create(self.dir.with_extension("log")) {
                    Ok(f) => std::process::Stdio::from(f),
                    Err(_) => std::process::Stdio::null(),
                },
            )
            .kill_on_drop(true);
        if let Some(f) = &self.follow {
            cmd.arg("--follow").arg(f);
        }
        if let Some(g) = self.gid {
            cmd.gid(g);
        }
        let mut child = cmd.spawn().context("cannot start a node process")?;
        let started = Instant::now();
        loop {
            if let Ok(url) = std::fs::read_to_string(&addr_file) {
                if !url.is_empty() {
                    self.url = url;
                    break;
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!("node {} exited during start-up ({status})", self.id);
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("node {} did not start within 30 s", self.id);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no clean shutdown.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// SIGTERM, then waits (at most `within`) for the process to exit. Returns how long it
    /// took, or `None` if it was still running (it is then killed).
    pub async fn terminate(&mut self, within: Duration) -> Option<Duration> {
        let mut child = self.child.take()?;
        let pid = child.id()?;
        let started = Instant::now();
        // SAFETY: kill(2) with a pid this process started and still owns (not yet reaped).
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        match tokio::time::timeout(within, child.wait()).await {
            Ok(_) => Some(started.elapsed()),
            Err(_) => {
                let _ = child.kill().await;
                None
            }
        }
    }

    /// Restarts on the same port (its URL stays valid for clients and followers).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        let listen = self.url.trim_start_matches("http://").to_string();
        // The port was just released; retry briefly if another process grabbed it meanwhile.
        for attempt in 0..50 {
            match self.spawn(&listen).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 49 => {
                    tracing::debug!("restart attempt failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!()
    }

    /// The node process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// CPU time (user + system) the node process has used so far, from `/proc` (Linux).
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // Clock ticks are 100 per second on Linux.
        Some(Duration::from_millis(ticks * 10))
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("db.sqlite")
    }
}

/// `n` loopback ports free now (bound, then released): for processes that must know each
/// other's addresses before they start.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

/// `n` voters of a new cluster (`serve --cluster`) named n1, n2, … on free loopback ports,
/// each started with the whole list and `extra`.
pub async fn start_voters(
    exe: &Path,
    root: &Path,
    n: usize,
    extra: &[&str],
) -> anyhow::Result<Vec<LocalNode>> {
    let ports = free_ports(n);
    let list = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("n{}=127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::with_capacity(n);
    for (i, p) in ports.iter().enumerate() {
        let mut args = vec!["--cluster", list.as_str()];
        args.extend_from_slice(extra);
        let listen = format!("127.0.0.1:{p}");
        let id = format!("n{}", i + 1);
        members.push(
            LocalNode::start_on(exe, root, &id, &listen, &args)
                .await
                .with_context(|| format!("starting {id}"))?,
        );
    }
    Ok(members)
}

/// (page count, digest) of a node's database as a read-only connection sees it now.
pub fn page_digest(db: &Path) -> anyhow::Result<(u32, u64)> {
    let conn = flotilla_store::open_reader(db)?;
    Ok(flotilla_store::page_digest(&conn)?)
}

/// A memory figure of process `pid` from `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in MiB.
pub fn proc_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("unreadable {line:?}"))?;
    Ok(kib / 1024.0)
}
