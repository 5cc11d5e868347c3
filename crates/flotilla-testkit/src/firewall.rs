//! Network partitions between real processes on one machine, with iptables: each node runs in
//! a group of its own (`LocalNode::start_on_as`), and a rule drops what a group sends to a
//! node's port (`-m owner --gid-owner`, matched on OUTPUT, so it works on loopback). A rule cuts
//! one direction; both make a symmetric partition. Established connections stall as over a cut
//! cable, and carry on when the rule goes. Needs root; iptables is installed through apt-get
//! when missing, as the PostgreSQL harness does. Rules carry a comment naming this process, and
//! are removed when the `Firewall` is dropped.

use anyhow::{bail, Context};
use std::process::Command;

pub struct Firewall {
    /// The rules added, as iptables arguments after `-A OUTPUT` / `-D OUTPUT`.
    rules: Vec<Vec<String>>,
    comment: String,
}

fn iptables(args: &[String]) -> anyhow::Result<()> {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn installed() -> bool {
    Command::new("iptables")
        .args(["-L", "OUTPUT", "-n"])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Firewall {
    /// A firewall for this test, with iptables installed and usable (root).
    pub fn new() -> anyhow::Result<Firewall> {
        if !crate::apt::is_root() {
            bail!("partition tests need root (iptables rules and process groups)");
        }
        crate::apt::find_or_install(
            "iptables",
            &["iptables"],
            "iptables was not found or does not work here (no netfilter?): install it \
             (apt-get install iptables)",
            || installed().then_some(()),
        )?;
        Ok(Firewall {
            rules: Vec::new(),
            comment: format!("flotilla-test-{}", std::process::id()),
        })
    }

    /// Drops what processes of group `from_gid` send to TCP port `to_port` (on any address).
    pub fn block(&mut self, from_gid: u32, to_port: u16) -> anyhow::Result<()> {
        let rule: Vec<String> = [
            "-m",
            "owner",
            "--gid-owner",
            &from_gid.to_string(),
            "-p",
            "tcp",
            "--dport",
            &to_port.to_string(),
            "-m",
            "comment",
            "--comment",
            &self.comment,
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut add = vec!["-A".to_string(), "OUTPUT".to_string()];
        add.extend(rule.iter().cloned());
        iptables(&add)?;
        self.rules.push(rule);
        Ok(())
    }

    /// Removes every rule this firewall added.
    pub fn heal(&mut self) {
        for rule in self.rules.drain(..) {
            let mut del = vec!["-D".to_string(), "OUTPUT".to_string()];
            del.extend(rule);
            if let Err(e) = iptables(&del) {
                eprintln!("flotilla: removing a test firewall rule: {e:#}");
            }
        }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.heal();
    }
}
