//! Installing what a test needs from Debian's packages when it is missing (PostgreSQL's
//! server programs, Chromium, Node.js), so that the suite runs on a machine that has only the
//! Rust toolchain: apt-get as root, or through `sudo -n`. Concurrent callers (test binaries run
//! in parallel) take turns on a lock file named after what they install; the second finds
//! what the first installed.

use anyhow::{bail, Context};
use std::process::Command;

pub(crate) fn is_root() -> bool {
    // /proc/self belongs to the process's effective user.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs `found` and returns what it finds; if nothing, installs `packages` with apt-get and
/// asks again. `hint` tells a person how to install them by hand when that fails.
pub fn find_or_install<T>(
    what: &str,
    packages: &[&str],
    hint: &str,
    found: impl Fn() -> Option<T>,
) -> anyhow::Result<T> {
    if let Some(t) = found() {
        return Ok(t);
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join(format!("flotilla-{what}-install.lock")))
        .context("opening the install lock file")?;
    lock.lock().context("taking the install lock")?;
    if let Some(t) = found() {
        return Ok(t);
    }
    eprintln!(
        "flotilla: installing {what} (apt-get install {})",
        packages.join(" ")
    );
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let mut cmd = if is_root() {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        let out = cmd
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .with_context(|| format!("running apt-get {}; {hint}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "apt-get {} failed: {}; {hint}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq"];
    install.extend_from_slice(packages);
    apt(&install)?;
    found().context(hint.to_string())
}
