//! Handing an internal change (a pipeline, a token) to the leader's writer and waiting for the
//! commit that makes it.

use super::execute::leader_only;
use super::ApiError;
use crate::leader::{ChangeError, ChangeReply, WriteJob};
use crate::node::Node;
use axum::http::StatusCode;
use flotilla_types::Position;
use tokio::sync::oneshot;

type Reply = oneshot::Sender<ChangeReply>;

/// The position of the commit, or the writer's reason for refusing the change (`Ok(Err(_))`);
/// `Err` when this node is not the leader or the leader is stopping.
pub async fn run(
    node: &Node,
    job: impl FnOnce(Reply) -> WriteJob,
) -> Result<Result<Position, ChangeError>, ApiError> {
    let leader = node
        .leader()
        .ok_or_else(|| leader_only(node, "such changes are made on"))?;
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the leader is stopping; retry",
        )
    };
    let (tx, rx) = oneshot::channel();
    leader
        .writer
        .send(job(tx))
        .await
        .map_err(|_| unavailable())?;
    rx.await.map_err(|_| unavailable())
}

/// The API's answer to a change that was not committed, by what the writer said.
pub fn change_refused(e: ChangeError, refused_code: &'static str) -> ApiError {
    match e {
        ChangeError::Token(flotilla_store::TokenError::Unknown(_)) => {
            ApiError::new(StatusCode::NOT_FOUND, "no_such_token", e.to_string())
        }
        ChangeError::Indeterminate(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "outcome_unknown",
            format!("{e}; look at the state once the node is back"),
        ),
        e => ApiError::bad_request(refused_code, e.to_string()),
    }
}
