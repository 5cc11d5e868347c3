//! Who may use a node: API tokens with roles, checked on every request when authentication is
//! on (see `docs/security.md`).

mod keyring;
mod token;

pub use keyring::{Denied, Keyring};
pub use token::{hash_secret, TokenText};

use crate::api_error::ApiError;
use crate::node::Node;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flotilla_types::AccessRole;
use std::sync::Arc;

/// On a leader's first start with authentication on (no token exists yet): makes an admin
/// token and writes it to `<data>/admin.token`, readable by its owner only.
pub async fn first_admin_token(node: &Arc<Node>) -> anyhow::Result<()> {
    let (Some(keyring), Some(leader)) = (&node.keyring, node.leader()) else {
        return Ok(());
    };
    if keyring.has_any().await {
        return Ok(());
    }
    let token = TokenText::generate();
    let stored = flotilla_store::StoredToken {
        id: token.id.clone(),
        name: "admin (made at first start)".into(),
        role: AccessRole::Admin,
        hash: token.hash(),
        created_ms: crate::time::wall_ms(),
        revoked_ms: None,
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = crate::leader::WriteJob::Token {
        change: crate::leader::TokenChange::Add(stored),
        reply,
    };
    leader
        .writer
        .send(job)
        .await
        .map_err(|_| anyhow::anyhow!("the writer stopped"))?;
    answer
        .await
        .map_err(|_| anyhow::anyhow!("the writer stopped"))?
        .map_err(|e| anyhow::anyhow!("cannot make the first admin token: {e}"))?;
    keyring.invalidate();
    let path = node.config.data_dir.join("admin.token");
    write_private(&path, format!("{token}\n").as_bytes())?;
    println!(
        "flotilla: authentication is on; an admin token was written to {}",
        path.display()
    );
    tracing::info!(path = %path.display(), "wrote the first admin token");
    Ok(())
}

/// Writes a file only its owner can read (mode 0600 from the start), whole or not at all: it
/// is written beside and renamed into place, so a reader that sees the file (a script waiting
/// for it) never reads it empty or half written.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    // An older file keeps its mode when opened: make sure.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&partial, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What a long-lived request (a replication session, a followed change feed) presented, checked
/// again while it runs: revoking its token ends it.
#[derive(Debug, Clone)]
pub struct Credential {
    header: Option<String>,
    needed: AccessRole,
}

impl Credential {
    pub fn of(headers: &axum::http::HeaderMap, needed: AccessRole) -> Credential {
        Credential {
            header: headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            needed,
        }
    }

    /// `Err` once the token is revoked (always `Ok` when authentication is off).
    pub async fn still_allowed(&self, node: &Node) -> Result<(), Denied> {
        match &node.keyring {
            None => Ok(()),
            Some(k) => k
                .check(self.header.as_deref(), self.needed)
                .await
                .map(|_| ()),
        }
    }
}

/// The token a request presents: its `Authorization` header, or — for a collaborative
/// document's WebSocket only, which a browser opens without headers — a `token` query
/// parameter (as `Bearer TOKEN`).
pub fn presented_token(headers: &axum::http::HeaderMap, uri: &axum::http::Uri) -> Option<String> {
    if let Some(h) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Some(h.to_string());
    }
    // A document's WebSocket: /v1/collab/TABLE/KEY/COLUMN, nothing shorter or longer.
    let path = uri.path();
    if !path.starts_with("/v1/collab/") || path.split('/').count() != 6 {
        return None;
    }
    query_param(uri, "token").map(|token| format!("Bearer {token}"))
}

/// The (URL-decoded) value of query parameter `name`, if given.
pub fn query_param(uri: &axum::http::Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k != name {
            return None;
        }
        percent_decode(v)
    })
}

/// `%XX` escapes decoded (tokens are URL-safe, but a client may escape anyway); `None` when
/// malformed.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The role a request needs.
pub fn required_role(method: &Method, path: &str) -> AccessRole {
    // A backup holds everything, token hashes included; a restore replaces everything.
    let admin_area = path.starts_with("/v1/tokens")
        || path.starts_with("/v1/followers")
        || path == "/v1/backup"
        || path == "/v1/restore"
        || path == "/v1/conflicts/policies"
        || path == "/v1/conflicts/prune"
        || path.starts_with("/v1/devices")
        || path.starts_with("/v1/shapes")
        || (path == "/v1/collab/columns" && method != Method::GET)
        || path == "/v1/cluster/promote"
        || path.starts_with("/v1/cluster/members");
    match path {
        "/v1/execute" => AccessRole::Write,
        _ if path.starts_with("/v1/collab/") && path.ends_with("/lock") => AccessRole::Write,
        "/v1/sync" => AccessRole::Device,
        "/v1/replication" | "/v1/snapshot" | "/v1/raft" | "/v1/dc" => AccessRole::Replicate,
        _ if admin_area => AccessRole::Admin,
        _ if path.starts_with("/v1/pipelines") && method != Method::GET => AccessRole::Admin,
        _ => AccessRole::Read,
    }
}

/// Whether the request carries this cluster's shared secret (`Bearer <secret>`). Compared as
/// digests, so the time taken says nothing about how much of it matched.
pub(crate) fn presents_cluster_secret(node: &Node, header: Option<&str>) -> bool {
    let (Some(secret), Some(given)) = (&node.config.cluster_secret, header) else {
        return false;
    };
    let given = given.strip_prefix("Bearer ").unwrap_or("");
    hash_secret(given) == hash_secret(secret)
}

/// What one member asks of another, which the members' secret allows (and nothing else: the
/// API's roles are for tokens): consensus messages, a copy of the database, replication, and
/// joining the cluster.
fn member_business(method: &Method, path: &str) -> bool {
    matches!(path, "/v1/raft" | "/v1/snapshot" | "/v1/replication")
        || (method == Method::POST && path == "/v1/cluster/members")
        || (method == Method::GET && path == "/v1/cluster")
}

/// Lets a request in if authentication is off, or if its token allows what it asks.
pub async fn layer(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let Some(keyring) = &node.keyring else {
        return next.run(req).await;
    };
    // Probes of load balancers and orchestrators carry no token; they learn only whether the
    // node is live and ready.
    if matches!(req.uri().path(), "/livez" | "/readyz") {
        return next.run(req).await;
    }
    // The calendar page's static files: a browser's navigation carries no token, and the
    // page holds nothing of the server's (its data comes through /v1/sync, with a token).
    if matches!(*req.method(), Method::GET | Method::HEAD)
        && (crate::api::web::is_page(req.uri().path())
            || crate::api::edit_page::is_page(req.uri().path()))
    {
        return next.run(req).await;
    }
    let needed = required_role(req.method(), req.uri().path());
    let presented = presented_token(req.headers(), req.uri());
    let header = presented.as_deref();
    if presents_cluster_secret(&node, header) && member_business(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let mut checked = keyring.check(header, needed).await;
    if matches!(checked, Err(Denied::Forbidden { .. })) && req.uri().path() == "/v1/cluster" {
        // A learner (a follower's replicate token) asks the cluster who leads.
        checked = keyring.check(header, AccessRole::Replicate).await;
    }
    match checked {
        Ok(_) => next.run(req).await,
        // A follower still bootstrapping has no database, so no tokens to check against yet.
        Err(Denied::Unknown) if !node.readers.is_open() && node.leader().is_none() => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "bootstrapping",
            "this node has no database yet (it is bootstrapping from a snapshot), so it cannot \
             check tokens; retry shortly",
        )
        .into_response(),
        Err(denied) => {
            let (status, code) = match denied {
                Denied::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
                _ => (StatusCode::UNAUTHORIZED, "unauthorized"),
            };
            let mut resp = ApiError::new(status, code, denied.to_string()).into_response();
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_members_secret_opens_only_what_members_ask_of_each_other() {
        for (method, path, allowed) in [
            (Method::GET, "/v1/raft", true),
            (Method::GET, "/v1/snapshot", true),
            (Method::GET, "/v1/replication", true),
            (Method::POST, "/v1/cluster/members", true),
            (Method::GET, "/v1/cluster", true),
            (Method::DELETE, "/v1/cluster/members/n2", false),
            (Method::POST, "/v1/cluster/promote", false),
            (Method::POST, "/v1/execute", false),
            (Method::POST, "/v1/query", false),
            (Method::POST, "/v1/tokens", false),
            (Method::GET, "/v1/backup", false),
        ] {
            assert_eq!(member_business(&method, path), allowed, "{method} {path}");
        }
    }

    #[test]
    fn every_endpoint_needs_the_role_its_action_does() {
        use AccessRole::*;
        for (method, path, role) in [
            (Method::POST, "/v1/execute", Write),
            (Method::POST, "/v1/query", Read),
            (Method::GET, "/v1/status", Read),
            (Method::GET, "/metrics", Read),
            (Method::GET, "/v1/backup", Admin),
            (Method::POST, "/v1/restore", Admin),
            (Method::GET, "/v1/changes", Read),
            (Method::GET, "/v1/snapshot", Replicate),
            (Method::GET, "/v1/replication", Replicate),
            (Method::DELETE, "/v1/followers/f1", Admin),
            (Method::GET, "/v1/tokens", Admin),
            (Method::POST, "/v1/tokens", Admin),
            (Method::DELETE, "/v1/tokens/abc", Admin),
            (Method::GET, "/v1/pipelines", Read),
            (Method::GET, "/v1/pipelines/p", Read),
            (Method::POST, "/v1/pipelines", Admin),
            (Method::DELETE, "/v1/pipelines/p", Admin),
            (Method::POST, "/v1/pipelines/p/pause", Admin),
            (Method::GET, "/v1/nope", Read),
            (Method::GET, "/v1/cluster", Read),
            (Method::POST, "/v1/cluster/promote", Admin),
            (Method::POST, "/v1/cluster/members", Admin),
            (Method::DELETE, "/v1/cluster/members/n2", Admin),
            (Method::GET, "/v1/raft", Replicate),
        ] {
            assert_eq!(required_role(&method, path), role, "{method} {path}");
        }
    }
}
