//! A small HTTP client for the node API, with errors that say what the node answered. It
//! presents a token (`--token` / `FLOTILLA_TOKEN`) and verifies `https://` nodes against a CA
//! certificate (`--tls-ca` / `FLOTILLA_TLS_CA`).

mod session;

pub use session::Session;

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

/// A node's base URL as the user may write it: `host:port` means `http://host:port`.
pub fn node_url(node: &str) -> String {
    let node = node.trim().trim_end_matches('/');
    if node.contains("://") {
        node.to_string()
    } else {
        format!("http://{node}")
    }
}

/// An error's message with its causes, each once.
fn error_causes(e: &dyn std::error::Error) -> String {
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

#[derive(Clone)]
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
            base: node_url(node),
            token: credentials.token,
        }
    }

    /// This client without a time limit on whole requests (long downloads and uploads).
    pub fn unlimited(&self) -> Client {
        Client {
            http: http_client(&defaults(), None),
            base: self.base.clone(),
            token: self.token.clone(),
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

    /// A client of another node with this one's credentials and connection pool.
    pub fn at(&self, node: &str) -> Client {
        Client {
            http: self.http.clone(),
            base: node_url(node),
            token: self.token.clone(),
        }
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

    /// What a failed request means to the user: a node that does not answer is named as such,
    /// rather than with the HTTP library's chain of causes.
    pub fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            let cause = error_causes(&e);
            let lower = cause.to_ascii_lowercase();
            if lower.contains("certificate") || lower.contains("tls") {
                return anyhow::anyhow!("cannot connect to {} securely: {cause}", self.base);
            }
            if self.base.starts_with("https://")
                && (lower.contains("corrupt message") || lower.contains("invalidcontenttype"))
            {
                return anyhow::anyhow!(
                    "the node at {} does not speak TLS: use http://{}",
                    self.base,
                    self.base.trim_start_matches("https://")
                );
            }
            if lower.contains("dns") {
                return anyhow::anyhow!("cannot find the host of {}: {cause}", self.base);
            }
            if lower.contains("refused") || lower.contains("no route") {
                return anyhow::anyhow!("no node answers at {} — is it running?", self.base);
            }
            anyhow::anyhow!("cannot connect to {}: {cause}", self.base)
        } else if e.is_timeout() {
            anyhow::anyhow!("the node at {} did not answer in time", self.base)
        } else {
            anyhow::anyhow!(
                "the connection to {} failed: {}",
                self.base,
                error_causes(&e)
            )
        }
    }

    /// Sends a request and checks its status: an error names the node's error code and message.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let msg = body["error"]["message"].as_str().unwrap_or("(no message)");
        let code = body["error"]["code"].as_str().unwrap_or("error");
        bail!("{status} {code}: {msg}")
    }

    async fn answer(
        &self,
        what: &str,
        resp: reqwest::Result<reqwest::Response>,
    ) -> anyhow::Result<Value> {
        let resp = resp.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("{what}: the node's answer is not JSON"))?;
        if !status.is_success() {
            let msg = body["error"]["message"].as_str().unwrap_or("(no message)");
            let code = body["error"]["code"].as_str().unwrap_or("error");
            // The node's words; the endpoint is the client's business, not the user's.
            bail!("{status} {code}: {msg}");
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

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let r = self
            .request(reqwest::Method::PUT, path)
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
