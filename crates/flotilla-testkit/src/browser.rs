//! What the browser tests need, installed when missing (see [`crate::apt`]): Debian's
//! Chromium (Playwright drives it; it cannot download its own browsers here), Node.js to run
//! Playwright, and the npm packages of a package folder (`npm ci`).

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// An executable named `name` on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Chromium: `$FLOTILLA_CHROMIUM`, or `chromium` on `PATH` (Debian's package), installed
/// first if missing.
pub fn chromium() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FLOTILLA_CHROMIUM") {
        return Ok(PathBuf::from(p));
    }
    crate::apt::find_or_install(
        "chromium",
        &["chromium"],
        "Chromium was not found: install it (Debian: apt-get install chromium) or point \
         FLOTILLA_CHROMIUM at its executable",
        || on_path("chromium"),
    )
}

/// The major version of the `node` at `path`.
fn node_major(path: &Path) -> Option<u32> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix('v')?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Node.js (18 or newer) with npm: on `PATH`, or Debian's `nodejs` and `npm` installed.
pub fn node() -> anyhow::Result<PathBuf> {
    let found = || {
        let node = on_path("node")?;
        (node_major(&node)? >= 18 && on_path("npm").is_some()).then_some(node)
    };
    crate::apt::find_or_install(
        "nodejs",
        &["nodejs", "npm"],
        "Node.js 18 or newer with npm was not found: install it (Debian: apt-get install \
         nodejs npm)",
        found,
    )
}

/// Installs the npm packages of the package folder `dir` as its lock file pins them (`npm
/// ci`), unless `probe` (a path under `node_modules`) shows they are there.
pub fn npm_ci(dir: &Path, probe: &str) -> anyhow::Result<()> {
    let ready = || dir.join("node_modules").join(probe).exists();
    if ready() {
        return Ok(());
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("flotilla-npm-ci.lock"))
        .context("opening the npm lock file")?;
    lock.lock().context("taking the npm lock")?;
    if ready() {
        return Ok(());
    }
    eprintln!("flotilla: npm ci in {}", dir.display());
    // No install scripts: nothing the tests use needs one (esbuild's only checks its binary).
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
        .current_dir(dir)
        .output()
        .context("running npm ci")?;
    if !out.status.success() {
        bail!(
            "npm ci in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
