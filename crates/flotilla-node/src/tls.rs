//! TLS for the API and replication (rustls, with the `ring` crypto provider). A node serves
//! HTTPS when given a certificate and key; it verifies the nodes it connects to (its leader, a
//! Flotilla pipeline target) against the CA certificate it is given.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {message}")]
    Read {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{path} holds no {what} (expected PEM: -----BEGIN {pem}-----)")]
    Empty {
        what: &'static str,
        path: PathBuf,
        pem: &'static str,
    },
    #[error("the certificate {cert} and the key {key} do not go together: {message}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |message: String| TlsError::Read {
        what,
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            pem: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// What a node serving HTTPS presents: its certificate chain and private key (PEM files).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(cert, "certificate")?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
        what: "private key",
        path: key.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            message: e.to_string(),
        })?;
    // HTTP/1.1 only: clients keep one connection per concurrent request, as over plain HTTP
    // (HTTP/2 would funnel them all through one connection).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How this node verifies the servers it connects to: against the certificates in `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certificates(ca, "CA certificate")? {
        roots.add(c).map_err(|e| TlsError::Read {
            what: "CA certificate",
            path: ca.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The PEM text of a CA file, for HTTP clients that take it as it is.
pub fn ca_pem(ca: &Path) -> Result<Vec<u8>, TlsError> {
    certificates(ca, "CA certificate")?;
    std::fs::read(ca).map_err(|e| TlsError::Read {
        what: "CA certificate",
        path: ca.to_path_buf(),
        message: e.to_string(),
    })
}
