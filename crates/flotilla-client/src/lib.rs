//! A small HTTP client for the node API, with errors that say what the node answered. It
//! presents a token (`--token` / `FLOTILLA_TOKEN`) and verifies `https://` nodes against a CA
//! certificate (`--tls-ca` / `FLOTILLA_TLS_CA`).

use anyhow::{bail, Context};
use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;

/// What every client of this process uses unless told otherwise (set once by `main`).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub token: Option<String>,
    /// PEM of the CA certificate `https://` nodes are verified against.
    pub ca_pem: Option<Vec<u8>>,
}

static DEFAULTS: OnceLock<Credentials> = OnceLock::new();

/// Sets the process-wide token and CA (from the command line). Checks the CA file.
pub fn set_defaults(token: Option<String>, ca: Option<&Path>) -> anyhow::Result<()> {
    let ca_pem = match ca {
        Some(p) => {
            let pem = std::fs::read(p)
                .with_context(|| format!("cannot read the CA certificate {}", p.display()))?;
            reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .with_context(|| format!("{} holds no PEM certificate", p.display()))?;
            Some(pem)
        }
        None => None,
    };
    let _ = DEFAULTS.set(Credentials { token, ca_pem });
    Ok(())
}

/// The process-wide credentials (empty unless `main` set them).
pub fn defaults() -> Credentials {
    DEFAULTS.get().cloned().unwrap_or_default()
}

/// An HTTP client that trusts the given CA (and no other roots) for `https://` nodes.
pub fn http_client(credentials: &Credentials, timeout_s: Option<u64>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false);
    if let Some(s) = timeout_s {
        b = b.timeout(std::time::Duration::from_secs(s));
    }
    if let Some(pem) = &credentials.ca_pem {
        for c in reqwest::Certificate::from_pem_bundle(pem).unwrap_or_default() {
            b = b.add_root_certificate(c);
        }
    }
    b.build().expect("http client")
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client of `node` with the process-wide credentials.
    pub fn new(node: &str) -> Client {
        Client::with(node, defaults())
    }

    pub fn with(node: &str, credentials: Credentials) -> Client {
        Client {
            http: http_client(&credentials, Some(60)),
            base: node.trim_end_matches('/').to_string(),
            token: credentials.token,
        }
    }

    /// A client of `node` presenting `token`.
    pub fn with_token(node: &str, token: &str) -> Client {
        Client::with(
            node,
            Credentials {
                token: Some(token.to_string()),
                ..defaults()
            },
        )
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// A request to `path` with this client's token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn answer(
        &self,
        what: &str,
        resp: reqwest::Result<reqwest::Response>,
    ) -> anyhow::Result<Value> {
        let resp = resp.with_context(|| format!("cannot reach {} ({what})", self.base))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("{what}: the node's answer is not JSON"))?;
        if !status.is_success() {
            let msg = body["error"]["message"].as_str().unwrap_or("(no message)");
            let code = body["error"]["code"].as_str().unwrap_or("error");
            bail!("{what}: {status} {code}: {msg}");
        }
        Ok(body)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self.request(reqwest::Method::GET, path).send().await;
        self.answer(path, r).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let r = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await;
        self.answer(path, r).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let r = self.request(reqwest::Method::DELETE, path).send().await;
        self.answer(path, r).await
    }
}
