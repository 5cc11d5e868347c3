//! A Flotilla data centre for the calendar, run in this process (`flotilla serve --dc home
//! --auth` would do the same): its own tokio runtime on a thread of its own, a real socket on
//! loopback. The calendar's devices talk to it over HTTP like to any other server.

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Server {
    pub url: String,
    /// The admin token the server wrote at its first start.
    pub admin: String,
    /// The server's thread: it ends when the node stops (Ctrl-C, SIGTERM, a fatal error).
    thread: std::thread::JoinHandle<()>,
}

/// The calendar's schema on the server: meetings with a random text key (a key no two
/// devices make alike), their owner (what a device's shape selects by) and what they are.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(8)))),
    owner TEXT NOT NULL,
    title TEXT NOT NULL,
    starts TEXT NOT NULL,
    minutes INTEGER NOT NULL DEFAULT 30
)";

impl Server {
    /// Starts a data centre `home` with its data in `data`, listening on `listen`.
    pub fn start(data: &Path, listen: &str) -> anyhow::Result<Server> {
        let config = flotilla_node::config::ConfigFile {
            id: Some("home".into()),
            data: Some(data.to_path_buf()),
            listen: Some(listen.into()),
            dc: Some("home".into()),
            auth: Some(true),
            ..Default::default()
        }
        .validate()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<String>>();
        let thread = std::thread::Builder::new()
            .name("calendar-server".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let tell = ready_tx.clone();
                    tokio::spawn(async move {
                        if let Ok(url) = rx.await {
                            let _ = tell.send(Ok(url));
                        }
                    });
                    if let Err(e) = flotilla_node::run(config, Some(tx)).await {
                        let _ = ready_tx.send(Err(e));
                    }
                });
            })?;
        let url = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .context("the server did not start within 30 s")??;
        let token_file = data.join("admin.token");
        let started = Instant::now();
        let admin = loop {
            if let Ok(t) = std::fs::read_to_string(&token_file) {
                if !t.trim().is_empty() {
                    break t.trim().to_string();
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "the server wrote no admin token to {}",
                    token_file.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Server { url, admin, thread })
    }

    /// Waits until the node stops (Ctrl-C or SIGTERM stop it cleanly).
    pub fn wait(self) {
        let _ = self.thread.join();
    }

    /// An admin request; the answer's JSON, or the server's error.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {}", self.admin);
        let mut resp = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call()?,
            ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call()?,
            ("PUT", b) => agent
                .put(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(serde_json::to_vec(&b.unwrap_or(json!({})))?)?,
            (_, b) => agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(serde_json::to_vec(&b.unwrap_or(json!({})))?)?,
        };
        let status = resp.status().as_u16();
        let v: Value = serde_json::from_slice(&resp.body_mut().read_to_vec()?).unwrap_or_default();
        if status != 200 {
            bail!("{method} {path}: {status} {}", v["error"]["message"]);
        }
        Ok(v)
    }

    /// Makes the calendar's table, the shape (each user's own meetings) and the policy (a
    /// meeting moved on one device and deleted on another comes back: update-wins).
    pub fn prepare_calendar(&self) -> anyhow::Result<()> {
        self.call(
            "POST",
            "/v1/execute",
            Some(json!({ "statements": [{ "sql": SCHEMA }] })),
        )?;
        self.call(
            "PUT",
            "/v1/shapes",
            Some(json!({ "table": "events", "where": "owner = :user" })),
        )?;
        self.call(
            "PUT",
            "/v1/conflicts/policies",
            Some(json!({ "table": "events", "policy": "update-wins" })),
        )?;
        Ok(())
    }

    /// Registers a device of `user`; returns its token.
    pub fn add_device(&self, name: &str, user: &str) -> anyhow::Result<String> {
        let v = self.call(
            "POST",
            "/v1/devices",
            Some(json!({ "name": name, "user": user })),
        )?;
        Ok(v["token"].as_str().unwrap_or_default().to_string())
    }

    /// The meetings of `user` as the server holds them: (title, starts, minutes), in order.
    pub fn events_of(&self, user: &str) -> anyhow::Result<Vec<(String, String, i64)>> {
        let v = self.call(
            "POST",
            "/v1/query",
            Some(json!({
                "sql": "SELECT title, starts, minutes FROM events WHERE owner = ?1 ORDER BY starts, id",
                "params": [user],
            })),
        )?;
        Ok(v["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            r[0].as_str().unwrap_or_default().to_string(),
                            r[1].as_str().unwrap_or_default().to_string(),
                            r[2].as_i64().unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}
