//! Node settings: one struct, read from TOML (kebab-case keys, unknown keys refused), overridden
//! by flags, then validated. `config.example.toml` at the repository root shows every key.

use flotilla_log::FsyncPolicy;
use flotilla_store::Synchronous;
use flotilla_types::NodeId;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4790";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// The file form: everything optional, so flags can fill in.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    pub id: Option<String>,
    pub data: Option<PathBuf>,
    pub listen: Option<String>,
    pub follow: Option<String>,
    pub advertise_url: Option<String>,
    pub synchronous: Option<String>,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub api: ApiSection,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogSection {
    pub fsync: Option<String>,
    pub segment_mib: Option<u64>,
    pub retention_max_mib: Option<u64>,
    pub retention_max_age_hours: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ApiSection {
    pub max_body_kib: Option<u64>,
    pub readers: Option<usize>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The leader's URL for a follower; `None` for a leader.
    pub follow: Option<String>,
    /// The URL other nodes and clients use to reach this node (default: from `listen`).
    pub advertise_url: Option<String>,
    pub synchronous: Synchronous,
    pub log_fsync: FsyncPolicy,
    pub segment_bytes: u64,
    pub retention_max_bytes: u64,
    pub retention_max_age_ms: u64,
    pub max_body_bytes: usize,
    pub readers: usize,
}

impl ConfigFile {
    pub fn validate(self) -> Result<NodeConfig, ConfigError> {
        let id = self
            .id
            .ok_or_else(|| invalid("id", "missing: give --id or `id = ...`"))?;
        let id = NodeId::new(&id).map_err(|e| invalid("id", e.to_string()))?;
        let data_dir = self
            .data
            .ok_or_else(|| invalid("data", "missing: give --data DIR or `data = ...`"))?;
        let listen_text = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{listen_text:?} is not HOST:PORT with a numeric IP, e.g. 127.0.0.1:4790"),
            )
        })?;
        let follow = match self.follow {
            Some(url) => Some(validate_url("follow", &url)?),
            None => None,
        };
        let advertise_url = match self.advertise_url {
            Some(url) => Some(validate_url("advertise-url", &url)?),
            None => None,
        };
        let synchronous = match self.synchronous.as_deref().unwrap_or("full") {
            "full" => Synchronous::Full,
            "normal" => Synchronous::Normal,
            "off" => Synchronous::Off,
            other => {
                return Err(invalid(
                    "synchronous",
                    format!("{other:?}: expected \"full\", \"normal\" or \"off\""),
                ))
            }
        };
        let log_fsync = match self.log.fsync.as_deref().unwrap_or("always") {
            "always" => FsyncPolicy::Always,
            "never" => FsyncPolicy::Never,
            other => {
                return Err(invalid(
                    "log.fsync",
                    format!("{other:?}: expected \"always\" or \"never\""),
                ))
            }
        };
        let segment_mib = self.log.segment_mib.unwrap_or(64);
        if !(1..=1024).contains(&segment_mib) {
            return Err(invalid("log.segment-mib", "must be between 1 and 1024"));
        }
        let readers = self.api.readers.unwrap_or(4);
        if !(1..=64).contains(&readers) {
            return Err(invalid("api.readers", "must be between 1 and 64"));
        }
        Ok(NodeConfig {
            id,
            data_dir,
            listen,
            follow,
            advertise_url,
            synchronous,
            log_fsync,
            segment_bytes: segment_mib << 20,
            retention_max_bytes: self.log.retention_max_mib.unwrap_or(1024) << 20,
            retention_max_age_ms: self.log.retention_max_age_hours.unwrap_or(24) * 3_600_000,
            max_body_bytes: (self.api.max_body_kib.unwrap_or(16 * 1024) << 10) as usize,
            readers,
        })
    }
}

fn validate_url(key: &'static str, url: &str) -> Result<String, ConfigError> {
    let trimmed = url.trim_end_matches('/');
    let ok = trimmed
        .strip_prefix("http://")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(' '));
    if ok {
        Ok(trimmed.to_string())
    } else {
        Err(invalid(
            key,
            format!("{url:?} is not an http:// URL such as http://127.0.0.1:4790"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.example.toml");
        let cfg = ConfigFile::load(&path).unwrap().validate().unwrap();
        assert_eq!(cfg.id.as_str(), "node1");
        assert!(cfg.listen.ip().is_loopback());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = toml::from_str::<ConfigFile>("idd = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `idd`"), "{err}");
        let bad = ConfigFile {
            id: Some("a".into()),
            data: Some("d".into()),
            follow: Some("ftp://x".into()),
            ..Default::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("follow") && err.contains("http://"), "{err}");
        let bad = ConfigFile {
            id: Some("a b".into()),
            data: Some("d".into()),
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("invalid setting id"));
    }

    #[test]
    fn default_listen_is_loopback() {
        let cfg = ConfigFile {
            id: Some("a".into()),
            data: Some("d".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert!(cfg.listen.ip().is_loopback());
    }
}
