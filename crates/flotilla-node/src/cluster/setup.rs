//! A member's `cluster.json` at start: the one in the data directory, or a new one from the
//! members given (`--cluster`), the same on every member of a new cluster.

use super::state::{ClusterFile, Member, CLUSTER_FORMAT_VERSION};
use flotilla_types::NodeId;
use std::path::Path;

/// The cluster id of a new cluster: derived from its members (names and URLs, in order), so
/// that members started with the same list agree, and a member started with another list is
/// of another cluster (its messages are refused).
pub fn cluster_id_of(members: &[(NodeId, String)]) -> String {
    let mut h = sha2::Sha256::new();
    use sha2::Digest;
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
        cluster_id: cluster_id_of(members),
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
    };
    file.save(dir)?;
    tracing::info!(cluster_id = %file.cluster_id, member = member_id, "joined a new cluster");
    Ok(file)
}
