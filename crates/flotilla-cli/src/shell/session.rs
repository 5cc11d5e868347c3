//! The shell's connection to a cluster: reads run on the node the user chose, writes go to the
//! leader (found by following a 421), and the last position is carried so that every read sees
//! the user's own writes.

use super::render::{self, Mode};
use flotilla_client::Client;
use flotilla_store::sql_text::first_keyword;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Instant;

/// A request the node answered with an error.
#[derive(Debug)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub body: Value,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for Failure {}

pub struct Session {
    /// The node the user chose: reads run here.
    pub node: Client,
    /// The leader, once a 421 named it (writes go there).
    leader: Option<Client>,
    /// The newest position this session wrote or read: reads wait for it.
    pub position: Option<String>,
    pub mode: Mode,
    pub timer: bool,
    /// Run the statements of one input one by one instead of as one transaction.
    pub one_by_one: bool,
    /// Print the node's JSON answers as they are.
    pub raw_json: bool,
    /// The chosen node is a logical follower (it takes writes to its own tables, without
    /// idempotency keys); learnt at the first write.
    logical_follower: Option<bool>,
    /// The durability writes ask for (`None`: the leader's default).
    pub durability: Option<flotilla_types::Durability>,
}

/// Whether a statement is probably a read (it is tried on `/v1/query` first; a node that finds
/// it writes answers `not_read_only` and it goes to `/v1/execute`).
pub fn looks_read_only(sql: &str) -> bool {
    match first_keyword(sql).as_str() {
        "SELECT" | "VALUES" | "EXPLAIN" | "WITH" => true,
        "PRAGMA" => !sql.contains('='),
        _ => false,
    }
}

impl Session {
    pub fn new(node: Client) -> Session {
        Session {
            node,
            leader: None,
            position: None,
            mode: Mode::Table,
            timer: false,
            one_by_one: false,
            raw_json: false,
            logical_follower: None,
            durability: None,
        }
    }

    /// Sends `body` to `path` of `client`; a node error as a [`Failure`].
    pub async fn call(client: &Client, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = client
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .map_err(|e| client.unreachable(e))?;
        let ok = resp.status().is_success();
        let status = resp.status();
        let answer: Value = resp.json().await.map_err(|_| {
            anyhow::anyhow!("the node answered {status} with a body that is not JSON")
        })?;
        if ok {
            return Ok(answer);
        }
        Err(Failure {
            code: answer["error"]["code"]
                .as_str()
                .unwrap_or("error")
                .to_string(),
            message: answer["error"]["message"]
                .as_str()
                .unwrap_or("(no message)")
                .to_string(),
            body: answer,
        }
        .into())
    }

    fn note_position(&mut self, p: Option<&str>) {
        let Some(p) = p else { return };
        let newer = match (&self.position, p.parse::<flotilla_types::Position>()) {
            (None, Ok(_)) => true,
            (Some(old), Ok(new)) => old
                .parse::<flotilla_types::Position>()
                .map_or(true, |old| new > old),
            (_, Err(_)) => false,
        };
        if newer {
            self.position = Some(p.to_string());
        }
    }

    /// Runs statements given at once: reads one by one on this node; anything else as one
    /// transaction on the leader (or one by one, if asked).
    pub async fn run(&mut self, statements: &[String], out: &mut dyn Write) -> anyhow::Result<()> {
        if statements.is_empty() {
            return Ok(());
        }
        if self.one_by_one || statements.iter().all(|s| looks_read_only(s)) {
            let n = statements.len();
            for (i, s) in statements.iter().enumerate() {
                if let Err(e) = self.run_one(s, out).await {
                    if n == 1 {
                        return Err(e);
                    }
                    let left = n - i - 1;
                    return Err(anyhow::anyhow!(
                        "statement {} of {n}: {e:#}{}",
                        i + 1,
                        if left > 0 {
                            format!("; the {left} statement(s) after it did not run")
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            return Ok(());
        }
        self.execute(statements, out).await
    }

    async fn run_one(&mut self, sql: &str, out: &mut dyn Write) -> anyhow::Result<()> {
        if !looks_read_only(sql) {
            return self.execute(&[sql.to_string()], out).await;
        }
        match self.query(sql, out).await {
            Err(e)
                if e.downcast_ref::<Failure>()
                    .is_some_and(|f| f.code == "not_read_only") =>
            {
                self.execute(&[sql.to_string()], out).await
            }
            other => other,
        }
    }

    /// A read on the chosen node, after the session's position.
    pub async fn query(&mut self, sql: &str, out: &mut dyn Write) -> anyhow::Result<()> {
        let mut body = json!({ "sql": sql, "timeout_ms": 30_000 });
        if let Some(p) = &self.position {
            body["min_position"] = json!(p);
        }
        let started = Instant::now();
        let answer = Self::call(&self.node, "/v1/query", &body).await?;
        self.timed(started);
        self.note_position(answer["position"].as_str());
        self.show_rows(&answer, out)
    }

    /// Sends a write, again (with the same idempotency key, so it applies once) while its
    /// outcome is unknown: a lost answer, a leader that stopped mid-request.
    async fn call_write(client: &Client, body: &Value) -> anyhow::Result<Value> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::call(client, "/v1/execute", body).await {
                Err(e) if attempt < WRITE_ATTEMPTS && outcome_unknown(&e) => {
                    eprintln!("-- {e:#}; trying again with the same idempotency key");
                    tokio::time::sleep(std::time::Duration::from_millis(500 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// One transaction of `statements` on the leader.
    pub async fn execute(
        &mut self,
        statements: &[String],
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        if self.leader.is_none() && self.logical_follower.is_none() {
            let status = self.node.get("/v1/status").await?;
            self.logical_follower =
                Some(status["role"] == "follower" && status["log"] == "logical");
        }
        let mut body = json!({
            "statements": statements.iter().map(|s| json!({ "sql": s })).collect::<Vec<_>>(),
        });
        if let Some(d) = self.durability {
            body["durability"] = json!(d.as_str());
        }
        // A key of its own: a retry after a lost answer is never applied twice. A logical
        // follower's own tables take writes without one (it has no leader's memory of keys).
        if self.leader.is_some() || self.logical_follower != Some(true) {
            body["idempotency_key"] = json!(format!("shell-{:032x}", rand::random::<u128>()));
        }
        // Bounded: a 421 is followed to the leader it names; a remembered leader that is gone
        // (a failover) is forgotten and the chosen node asked again; a cluster electing its
        // leader is waited for.
        let mut said_gone = false;
        let answer = loop {
            let target = self.leader.as_ref().unwrap_or(&self.node);
            let e = match Self::call_write(target, &body).await {
                Ok(a) => break a,
                Err(e) => e,
            };
            if started.elapsed() >= FIND_LEADER_FOR {
                return Err(name_statement(e, statements));
            }
            let named = e
                .downcast_ref::<Failure>()
                .filter(|f| f.code == "not_leader")
                .and_then(|f| f.body["error"]["leader"].as_str())
                .filter(|l| !l.is_empty())
                .map(str::to_string);
            if let Some(leader) = named {
                // Writes go to the leader it named, from now on.
                if body.get("idempotency_key").is_none() {
                    body["idempotency_key"] =
                        json!(format!("shell-{:032x}", rand::random::<u128>()));
                }
                self.leader = Some(Client::new(&leader));
                continue;
            }
            let gone = e.to_string().contains("no node answers at");
            if self.leader.is_some() && gone {
                if !said_gone {
                    eprintln!(
                        "-- the leader is gone ({e:#}); waiting for {} to name the next",
                        self.node.url()
                    );
                    said_gone = true;
                }
                self.leader = None;
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                continue;
            }
            let electing = e
                .downcast_ref::<Failure>()
                .is_some_and(|f| f.code == "unavailable");
            if electing {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
            return Err(name_statement(e, statements));
        };
        self.timed(started);
        self.note_position(answer["position"].as_str());
        if self.raw_json {
            writeln!(out, "{}", serde_json::to_string_pretty(&answer)?)?;
            return Ok(());
        }
        let results = answer["results"].as_array().cloned().unwrap_or_default();
        let mut changed = 0;
        for r in &results {
            changed += r["rows_affected"].as_u64().unwrap_or(0);
            if r.get("columns").is_some() {
                self.show_rows(r, out)?;
            }
        }
        eprintln!(
            "-- {} statement{}, {changed} row{} changed; position {}{}",
            results.len(),
            if results.len() == 1 { "" } else { "s" },
            if changed == 1 { "" } else { "s" },
            answer["position"].as_str().unwrap_or("?"),
            match &self.leader {
                Some(l) => format!(" (on the leader, {})", l.url()),
                None => String::new(),
            }
        );
        Ok(())
    }

    fn show_rows(&self, answer: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
        if self.raw_json {
            writeln!(out, "{}", serde_json::to_string_pretty(answer)?)?;
            return Ok(());
        }
        let columns: Vec<String> = answer["columns"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|v| v.as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default();
        let rows = answer["rows"].as_array().cloned().unwrap_or_default();
        if columns.is_empty() {
            return Ok(());
        }
        out.write_all(render::rows(self.mode, &columns, &rows).as_bytes())?;
        Ok(())
    }

    fn timed(&self, started: Instant) {
        if self.timer {
            eprintln!(
                "Run Time: {:.3} ms",
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
    }
}

/// A failed statement named by its place and text ("statement 2 of 3 (INSERT …)") instead of
/// the API's 0-based index.
fn name_statement(e: anyhow::Error, statements: &[String]) -> anyhow::Error {
    let Some(f) = e.downcast_ref::<Failure>() else {
        return e;
    };
    let Some(i) = f.body["error"]["statement"].as_u64() else {
        return e;
    };
    let Some(sql) = statements.get(i as usize) else {
        return e;
    };
    let short: String = flotilla_store::sql_text::without_leading_comments(sql)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let short = if short.chars().count() > 60 {
        format!("{}…", short.chars().take(60).collect::<String>())
    } else {
        short
    };
    let message = f
        .message
        .strip_prefix(&format!("statement {i}: "))
        .unwrap_or(&f.message);
    if statements.len() == 1 {
        return anyhow::anyhow!("({short}): {message} ({})", f.code);
    }
    anyhow::anyhow!(
        "statement {} of {} ({short}): {message} ({})",
        i + 1,
        statements.len(),
        f.code
    )
}

/// Attempts of one write whose outcome stays unknown.
const WRITE_ATTEMPTS: u64 = 3;
/// How long one write keeps finding its leader (421s followed, a failover waited out).
const FIND_LEADER_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// Whether a write's outcome is unknown (it may have committed): retried with its key.
fn outcome_unknown(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<Failure>() {
        Some(f) => matches!(f.code.as_str(), "outcome_unknown" | "unavailable"),
        // The request failed on the way: sent or not, the key makes a retry safe.
        None => {
            e.to_string().contains("did not answer in time")
                || e.to_string().contains("the connection to")
        }
    }
}
