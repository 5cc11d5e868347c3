//! How a node talks to other nodes (its leader; a Flotilla pipeline target): over HTTPS it
//! verifies them against the configured CA, and it presents its replication token.

use crate::tls::{self, TlsError};
use std::path::Path;
use std::sync::Arc;

pub struct Peers {
    /// For HTTP requests to other nodes (snapshots, a pipeline target).
    pub http: reqwest::Client,
    /// For the replication WebSocket over TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Presented to the leader (role replicate).
    pub token: Option<String>,
}

impl Peers {
    pub fn new(ca: Option<&Path>, token: Option<String>) -> Result<Peers, TlsError> {
        let mut http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            // A node never follows a redirect: a peer (or a pipeline target, checked against
            // the allow-list by its URL) could otherwise send it, with its token, anywhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(5));
        let mut tls_config = None;
        if let Some(ca) = ca {
            let pem = tls::ca_pem(ca)?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| TlsError::Read {
                what: "CA certificate",
                path: ca.to_path_buf(),
                message: e.to_string(),
            })? {
                http = http.add_root_certificate(cert);
            }
            tls_config = Some(tls::client_config(ca)?);
        }
        Ok(Peers {
            http: http
                .build()
                .expect("an HTTP client with these settings builds"),
            tls: tls_config,
            token,
        })
    }

    /// Adds the replication token, if any, to a request.
    pub fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }
}

/// An error with its causes (`error sending request: … : invalid peer certificate: UnknownIssuer`):
/// an HTTP client's own message rarely says why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
