//! A small HTTP client for the node API, with errors that say what the node answered.

use anyhow::{bail, Context};
use serde_json::Value;

pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn new(node: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .expect("http client"),
            base: node.trim_end_matches('/').to_string(),
        }
    }

    pub fn url(&self) -> &str {
        &self.base
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
        let r = self.http.get(format!("{}{path}", self.base)).send().await;
        self.answer(path, r).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await;
        self.answer(path, r).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .delete(format!("{}{path}", self.base))
            .send()
            .await;
        self.answer(path, r).await
    }
}
