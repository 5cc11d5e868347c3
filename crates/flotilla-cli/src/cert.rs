//! `flotilla cert init --out DIR [--host NAME…]`: a CA and a node certificate for a test
//! cluster (rcgen). Production clusters use their own PKI: a node takes any PEM certificate
//! and key (`--tls-cert`, `--tls-key`), and verifies peers against any CA (`--tls-ca`).

use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum CertCommand {
    /// Make ca.pem (and ca.key) and node.pem / node.key, valid for localhost, 127.0.0.1, ::1
    /// and every --host.
    #[command(after_help = "Examples:
  flotilla cert init --out ./certs --host 127.0.0.1 --host localhost")]
    Init {
        /// Where to write the files (created if missing; existing files are not overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Another name or IP address the nodes are reached by (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

pub fn run(cmd: CertCommand) -> anyhow::Result<()> {
    let CertCommand::Init { out, hosts } = cmd;
    let names = flotilla_testkit::certs::make(&out, hosts)?;
    println!(
        "wrote {dir}/ca.pem, ca.key, node.pem and node.key (valid for {names}).\n\
         Nodes: flotilla serve … --tls-cert {dir}/node.pem --tls-key {dir}/node.key --tls-ca {dir}/ca.pem\n\
         Clients: --tls-ca {dir}/ca.pem (or FLOTILLA_TLS_CA), and https:// URLs",
        dir = out.display(),
        names = names.join(", ")
    );
    Ok(())
}
