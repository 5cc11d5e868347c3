//! Membership changes on a cluster's leader (admin role):
//!
//! - `POST /v1/cluster/members {"member": "n4", "url": "http://…", "voter": false}` adds a
//!   learner (a member that receives the log and votes in nothing; `flotilla serve --join`
//!   sends this for itself), or, with `"voter": true` for a learner that has caught up, makes
//!   it a voter (`flotilla cluster add-voter`). Sent again, it is answered as done.
//! - `DELETE /v1/cluster/members/{name}` removes a member (`flotilla cluster remove`), unless
//!   it leads (hand over first) or the voters left could not commit without it.
//!
//! A change goes through the leader's writer, which proposes it between two transactions at
//! the position it counts for it. One change at a time: Raft applies a membership change once
//! it is committed, and turns a second one proposed before that into a no-op.

use super::ApiError;
use crate::cluster::driver::{ClusterHandle, MemberContext};
use crate::leader::WriteJob;
use crate::node::Node;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use flotilla_core::consensus::{MemberChange, Role};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// How long a change may take to be committed and applied before the answer says so.
const CHANGE_WAIT: Duration = Duration::from_secs(10);
/// A learner this close to the leader's commit (entries) may become a voter.
const CAUGHT_UP_ENTRIES: u64 = 1_000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    member: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    voter: bool,
    /// Whether the joining node requires API tokens (sent by `flotilla serve --join`).
    #[serde(default)]
    auth: Option<bool>,
}

fn conflict(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, message)
}

/// The cluster handle of a member that leads, or the error to answer.
fn leading(node: &Node) -> Result<Arc<ClusterHandle>, ApiError> {
    let Some(c) = node.cluster.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this node is not a cluster member (flotilla serve --cluster)",
        ));
    };
    if c.status.borrow().role != Role::Leader {
        return Err(super::execute::leader_only(
            node,
            "changes the membership through",
        ));
    }
    Ok(c)
}

/// What a member (a joining one, say) needs to know of the cluster, and whether it requires
/// tokens (a member joining without `--auth` would open the cluster's data to anyone).
fn membership(node: &Node, c: &ClusterHandle, member_id: u64) -> Value {
    let file = c.file();
    let members: Vec<Value> = file
        .members
        .iter()
        .map(|(id, m)| json!({"member_id": id, "name": m.name, "url": m.url}))
        .collect();
    json!({
        "cluster_id": c.cluster_id,
        "member_id": member_id,
        "members": members,
        "voters": file.voters,
        "learners": file.learners,
        "auth": node.config.auth,
        "dc": node.config.multi_leader.as_ref().map(|m| m.dc.as_str()),
    })
}

/// Proposes `change` and waits until it is committed and in effect (`done` holds).
async fn change(
    node: &Node,
    c: &ClusterHandle,
    change: MemberChange,
    member: MemberContext,
    done: impl Fn(&crate::cluster::driver::ClusterStatus) -> bool,
) -> Result<(), ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let unavailable =
        |why: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
    // Through the writer: the change takes the next position between two transactions.
    let Some(leader) = node.leader() else {
        return Err(unavailable(
            "this member was just elected and is opening its database; retry shortly".into(),
        ));
    };
    let job = WriteJob::Membership {
        change,
        member,
        reply: tx,
    };
    if leader.writer.send(job).await.is_err() {
        return Err(unavailable("this member stopped leading; retry".into()));
    }
    match rx.await {
        Ok(Ok(_)) => {}
        Ok(Err(why)) => return Err(unavailable(format!("the change was not proposed: {why}"))),
        Err(_) => return Err(unavailable("this member stopped leading; retry".into())),
    }
    let mut status = c.status.clone();
    let applied = tokio::time::timeout(CHANGE_WAIT, status.wait_for(|s| done(s)))
        .await
        .is_ok_and(|r| r.is_ok());
    if !applied {
        return Err(unavailable(format!(
            "the change did not take effect within {} s: no majority of the voters answered, \
             the leadership changed, or another membership change was under way; see flotilla \
             cluster status, and retry",
            CHANGE_WAIT.as_secs()
        )));
    }
    Ok(())
}

pub async fn add(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let c = leading(&node)?;
    let by_member = node.keyring.is_some()
        && crate::auth::presents_cluster_secret(
            &node,
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        );
    let raw = super::body::json_bytes(&headers, body, 64 << 10).await?;
    let req: AddMember = super::decode::decode_json(&raw)?;
    if node.config.auth && req.auth == Some(false) {
        return Err(ApiError::bad_request(
            "bad_request",
            "this cluster requires API tokens (its members run with --auth): start the joining \
             node with --auth too, or it would serve the cluster's data to anyone",
        ));
    }
    if by_member && req.voter {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the members' secret lets a node join as a learner only: making a voter needs an \
             admin token (flotilla cluster add-voter --token …)",
        ));
    }
    let name = flotilla_types::NodeId::new(&req.member)
        .map_err(|e| ApiError::bad_request("bad_request", format!("member: {e}")))?
        .as_str()
        .to_string();
    let url = match &req.url {
        Some(u) => Some(
            crate::config::member_url("url", u)
                .map_err(|e| ApiError::bad_request("bad_request", e.to_string()))?,
        ),
        None => None,
    };
    let file = c.file();
    let status = c.status.borrow().clone();
    if let Some(id) = file.member_named(&name) {
        let known = &file.members[&id];
        if url.as_ref().is_some_and(|u| *u != known.url) {
            return Err(conflict(
                "member_exists",
                format!(
                    "{name} is a member at {} already: remove it first to add it at another URL",
                    known.url
                ),
            ));
        }
        let voter = status.voters.contains(&id);
        if !req.voter {
            // A node asking to join under a member's name: that member is running or lost
            // its data (a fresh log where the cluster counts on one would stop it).
            return Err(conflict(
                "member_exists",
                format!(
                    "{name} is a member already ({}): start it with its own data directory; \
                     if that is lost, remove it first (flotilla cluster remove --member {name}) \
                     and let it join again",
                    if voter { "a voter" } else { "a learner" }
                ),
            ));
        }
        if voter {
            return Ok(Json(membership(&node, &c, id)));
        }
        // A learner becomes a voter once it answers and holds (nearly) everything: a voter
        // that is far behind, or not there at all, would count toward a majority it cannot
        // help make (enough of them and the cluster could elect no one).
        let progress = status.progress.iter().find(|p| p.id == id);
        let matched = progress.map_or(0, |p| p.matched.0);
        let answers = progress.is_some_and(|p| p.active);
        if !answers || matched == 0 || matched + CAUGHT_UP_ENTRIES < status.commit.0 {
            return Err(conflict(
                "not_caught_up",
                format!(
                    "{name} holds the log through lsn {matched} of {}{}: wait until it has \
                     caught up (flotilla cluster status), then try again",
                    status.commit.0,
                    if answers {
                        ""
                    } else {
                        ", and does not answer the leader"
                    },
                ),
            ));
        }
        let member = MemberContext {
            member_id: id,
            name: name.clone(),
            url: known.url.clone(),
        };
        change(&node, &c, MemberChange::AddVoter(id), member, |s| {
            s.voters.contains(&id)
        })
        .await?;
        return Ok(Json(membership(&node, &c, id)));
    }
    if req.voter {
        return Err(ApiError::bad_request(
            "bad_request",
            format!(
                "{name} is not a member yet: it joins as a learner first (flotilla serve --id \
                 {name} --join LEADER), and becomes a voter once it has caught up (flotilla \
                 cluster add-voter)"
            ),
        ));
    }
    let Some(url) = url else {
        return Err(ApiError::bad_request(
            "bad_request",
            format!("a new member needs its URL (\"url\"), where the others reach {name}"),
        ));
    };
    if let Some((_, m)) = file.members.iter().find(|(_, m)| m.url == url) {
        return Err(conflict(
            "member_exists",
            format!("{url} is the URL of member {} already", m.name),
        ));
    }
    let id = file.next_member_id();
    let member = MemberContext {
        member_id: id,
        name,
        url,
    };
    change(&node, &c, MemberChange::AddLearner(id), member, |s| {
        s.learners.contains(&id)
    })
    .await?;
    Ok(Json(membership(&node, &c, id)))
}

pub async fn remove(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = leading(&node)?;
    let file = c.file();
    let Some(id) = file.member_named(&name) else {
        let names: Vec<&str> = file.members.values().map(|m| m.name.as_str()).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no member is named {name:?}; the members are {}",
                names.join(", ")
            ),
        ));
    };
    let status = c.status.borrow().clone();
    if id == c.member_id {
        return Err(conflict(
            "member_leads",
            format!(
                "{name} leads the cluster: hand the leadership to another voter first (flotilla \
                 promote), then remove {name} through the new leader"
            ),
        ));
    }
    if status.voters.contains(&id) {
        // The voters left must still make a majority of themselves among those that answer,
        // or nothing could be committed after the removal (nor the removal itself).
        let left: Vec<u64> = status.voters.iter().copied().filter(|v| *v != id).collect();
        let answering = left
            .iter()
            .filter(|v| {
                **v == c.member_id || status.progress.iter().any(|p| p.id == **v && p.active)
            })
            .count();
        if answering < left.len() / 2 + 1 {
            let names: Vec<String> = left
                .iter()
                .map(|v| {
                    file.members
                        .get(v)
                        .map_or(v.to_string(), |m| m.name.clone())
                })
                .collect();
            return Err(conflict(
                "no_majority_left",
                format!(
                    "removing {name} would leave the voters {} of which only {answering} \
                     answer: the cluster could not commit; bring the others back first",
                    names.join(", ")
                ),
            ));
        }
    }
    // `semi-sync` writes need that many other members: a removal that leaves fewer would
    // make every such write wait for ever.
    let wanted = node.config.durability.semi_sync_replicas;
    // Learners count only once they hold something (one where nothing answers never will).
    let holding_learners = status
        .learners
        .iter()
        .filter(|l| **l != id)
        .filter(|id| {
            status
                .progress
                .iter()
                .any(|p| p.id == **id && p.matched.0 > 0)
        })
        .count();
    let left = status.voters.iter().filter(|v| **v != id).count() + holding_learners;
    if wanted + 1 > left {
        return Err(conflict(
            "too_few_members",
            format!(
                "removing {name} would leave {left} members, and semi-sync writes need {} \
                 (this one and durability.semi-sync-replicas = {wanted} others): add a member \
                 first, or lower semi-sync-replicas",
                wanted + 1
            ),
        ));
    }
    let member = MemberContext {
        member_id: id,
        name: name.clone(),
        url: file.members[&id].url.clone(),
    };
    change(&node, &c, MemberChange::Remove(id), member, |s| {
        !s.voters.contains(&id) && !s.learners.contains(&id)
    })
    .await?;
    Ok(Json(membership(&node, &c, id)))
}
