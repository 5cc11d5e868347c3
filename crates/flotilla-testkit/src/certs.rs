//! A CA and a node certificate for a test cluster (rcgen): what `flotilla cert init`, the TLS
//! tests and the security benchmark use. Production clusters use their own PKI.

use anyhow::Context;
use std::path::Path;

fn write_new(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Writes ca.pem, ca.key, node.pem and node.key into `out`; returns the names the node
/// certificate is valid for.
pub fn make(out: &Path, hosts: Vec<String>) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Flotilla test cluster CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for h in hosts {
        if !names.contains(&h) {
            names.push(h);
        }
    }
    let mut node_params = rcgen::CertificateParams::new(names.clone())
        .context("a --host is neither a DNS name nor an IP address")?;
    node_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Flotilla node");
    let node_key = rcgen::KeyPair::generate()?;
    let node = node_params.signed_by(&node_key, &ca, &ca_key)?;
    write_new(&out.join("ca.pem"), &ca.pem(), false)?;
    write_new(&out.join("ca.key"), &ca_key.serialize_pem(), true)?;
    write_new(&out.join("node.pem"), &node.pem(), false)?;
    write_new(&out.join("node.key"), &node_key.serialize_pem(), true)?;
    Ok(names)
}
