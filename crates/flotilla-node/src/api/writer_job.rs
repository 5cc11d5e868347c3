//! Handing an internal change (a pipeline, a token) to the leader's writer and waiting for the
//! commit that makes it.

use super::execute::not_leader;
use super::ApiError;
use crate::leader::WriteJob;
use crate::node::Node;
use axum::http::StatusCode;
use flotilla_types::Position;
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Position, String>>;

/// The position of the commit, or the writer's reason for refusing the change (`Ok(Err(_))`);
/// `Err` when this node is not the leader or the leader is stopping.
pub async fn run(
    node: &Node,
    job: impl FnOnce(Reply) -> WriteJob,
) -> Result<Result<Position, String>, ApiError> {
    let leader = node.leader().ok_or_else(|| not_leader(node))?;
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
