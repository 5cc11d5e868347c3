//! A member's `cluster.json` at start: the one in the data directory, or a new one from the
//! members given (`--cluster`), the same on every member of a new cluster.

use super::state::{ClusterFile, Member, CLUSTER_FORMAT_VERSION};
use flotilla_types::NodeId;
use std::path::Path;

/// The cluster id of a new cluster: derived from its members (names and URLs, in order), so
/// that members started with the same list agree, and a member started with another list is
/// of another cluster (its messages are refused).
pub fn cluster_id_of(members: &[(NodeId, String)], dc: Option<&str>) -> String {
    let mut h = sha2::Sha256::new();
    use sha2::Digest;
    // A data centre's members agree on it too: one started with another --dc is of another
    // cluster (its messages are refused) instead of leading with the wrong data centre.
    if let Some(dc) = dc {
        h.update(b"dc=");
        h.update(dc.as_bytes());
        h.update(b";");
    }
    for (name, url) in members {
        h.update(name.as_str().as_bytes());
        h.update(b"=");
        h.update(url.as_bytes());
        h.update(b",");
    }
    let d = h.finalize();
    let bytes: [u8; 16] = d[..16].try_into().expect("16 bytes");
    flotilla_types::ClusterId::from_random(bytes).to_string()
}

pub fn cluster_file(
    dir: &Path,
    members: &[(NodeId, String)],
    me: &NodeId,
    auth: bool,
    dc: Option<&str>,
) -> anyhow::Result<ClusterFile> {
    if let Some(mut f) = ClusterFile::load(dir)? {
        if auth && !f.auth {
            // Tokens required from now on: a later start without --auth is refused.
            f.auth = true;
            f.save(dir)?;
        }
        let mine = f.members.get(&f.member_id).map(|m| m.name.as_str());
        if mine != Some(me.as_str()) {
            anyhow::bail!(
                "this data directory is member {} ({}) of its cluster, not {me}",
                f.member_id,
                mine.unwrap_or("?")
            );
        }
        let given: Vec<(&str, &str)> = members
            .iter()
            .map(|(n, u)| (n.as_str(), u.as_str()))
            .collect();
        let known: Vec<(&str, &str)> = f
            .members
            .values()
            .map(|m| (m.name.as_str(), m.url.as_str()))
            .collect();
        if given != known {
            tracing::warn!(
                "--cluster lists other members than this data directory knows; the data \
                 directory's list is used (membership changes go through `flotilla cluster`)"
            );
        }
        return Ok(f);
    }
    let member_id = members
        .iter()
        .position(|(n, _)| n == me)
        .map(|i| i as u64 + 1)
        .ok_or_else(|| anyhow::anyhow!("this node ({me}) is not among the members given"))?;
    let file = ClusterFile {
        format_version: CLUSTER_FORMAT_VERSION,
        cluster_id: cluster_id_of(members, dc),
        member_id,
        members: members
            .iter()
            .enumerate()
            .map(|(i, (n, u))| {
                (
                    i as u64 + 1,
                    Member {
                        name: n.as_str().to_string(),
                        url: u.clone(),
                    },
                )
            })
            .collect(),
        voters: (1..=members.len() as u64).collect(),
        learners: Vec::new(),
        term: 0,
        vote: 0,
        commit: 0,
        epochs: Vec::new(),
        base_lsn: 0,
        base_epoch: 0,
        highest_member_id: 0,
        auth,
        dc: dc.map(str::to_string),
    };
    file.save(dir)?;
    tracing::info!(cluster_id = %file.cluster_id, member = member_id, "joined a new cluster");
    Ok(file)
}

/// The `cluster.json` of a node that joins an existing cluster through `via` (any member):
/// the one in the data directory if it joined before; otherwise it asks the leader to add it
/// as a learner (`POST /v1/cluster/members`, following a 421 to the leader, waiting out an
/// election) and keeps what the answer says of the cluster.
pub async fn joined(
    dir: &Path,
    via: &str,
    me: &NodeId,
    my_url: &str,
    peers: &crate::peer::Peers,
    auth: bool,
    dc: Option<&str>,
) -> anyhow::Result<ClusterFile> {
    if let Some(f) = ClusterFile::load(dir)? {
        let mine = f.members.get(&f.member_id).map(|m| m.name.as_str());
        if mine != Some(me.as_str()) {
            anyhow::bail!(
                "this data directory is member {} ({}) of its cluster, not {me}",
                f.member_id,
                mine.unwrap_or("?")
            );
        }
        tracing::info!("this data directory is a member already: --join {via} is not needed");
        return Ok(f);
    }
    // Whether this node requires tokens: a cluster that does refuses a member that does not
    // (it would serve the cluster's data to anyone).
    let body = serde_json::json!({"member": me.as_str(), "url": my_url, "voter": false,
                                  "auth": auth});
    let mut target = via.to_string();
    let mut last_error = String::new();
    let answer = 'asking: {
        for _ in 0..60 {
            let sent = peers
                .authorized(peers.http.post(format!("{target}/v1/cluster/members")))
                .json(&body)
                .timeout(std::time::Duration::from_secs(15))
                .send()
                .await;
            match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let v: serde_json::Value = resp.json().await.unwrap_or_default();
                    let code = v["error"]["code"].as_str().unwrap_or("");
                    match (status, v["error"]["leader"].as_str()) {
                        (200, _) => break 'asking v,
                        (421, Some(leader)) => {
                            target = leader.to_string();
                            continue;
                        }
                        (401, _) => anyhow::bail!(
                            "{target} refused this node's cluster secret (401): give the \
                             members' --cluster-secret (FLOTILLA_CLUSTER_SECRET)"
                        ),
                        (503, _) => last_error = format!("{target}: {status} {code}"),
                        _ => anyhow::bail!(
                            "{target} refused to add {me} to its cluster: {status} {code}: {}",
                            v["error"]["message"].as_str().unwrap_or("(no message)")
                        ),
                    }
                }
                Err(e) => last_error = format!("{target}: {}", crate::peer::error_chain(&e)),
            }
            // An election, or the member named is down: ask again, through the first one.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            target = via.to_string();
        }
        anyhow::bail!("could not join the cluster through {via} within 30 s: {last_error}");
    };
    let bad =
        |what: &str| anyhow::anyhow!("the cluster's answer to the join has no {what}: {answer}");
    let ids = |key: &str| -> Vec<u64> {
        answer[key]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default()
    };
    let mut members = std::collections::BTreeMap::new();
    for m in answer["members"].as_array().ok_or_else(|| bad("members"))? {
        let (Some(id), Some(name), Some(url)) = (
            m["member_id"].as_u64(),
            m["name"].as_str(),
            m["url"].as_str(),
        ) else {
            return Err(bad("well-formed member"));
        };
        members.insert(
            id,
            Member {
                name: name.to_string(),
                url: url.to_string(),
            },
        );
    }
    let theirs = answer["dc"].as_str();
    if theirs != dc {
        anyhow::bail!(
            "the cluster at {via} leads {}, and this node was started {}: a data centre's \
             members all name it with --dc",
            theirs.map_or("no data centre".into(), |d| format!("data centre {d}")),
            dc.map_or("without --dc".into(), |d| format!("with --dc {d}"))
        );
    }
    let member_id = answer["member_id"]
        .as_u64()
        .ok_or_else(|| bad("member_id"))?;
    if members.get(&member_id).map(|m| m.name.as_str()) != Some(me.as_str()) {
        return Err(bad(&format!("entry for {me}")));
    }
    let file = ClusterFile {
        format_version: CLUSTER_FORMAT_VERSION,
        cluster_id: answer["cluster_id"]
            .as_str()
            .ok_or_else(|| bad("cluster_id"))?
            .to_string(),
        member_id,
        highest_member_id: members.keys().copied().max().unwrap_or(0),
        auth: auth || answer["auth"] == true,
        members,
        voters: ids("voters"),
        learners: ids("learners"),
        term: 0,
        vote: 0,
        commit: 0,
        epochs: Vec::new(),
        base_lsn: 0,
        base_epoch: 0,
        dc: dc.map(str::to_string),
    };
    file.save(dir)?;
    tracing::info!(
        cluster_id = %file.cluster_id,
        member = member_id,
        "joined the cluster as a learner (flotilla cluster add-voter makes it a voter)"
    );
    Ok(file)
}

#[cfg(test)]
mod dc_tests {
    use super::cluster_id_of;
    use flotilla_types::NodeId;

    /// Members of a data centre agree on their cluster only with the same --dc: one started
    /// with another is of another cluster (refused), not a member that would lead it wrongly.
    #[test]
    fn the_data_centre_is_part_of_a_new_clusters_id() {
        let members: Vec<(NodeId, String)> = ["a", "b", "c"]
            .iter()
            .map(|n| (NodeId::new(n).unwrap(), format!("http://{n}:1")))
            .collect();
        let plain = cluster_id_of(&members, None);
        let eu = cluster_id_of(&members, Some("eu"));
        assert_ne!(plain, eu);
        assert_ne!(eu, cluster_id_of(&members, Some("us")));
        assert_eq!(eu, cluster_id_of(&members, Some("eu")));
    }
}
