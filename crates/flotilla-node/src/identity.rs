//! `node.toml` in the data directory: what a node keeps about itself across restarts.
//! Written atomically (temp file, fsync, rename, directory fsync).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join("node.toml")
}

/// Loads the identity, or creates it for a new node.
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
            let ident = Identity {
                format_version: IDENTITY_FORMAT_VERSION,
                id: id.to_string(),
                cluster_id: None,
                epoch: 0,
                incarnation: None,
                leader_incarnation: None,
            };
            save(dir, &ident)?;
            Ok(ident)
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
    use std::io::Write;
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    // A temporary file of its own per call: two saves at once never write into one file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".{}.{n}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Concurrent saves each write a whole file: the result is one of them, never a mix.
    #[test]
    fn concurrent_atomic_writes_never_tear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("followers.json");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomically(path, &vec![b'a' + t; 10_000 + t as usize]).unwrap();
                    }
                });
            }
        });
        let bytes = std::fs::read(&path).unwrap();
        let t = bytes[0] - b'a';
        assert_eq!(bytes, vec![b'a' + t; 10_000 + t as usize]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

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
