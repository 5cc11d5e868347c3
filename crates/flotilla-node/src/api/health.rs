//! `GET /livez` and `GET /readyz`, for load balancers and orchestrators. Neither needs a token.
//!
//! - live: the process serves HTTP (a stopping node answers 503).
//! - ready: it can answer reads with recent data: a leader that is not stopping; a follower
//!   with a database that is streaming from its leader and has been behind it for at most
//!   `api.ready-max-lag-ms`.

use crate::node::{Node, Role};
use crate::time::mono_ms;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// 200 with `body`, or 503 with `{field: false, "reason": …}`.
fn answer(field: &str, result: Result<Value, String>) -> (StatusCode, Json<Value>) {
    // Not an API error (no error code): the reason is for the operator reading the probe.
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    match result {
        Ok(body) => (StatusCode::OK, Json(body)),
        Err(reason) => (unavailable, Json(json!({ field: false, "reason": reason }))),
    }
}

pub async fn livez(State(node): State<Arc<Node>>) -> (StatusCode, Json<Value>) {
    let result = match node.shutdown.is_cancelled() {
        true => Err("the node is stopping".to_string()),
        false => Ok(json!({"live": true})),
    };
    answer("live", result)
}

pub async fn readyz(State(node): State<Arc<Node>>) -> (StatusCode, Json<Value>) {
    answer("ready", readiness(&node))
}

fn readiness(node: &Node) -> Result<Value, String> {
    let not_ready = Err::<Value, String>;
    if node.shutdown.is_cancelled() {
        return not_ready("the node is stopping".into());
    }
    if let Some(c) = &node.cluster {
        let s = c.status.borrow().clone();
        if s.leader.is_none() {
            return not_ready(format!(
                "this cluster member knows no leader (it is a {} in epoch {}): no majority of \
                 the members is reachable, or an election is under way",
                s.role.as_str(),
                s.epoch
            ));
        }
    }
    match &*node.role() {
        Role::Leader { .. } => Ok(json!({"ready": true, "role": "leader"})),
        Role::Follower { state, .. } => {
            let s = state.status();
            let lag_ms = lag_ms(node);
            let max = node.config.ready_max_lag_ms;
            if s.phase == "bootstrapping" || s.phase == "starting" {
                return not_ready(format!("the follower is {}", s.phase.replace('_', " ")));
            }
            if lag_ms > max {
                return not_ready(format!(
                    "the follower has been {} for {lag_ms} ms, more than api.ready-max-lag-ms \
                     ({max}){}",
                    if s.phase == "streaming" {
                        "behind its leader".to_string()
                    } else {
                        format!("{} from its leader", s.phase)
                    },
                    s.last_error
                        .as_deref()
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                ));
            }
            Ok(json!({"ready": true, "role": "follower", "lag_ms": lag_ms}))
        }
    }
}

/// A follower's leader sends something at least this often (a heartbeat while idle, every
/// second, checked five times a second), plus a margin: silence beyond it counts as lag.
const LEADER_SILENCE_ALLOWED_MS: u64 = 1_500;

/// For how long this node may have been behind its leader (ms): 0 on a leader; on a follower,
/// how long it has not been streaming with everything its leader announced applied, or its
/// leader has been silent beyond its heartbeat interval; on a cluster member, how long it has
/// known no leader or not applied all its leader committed.
pub fn lag_ms(node: &Node) -> u64 {
    let now = mono_ms();
    // On a cluster member the consensus knows best (a leader that lost its majority steps
    // down there first).
    match (&node.cluster, &*node.role()) {
        (Some(c), _) => c
            .status
            .borrow()
            .behind_since_ms
            .map_or(0, |since| now.saturating_sub(since)),
        (None, Role::Leader { .. }) => 0,
        (None, Role::Follower { state, .. }) => {
            let s = state.status();
            let behind = s
                .behind_since_ms
                .map_or(0, |since| now.saturating_sub(since));
            let silent = s.heard_ms.map_or(0, |heard| {
                now.saturating_sub(heard)
                    .saturating_sub(LEADER_SILENCE_ALLOWED_MS)
            });
            behind.max(silent)
        }
    }
}
