//! `flotilla bench security`: what authentication and TLS cost a leader's commits. The same
//! workload as `bench commit` (one 100-byte row per transaction, 1, 4 and 16 clients, no
//! followers) against three leaders in the same run — open, with tokens, with tokens over TLS —
//! interleaved run by run so that the machine's noise falls on all three alike.

use super::commit::{drive_inserts, CLIENTS};
use super::{leader_with_schema_as, Figure, SCHEMA};
use flotilla_client::{Client, Credentials};
use flotilla_testkit::cluster::{this_exe, LocalNode};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

pub const SETUPS: [&str; 3] = ["open", "auth", "auth+tls"];

pub(crate) struct SecurityCell {
    pub setup: &'static str,
    pub clients: usize,
    pub tps: Figure,
    pub p50_ms: Figure,
    pub p99_ms: Figure,
    /// The node's own CPU time per commit (the benchmark's client runs on the same machine and
    /// pays for its own TLS; this is the server's share).
    pub cpu_us: Figure,
}

pub(crate) struct SecurityResults {
    pub cells: Vec<SecurityCell>,
}

async fn leader(
    exe: &Path,
    root: &Path,
    setup: &str,
    certs: &Path,
) -> anyhow::Result<(LocalNode, Credentials)> {
    let p = |f: &str| certs.join(f).to_string_lossy().to_string();
    let args: Vec<String> = match setup {
        "open" => vec![],
        "auth" => vec!["--auth".into()],
        _ => vec![
            "--auth".into(),
            "--tls-cert".into(),
            p("node.pem"),
            "--tls-key".into(),
            p("node.key"),
            "--tls-ca".into(),
            p("ca.pem"),
        ],
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = LocalNode::start(exe, root, setup.replace('+', "-").as_str(), None, &args).await?;
    let admin = std::fs::read_to_string(node.dir.join("admin.token"))
        .ok()
        .map(|t| t.trim().to_string());
    let ca_pem = (setup == "auth+tls")
        .then(|| std::fs::read(certs.join("ca.pem")))
        .transpose()?;
    let admin_creds = Credentials {
        token: admin,
        ca_pem: ca_pem.clone(),
    };
    leader_with_schema_as(&Client::with(&node.url, admin_creds.clone()), SCHEMA).await?;
    // The clients write with a write token, as an application would.
    let token = match &admin_creds.token {
        Some(_) => Some(
            Client::with(&node.url, admin_creds)
                .post("/v1/tokens", &json!({ "role": "write", "name": "bench" }))
                .await?["token"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
        None => None,
    };
    Ok((node, Credentials { token, ca_pem }))
}

pub(crate) async fn run(
    dir: &Path,
    runs: usize,
    secs: f64,
    progress: &dyn Fn(&str),
) -> anyhow::Result<SecurityResults> {
    let exe = this_exe()?;
    let certs = dir.join("certs");
    flotilla_testkit::certs::make(&certs, vec![])?;
    let mut cells: Vec<SecurityCell> = SETUPS
        .iter()
        .flat_map(|s| CLIENTS.iter().map(move |c| (*s, *c)))
        .map(|(setup, clients)| {
            let name = |what: &str| format!("{setup} {what}, {clients} clients");
            SecurityCell {
                setup,
                clients,
                tps: Figure::new(&name("commits"), "txn/s"),
                p50_ms: Figure::new(&name("commit latency p50"), "ms"),
                p99_ms: Figure::new(&name("commit latency p99"), "ms"),
                cpu_us: Figure::new(&name("node CPU per commit"), "µs"),
            }
        })
        .collect();
    for run in 0..runs {
        for setup in SETUPS {
            progress(&format!("run {}: {setup}", run + 1));
            let root = dir.join(format!("run{run}"));
            let (node, creds) = leader(&exe, &root, setup, &certs).await?;
            for clients in CLIENTS {
                let client = Arc::new(Client::with(&node.url, creds.clone()));
                let cpu_before = node.cpu_time();
                let (tps, mut lat) =
                    drive_inserts(client, clients, secs, super::commit::ASYNC).await;
                let cpu = node
                    .cpu_time()
                    .zip(cpu_before)
                    .map(|(after, before)| after.saturating_sub(before).as_secs_f64() * 1e6);
                lat.sort_by(|a, b| a.total_cmp(b));
                let commits = lat.len().max(1) as f64;
                let cell = cells
                    .iter_mut()
                    .find(|c| c.setup == setup && c.clients == clients)
                    .expect("a cell for every combination");
                cell.tps.values.push(tps);
                cell.p50_ms
                    .values
                    .push(super::percentile(&lat, 0.5) / 1000.0);
                cell.p99_ms
                    .values
                    .push(super::percentile(&lat, 0.99) / 1000.0);
                if let Some(cpu) = cpu {
                    cell.cpu_us.values.push(cpu / commits);
                }
            }
        }
    }
    Ok(SecurityResults { cells })
}

impl SecurityResults {
    fn cell(&self, setup: &str, clients: usize) -> &SecurityCell {
        self.cells
            .iter()
            .find(|c| c.setup == setup && c.clients == clients)
            .expect("a cell for every combination")
    }

    pub fn json(&self) -> Value {
        let cells: Vec<Value> = self
            .cells
            .iter()
            .map(|c| {
                let open = self.cell("open", c.clients).tps.median();
                json!({
                    "setup": c.setup,
                    "clients": c.clients,
                    "tps": c.tps.json(),
                    "p50_ms": c.p50_ms.json(),
                    "p99_ms": c.p99_ms.json(),
                    "node_cpu_us_per_commit": c.cpu_us.json(),
                    "throughput_vs_open": c.tps.median() / open,
                })
            })
            .collect();
        json!({ "scenario": "security", "cells": cells })
    }

    pub fn print(&self) {
        println!(
            "\nCommit throughput with authentication and TLS, one 100-byte row per transaction, \
             no followers (txn/s median [min..max]; latency p50/p99 ms; throughput vs open):\n"
        );
        println!(
            "  {:>7}  {:>10}  {:>28}  {:>15}  {:>8}  {:>14}",
            "clients", "setup", "txn/s", "p50/p99 ms", "vs open", "node CPU µs/txn"
        );
        for clients in CLIENTS {
            let open = self.cell("open", clients).tps.median();
            for setup in SETUPS {
                let c = self.cell(setup, clients);
                let cpu = if c.cpu_us.values.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.0}", c.cpu_us.median())
                };
                println!(
                    "  {:>7}  {:>10}  {:>10.0} [{:>6.0}..{:>6.0}]  {:>6.2}/{:<8.2}  {:>7.1}%  {:>14}",
                    clients,
                    setup,
                    c.tps.median(),
                    c.tps.min(),
                    c.tps.max(),
                    c.p50_ms.median(),
                    c.p99_ms.median(),
                    100.0 * c.tps.median() / open,
                    cpu
                );
            }
        }
    }
}
