//! `node.toml` in the data directory: what a node keeps about itself across restarts.
//! Written atomically (temp file, fsync, rename, directory fsync).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const IDENTITY_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Identity {
    pub format_version: u32,
    pub id: String,
    /// Adopted from the leader (follower) or created (leader); absent until known.
    pub cluster_id: Option<String>,
    /// The highest epoch this node has seen.
    pub epoch: u64,
    /// Set when this data directory first runs as a leader, kept while it leads: followers
    /// hold on to the incarnation they follow.
    #[serde(default)]
    pub incarnation: Option<String>,
    /// On a follower: the incarnation of the leader it follows (adopted at its first welcome
    /// after a bootstrap); a leader of another incarnation is refused.
    #[serde(default)]
    pub leader_incarnation: Option<String>,
}

/// A running node's identity and where it is saved: changed only through these methods, each
/// saving the file before it returns.
pub struct IdentityStore {
    dir: PathBuf,
    ident: Mutex<Identity>,
}

impl IdentityStore {
    /// `ident` as loaded from (or created in) the data directory `dir`.
    pub fn new(dir: &Path, ident: Identity) -> IdentityStore {
        IdentityStore {
            dir: dir.to_path_buf(),
            ident: Mutex::new(ident),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Identity> {
        self.ident.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the identity as it is now.
    pub fn get(&self) -> Identity {
        self.lock().clone()
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.lock().cluster_id.clone()
    }

    /// The incarnation of the leader this follower follows (`None`: adopt the next one).
    pub fn leader_incarnation(&self) -> Option<String> {
        self.lock().leader_incarnation.clone()
    }

    /// Remembers the incarnation of the leader this follower follows from now on.
    pub fn remember_leader(&self, incarnation: &str) -> Result<(), IdentityError> {
        let mut ident = self.lock();
        if ident.leader_incarnation.as_deref() != Some(incarnation) {
            ident.leader_incarnation = Some(incarnation.to_string());
            save(&self.dir, &ident)?;
        }
        Ok(())
    }

    /// Writes the identity if the data directory has none yet: the node has started, and the
    /// directory is its from now on.
    pub fn pin(&self) -> Result<(), IdentityError> {
        if path(&self.dir).exists() {
            return Ok(());
        }
        save(&self.dir, &self.lock())
    }

    /// Records the cluster id adopted from a leader; refuses another one.
    pub fn adopt_cluster(&self, cluster_id: &str) -> Result<(), IdentityError> {
        let mut ident = self.lock();
        match &ident.cluster_id {
            Some(c) if c == cluster_id => Ok(()),
            Some(c) => Err(IdentityError::OtherCluster {
                leader: cluster_id.to_string(),
                mine: c.clone(),
            }),
            None => {
                ident.cluster_id = Some(cluster_id.to_string());
                save(&self.dir, &ident)
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged or not a Flotilla identity file: {message}")]
    Damaged { path: PathBuf, message: String },
    #[error(
        "the data directory {dir} belongs to node {stored:?}, not {given:?}: use --id {stored} or another directory"
    )]
    OtherNode {
        dir: PathBuf,
        stored: String,
        given: String,
    },
    #[error(
        "{path} has format version {found}; this build reads version {IDENTITY_FORMAT_VERSION}"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("the leader belongs to cluster {leader}, but this node belongs to cluster {mine}")]
    OtherCluster { leader: String, mine: String },
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join("node.toml")
}

/// Loads the identity, or makes one for a new node. A new one is not written here: the node
/// saves it once it has started (a first start that fails, on a port in use say, leaves no id
/// behind to refuse the next start's `--id`).
pub fn load_or_create(dir: &Path, id: &str) -> Result<Identity, IdentityError> {
    let p = path(dir);
    let io = |source| IdentityError::Io {
        path: p.clone(),
        source,
    };
    match std::fs::read_to_string(&p) {
        Ok(text) => {
            let ident: Identity = toml::from_str(&text).map_err(|e| IdentityError::Damaged {
                path: p.clone(),
                message: e.to_string(),
            })?;
            if ident.format_version != IDENTITY_FORMAT_VERSION {
                return Err(IdentityError::Version {
                    path: p,
                    found: ident.format_version,
                });
            }
            if ident.id != id {
                return Err(IdentityError::OtherNode {
                    dir: dir.to_path_buf(),
                    stored: ident.id,
                    given: id.to_string(),
                });
            }
            Ok(ident)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io)?;
            Ok(Identity {
                format_version: IDENTITY_FORMAT_VERSION,
                id: id.to_string(),
                cluster_id: None,
                epoch: 0,
                incarnation: None,
                leader_incarnation: None,
            })
        }
        Err(e) => Err(io(e)),
    }
}

pub fn save(dir: &Path, ident: &Identity) -> Result<(), IdentityError> {
    write_atomically(
        &path(dir),
        toml::to_string(ident).expect("serialisable").as_bytes(),
    )
}

/// Writes `bytes` to `path` so that a crash leaves the old content or the new, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    flotilla_store::atomic_file::write_atomically(path, bytes).map_err(|source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_then_reloaded_and_other_ids_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut ident = load_or_create(dir.path(), "a").unwrap();
        ident.cluster_id = Some("c".into());
        save(dir.path(), &ident).unwrap();
        assert_eq!(load_or_create(dir.path(), "a").unwrap(), ident);
        let err = load_or_create(dir.path(), "b").unwrap_err().to_string();
        assert!(err.contains("belongs to node \"a\""), "{err}");
    }
}
