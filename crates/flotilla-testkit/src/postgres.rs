//! Local PostgreSQL servers for side-by-side benchmarks (and, later, pipeline tests): a primary
//! and streaming standbys made with `initdb`, `pg_ctl` and `pg_basebackup` in a temporary
//! directory, on free loopback ports, stopped when dropped (also when the command is
//! interrupted). PostgreSQL refuses to run as root, so as root the servers run as the `postgres`
//! user that Debian's package creates.

use crate::apt::is_root;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where PostgreSQL's server programs are: `$FLOTILLA_PG_BIN`, Debian's
/// `/usr/lib/postgresql/<version>/bin` (newest first), or `pg_ctl` on `PATH`.
fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FLOTILLA_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// The server programs, installed first if they are missing (Debian's `postgresql` package,
/// through apt-get, as root or with `sudo -n`): what the test suite calls, so that it runs on a
/// machine that has only the Rust toolchain. Concurrent callers (test binaries run in parallel)
/// take turns on a lock file; the second finds the programs the first installed.
pub fn find_or_install_bin() -> anyhow::Result<PathBuf> {
    crate::apt::find_or_install("postgresql", &["postgresql"], INSTALL_HINT, find_bin)
}

/// How to install the server programs, for the message when they are missing.
const INSTALL_HINT: &str = "PostgreSQL's server programs (initdb, pg_ctl, pg_basebackup) were not \
     found: install them (Debian/Ubuntu: apt-get install postgresql; they go to \
     /usr/lib/postgresql/<version>/bin) or point FLOTILLA_PG_BIN at their directory";

/// The uid and gid to run PostgreSQL as: `None` when not root.
fn run_as() -> anyhow::Result<Option<(u32, u32)>> {
    if !is_root() {
        return Ok(None);
    }
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .context("running id")?;
    let gid = Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .context("running id")?;
    if !out.status.success() {
        bail!(
            "running as root, and there is no `postgres` user to run PostgreSQL as (it refuses \
             to run as root): create one, or run as an ordinary user"
        );
    }
    let parse =
        |o: &[u8]| -> anyhow::Result<u32> { Ok(String::from_utf8_lossy(o).trim().parse()?) };
    Ok(Some((parse(&out.stdout)?, parse(&gid.stdout)?)))
}

/// One running PostgreSQL server (a primary or a standby).
pub struct PgServer {
    bin: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    owner: Option<(u32, u32)>,
    running: bool,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PgServer {
    fn command(&self, program: &str) -> Command {
        command(&self.bin, program, self.owner)
    }

    /// One of PostgreSQL's programs (`pg_dump`, `psql`, …), run as the user the server runs as,
    /// with `-h 127.0.0.1 -p PORT -U postgres` to be added by the caller.
    pub fn tool(&self, program: &str) -> Command {
        self.command(program)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host=127.0.0.1 port=... user=postgres dbname=postgres`.
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// A new primary in `dir`, started with `settings` (name, value) added to its configuration.
    /// `dir`'s parent must be a directory of its own (see [`pg_root`]): it is given to the user
    /// PostgreSQL runs as.
    pub fn primary(bin: &Path, dir: &Path, settings: &[(&str, &str)]) -> anyhow::Result<PgServer> {
        let owner = run_as()?;
        let root = dir.parent().unwrap_or(dir);
        chown_tree(root, owner)?;
        let mut s = PgServer {
            bin: bin.to_path_buf(),
            data: dir.to_path_buf(),
            port: free_port()?,
            owner,
            running: false,
        };
        let out = s
            .command("initdb")
            .arg("-D")
            .arg(dir)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        s.configure(settings)?;
        s.start()?;
        Ok(s)
    }

    /// A streaming standby of this server in `dir`, made with `pg_basebackup -R`, started.
    pub fn standby(&self, dir: &Path, settings: &[(&str, &str)]) -> anyhow::Result<PgServer> {
        let mut s = PgServer {
            bin: self.bin.clone(),
            data: dir.to_path_buf(),
            port: free_port()?,
            owner: self.owner,
            running: false,
        };
        let out = self
            .command("pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("-D")
            .arg(dir)
            .args(["-R", "-X", "stream", "-c", "fast"])
            .output()
            .context("running pg_basebackup")?;
        if !out.status.success() {
            bail!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        s.configure(settings)?;
        s.start()?;
        Ok(s)
    }

    fn configure(&self, settings: &[(&str, &str)]) -> anyhow::Result<()> {
        use std::io::Write;
        let conf = self.data.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .with_context(|| format!("opening {}", conf.display()))?;
        writeln!(f, "\n# flotilla bench")?;
        writeln!(f, "listen_addresses = '127.0.0.1'")?;
        writeln!(f, "port = {}", self.port)?;
        writeln!(f, "unix_socket_directories = '{}'", self.data.display())?;
        for (k, v) in settings {
            writeln!(f, "{k} = {v}")?;
        }
        Ok(())
    }

    /// Starts a stopped server again (same data, same port).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.running {
            return Ok(());
        }
        self.start()
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let log = self.data.join("server.log");
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                tail.lines().rev().take(5).collect::<Vec<_>>().join("\n")
            );
        }
        self.running = true;
        Ok(())
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
            self.running = false;
        }
    }

    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.conninfo(), tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to PostgreSQL on port {}", self.port))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn command(bin: &Path, program: &str, owner: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(bin.join(program));
    if let Some((uid, gid)) = owner {
        use std::os::unix::process::CommandExt;
        c.uid(uid).gid(gid);
    }
    // PostgreSQL's programs look for a home and a locale; keep both neutral.
    c.env("LC_ALL", "C").env_remove("PGDATA");
    c
}

/// A temporary directory for PostgreSQL data directories, directly under the system's temporary
/// directory (whose parents everyone may traverse), removed when dropped.
pub fn pg_root() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix("flotilla-pg-").tempdir()?)
}

/// Gives `dir` (and what is in it) to the PostgreSQL user.
fn chown_tree(dir: &Path, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .with_context(|| format!("giving {} to the postgres user", dir.display()))?;
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        std::os::unix::fs::chown(&p, Some(uid), Some(gid))?;
    }
    Ok(())
}
