//! A follower whose disk fills up pauses replication with a clear status and resumes when space
//! returns. Needs root (it mounts a small tmpfs as the follower's data directory).

mod common;

use common::*;
use flotilla_client::Client;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_replication_until_space_returns() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let lc = Client::new(&leader.url);
    exec(
        &lc,
        json!([{ "sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)" }]),
    )
    .await;
    let disk = Tmpfs::mount(&dir.path().join("f"), "2m");
    let f = start(dir.path(), "f", Some(&leader.url)).await;
    let fc = Client::new(&f.url);
    wait_for(&fc, &position(&lc).await).await;
    // About 6 MiB of rows: more than the follower's disk holds.
    for i in 0..60 {
        let stmts: Vec<Value> = (0..25)
            .map(|j| json!({ "sql": "INSERT INTO t(v) VALUES (?1)", "params": [format!("{i}-{j}-{}", "d".repeat(4000))] }))
            .collect();
        exec(&lc, Value::Array(stmts)).await;
    }
    let s = wait_status(&fc, "disk_full", |s| s["state"] == "disk_full").await;
    let err = s["error"].as_str().unwrap();
    assert!(err.contains("disk is full"), "{err}");
    // Nothing half-applied: the follower still answers reads at a consistent position.
    let at = rows(&fc, "SELECT count(*) FROM t").await;
    assert!(at[0][0].as_i64().unwrap() < 1500);
    disk.resize("64m");
    wait_for(&fc, &position(&lc).await).await;
    let s = wait_status(&fc, "streaming again", |s| s["state"] == "streaming").await;
    assert_eq!(s["error"], Value::Null);
    assert_identical(&leader, &f).await;
    drop(f);
}
