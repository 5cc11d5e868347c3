//! A client session: the read guarantees a Flotilla client gets on any replica.
//!
//! - **Read-your-writes** and **monotonic reads**: the session carries the newest position it
//!   has written or read, and each read asks the node to wait until it holds that position
//!   (`min_position`). So a read never shows less than an earlier answer of the same session,
//!   whichever replica serves it.
//! - Writes go to the leader, found by following the node's 421 answer.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use flotilla_client::{Client, Session};
//! use serde_json::json;
//! let mut s = Session::new(Client::new("127.0.0.1:4791")); // a follower
//! s.execute(json!([{"sql": "INSERT INTO notes(body) VALUES (?1)", "params": ["hi"]}])).await?;
//! let rows = s.query(json!({"sql": "SELECT count(*) FROM notes"})).await?; // sees the insert
//! # Ok(()) }
//! ```

use crate::Client;
use flotilla_types::Position;
use serde_json::{json, Value};

/// How many 421 redirections one write follows.
const MAX_REDIRECTS: usize = 3;

pub struct Session {
    /// Where reads go.
    reads: Client,
    /// The leader, once a 421 named it.
    leader: Option<Client>,
    position: Option<Position>,
}

impl Session {
    /// A session whose reads go to `reads` (any node of the cluster).
    pub fn new(reads: Client) -> Session {
        Session {
            reads,
            leader: None,
            position: None,
        }
    }

    /// The newest position this session wrote or read.
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// Takes a position seen elsewhere (say, another process of the same user): later reads
    /// wait for it too.
    pub fn observe(&mut self, position: Position) {
        self.position = self.position.max(Some(position));
    }

    fn observe_answer(&mut self, answer: &Value) {
        if let Some(p) = answer["position"].as_str().and_then(|p| p.parse().ok()) {
            self.observe(p);
        }
    }

    /// `POST /v1/query` with `body` (`sql`, `params`, and any other field of the API), after
    /// the session's position.
    pub async fn query(&mut self, mut body: Value) -> anyhow::Result<Value> {
        if let Some(p) = self.position {
            let asked: Option<Position> =
                body["min_position"].as_str().and_then(|p| p.parse().ok());
            body["min_position"] = json!(asked.max(Some(p)).map(|p| p.to_string()));
        }
        let answer = self.reads.post("/v1/query", &body).await?;
        self.observe_answer(&answer);
        Ok(answer)
    }

    /// One transaction of `statements` (the API's list of `{"sql", "params"}`) on the leader.
    pub async fn execute(&mut self, statements: Value) -> anyhow::Result<Value> {
        let body = json!({ "statements": statements });
        let mut target = self.leader.take().unwrap_or_else(|| self.reads.clone());
        for _ in 0..=MAX_REDIRECTS {
            let resp = target
                .request(reqwest::Method::POST, "/v1/execute")
                .json(&body)
                .send()
                .await
                .map_err(|e| target.unreachable(e))?;
            let status = resp.status().as_u16();
            let answer: Value = resp.json().await.unwrap_or(Value::Null);
            if status == 421 {
                if let Some(leader) = answer["error"]["leader"].as_str() {
                    target = target.at(leader);
                    continue;
                }
            }
            if !(200..300).contains(&status) {
                anyhow::bail!(
                    "{status} {}: {}",
                    answer["error"]["code"].as_str().unwrap_or("error"),
                    answer["error"]["message"]
                        .as_str()
                        .unwrap_or("(no message)")
                );
            }
            self.observe_answer(&answer);
            self.leader = Some(target);
            return Ok(answer);
        }
        anyhow::bail!("more than {MAX_REDIRECTS} nodes sent the write elsewhere (421)")
    }
}
