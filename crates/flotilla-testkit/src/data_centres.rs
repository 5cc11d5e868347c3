//! Multi-leader data centres on this machine: one leader per data centre (`serve --dc`), each
//! reaching each other through its own TCP proxy, so that links can be cut one way or both
//! without privileges. The demo, the end-to-end tests and the benchmark share it.

use crate::cluster::{free_ports, LocalNode};
use crate::proxy::Proxy;
use std::path::Path;

pub struct DataCentres {
    /// One leader per name, in the order given (the first makes the cluster: the others take
    /// its cluster id when they start).
    pub leaders: Vec<LocalNode>,
    /// `proxies[from][to]`: how data centre `from` reaches `to` (`None` on the diagonal).
    pub proxies: Vec<Vec<Option<Proxy>>>,
}

impl DataCentres {
    /// Starts a leader per name, every one a peer of every other, with `extra` arguments.
    pub async fn start(
        exe: &Path,
        root: &Path,
        names: &[&str],
        extra: &[&str],
    ) -> anyhow::Result<DataCentres> {
        let ports = free_ports(names.len());
        let mut proxies = Vec::new();
        for from in 0..names.len() {
            let mut row = Vec::new();
            for (to, port) in ports.iter().enumerate() {
                row.push(if from == to {
                    None
                } else {
                    Some(Proxy::start(format!("127.0.0.1:{port}")).await?)
                });
            }
            proxies.push(row);
        }
        let mut leaders = Vec::new();
        for (i, dc) in names.iter().enumerate() {
            let mut args: Vec<String> = vec!["--dc".into(), dc.to_string()];
            for (j, other) in names.iter().enumerate() {
                if let Some(p) = &proxies[i][j] {
                    args.push("--peer-dc".into());
                    args.push(format!("{other}={}", p.url));
                }
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let listen = format!("127.0.0.1:{}", ports[i]);
            leaders.push(LocalNode::start_on(exe, root, dc, &listen, &args).await?);
        }
        Ok(DataCentres { leaders, proxies })
    }

    /// The `--peer-dc` arguments leader `i` was started with (for the demo to show).
    pub fn peer_args(&self, names: &[&str], i: usize) -> Vec<String> {
        let mut out = Vec::new();
        for (j, other) in names.iter().enumerate() {
            if let Some(p) = &self.proxies[i][j] {
                out.push(format!("--peer-dc {other}={}", p.url));
            }
        }
        out
    }

    /// Cuts (`up == false`) or heals the way data centre `from` reaches `to`.
    pub fn link(&self, from: usize, to: usize, up: bool) {
        if let Some(p) = &self.proxies[from][to] {
            if up {
                p.heal();
            } else {
                p.partition();
            }
        }
    }

    /// Cuts or heals every link that touches data centre `dc` (`None`: every link).
    pub fn cut(&self, dc: Option<usize>, cut: bool) {
        for from in 0..self.proxies.len() {
            for to in 0..self.proxies.len() {
                if dc.is_none_or(|d| from == d || to == d) {
                    self.link(from, to, !cut);
                }
            }
        }
    }
}
