//! `cluster.json` in a member's data directory: what its consensus machine must find again
//! after a restart — its member id, the members, the hard state (epoch, vote, commit), the
//! epoch history and the base its log starts after. Written atomically (temp file, fsync,
//! rename, directory fsync); the epoch and the vote are written before any message that
//! depends on them leaves (the consensus machine's `Persist` comes first).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CLUSTER_FORMAT_VERSION: u32 = 1;
pub const CLUSTER_FILE: &str = "cluster.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The node's id (`--id`).
    pub name: String,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub format_version: u32,
    pub cluster_id: String,
    /// This member's id in the consensus (1 and up).
    pub member_id: u64,
    pub members: BTreeMap<u64, Member>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Raft's hard state: the epoch (term), the vote in it, the commit index.
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
    /// `(epoch, first LSN)` of each epoch (see `flotilla_core::consensus::EpochHistory`).
    pub epochs: Vec<(u64, u64)>,
    /// The position the log starts after (a snapshot's; `(0, 0)` for a new cluster).
    pub base_lsn: u64,
    pub base_epoch: u64,
    /// The highest member id the cluster ever gave (a removed member's is never given again).
    #[serde(default)]
    pub highest_member_id: u64,
    /// The cluster requires API tokens: a member started without `--auth` is refused.
    #[serde(default)]
    pub auth: bool,
    /// The data centre the cluster leads (multi-leader, `--dc`): a member started with
    /// another `--dc`, or none, is refused (it would lead without stamping its writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dc: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a cluster file this version understands: {detail} (format version \
         {CLUSTER_FORMAT_VERSION})"
    )]
    Invalid { path: PathBuf, detail: String },
    #[error("cannot save {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ClusterFile {
    /// The id the next member added gets.
    pub fn next_member_id(&self) -> u64 {
        let known = self
            .members
            .keys()
            .chain(&self.voters)
            .chain(&self.learners)
            .copied()
            .max()
            .unwrap_or(0);
        known.max(self.highest_member_id) + 1
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join(CLUSTER_FILE)
    }

    /// `None` when the data directory holds no cluster file (the node is no member yet).
    pub fn load(dir: &Path) -> Result<Option<ClusterFile>, ClusterFileError> {
        let path = Self::path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ClusterFileError::Read { path, source }),
        };
        let file: ClusterFile =
            serde_json::from_slice(&bytes).map_err(|e| ClusterFileError::Invalid {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        if file.format_version != CLUSTER_FORMAT_VERSION {
            return Err(ClusterFileError::Invalid {
                path,
                detail: format!("format version {}", file.format_version),
            });
        }
        if !file.members.contains_key(&file.member_id) {
            return Err(ClusterFileError::Invalid {
                path,
                detail: format!("member {} is not among its members", file.member_id),
            });
        }
        Ok(Some(file))
    }

    pub fn save(&self, dir: &Path) -> Result<(), ClusterFileError> {
        let path = Self::path(dir);
        let bytes = serde_json::to_vec_pretty(self).expect("a cluster file serializes");
        flotilla_store::atomic_file::write_atomically(&path, &bytes)
            .map_err(|source| ClusterFileError::Write { path, source })
    }

    /// The member named `name` (a node id), if any.
    pub fn member_named(&self, name: &str) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, m)| m.name == name)
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterFile {
        let mut members = BTreeMap::new();
        for (id, name) in [(1, "n1"), (2, "n2"), (3, "n3")] {
            members.insert(
                id,
                Member {
                    name: name.into(),
                    url: format!("http://127.0.0.1:479{id}"),
                },
            );
        }
        ClusterFile {
            dc: None,
            format_version: CLUSTER_FORMAT_VERSION,
            cluster_id: "c1".into(),
            member_id: 2,
            members,
            voters: vec![1, 2, 3],
            learners: vec![],
            term: 7,
            vote: 1,
            commit: 99,
            epochs: vec![(1, 1), (7, 80)],
            base_lsn: 0,
            base_epoch: 0,
            highest_member_id: 0,
            auth: false,
        }
    }

    #[test]
    fn saves_loads_and_refuses_what_it_does_not_understand() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ClusterFile::load(dir.path()).unwrap().is_none());
        let f = sample();
        f.save(dir.path()).unwrap();
        assert_eq!(ClusterFile::load(dir.path()).unwrap(), Some(f.clone()));
        assert_eq!(f.member_named("n3"), Some(3));
        let mut v2 = f.clone();
        v2.format_version = 2;
        v2.save(dir.path()).unwrap();
        let err = ClusterFile::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("format version 2"), "{err}");
        let mut stranger = f;
        stranger.member_id = 9;
        stranger.save(dir.path()).unwrap();
        assert!(ClusterFile::load(dir.path()).is_err());
        std::fs::write(ClusterFile::path(dir.path()), b"{ not json").unwrap();
        let err = ClusterFile::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cluster.json"), "{err}");
    }
}
