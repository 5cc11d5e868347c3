//! Node settings: one struct, read from TOML (kebab-case keys, unknown keys refused), overridden
//! by flags, then validated. `config.example.toml` at the repository root shows every key.

mod multi_leader;
pub use multi_leader::{ExchangeTopology, MultiLeaderConfig};

use flotilla_log::FsyncPolicy;
use flotilla_store::{ConflictPolicy, RowFilter, Synchronous};
use flotilla_types::{LogKind, NodeId};
use serde::Deserialize;
use std::collections::BTreeMap;
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
    /// The voters of a new cluster, `NAME=URL` each (this node's id among them). Each starts
    /// with the same list; after the first start the data directory remembers it.
    pub cluster: Option<Vec<String>>,
    /// Join an existing cluster as a learner through any of its members (the first start
    /// only: the data directory remembers the cluster).
    pub join: Option<String>,
    /// A cluster member starts an election after this long without a leader (to twice as
    /// long, at random). Default 1000.
    pub election_timeout_ms: Option<u64>,
    pub synchronous: Option<String>,
    /// Require API tokens. Default: on when the node listens on a non-loopback address.
    pub auth: Option<bool>,
    /// A follower's token (role replicate) for its leader.
    pub replication_token: Option<String>,
    /// The secret a cluster's members share when authentication is on: they present it to
    /// each other (consensus messages, copies of the database, joining).
    pub cluster_secret: Option<String>,
    /// Multi-leader: this node leads data centre NAME (and takes writes while the others do
    /// too); see docs/multi-leader.md.
    pub dc: Option<String>,
    /// Multi-leader: the leaders of the other data centres this one exchanges with,
    /// `NAME=URL` each.
    pub peer_dc: Option<Vec<String>>,
    /// Multi-leader: `all-to-all` (default: each data centre takes from every other only the
    /// changes made there), `star` or `ring` (changes are passed on: each takes from its
    /// peers everything it lacks).
    pub exchange_topology: Option<String>,
    /// Multi-leader: a change stamped further ahead of this node's clock is refused (it would
    /// win every later conflict). Default 60000.
    pub max_clock_drift_ms: Option<u64>,
    /// `log = "logical"`, or a `[log]` section (which may hold `kind = "logical"`).
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub limits: LimitsSection,
    /// How many copies a write waits for before it is acknowledged.
    #[serde(default)]
    pub durability: DurabilitySection,
    #[serde(default)]
    pub tls: TlsSection,
    /// Where pipelines may deliver.
    #[serde(default)]
    pub pipeline_targets: PipelineTargetsSection,
    /// A logical follower's publication filter.
    #[serde(default)]
    pub filter: FilterSection,
    /// A logical follower's answer to a change that does not fit: "stop" or "overwrite".
    pub conflict_policy: Option<String>,
    /// A logical follower's page size (its own file; default SQLite's 4096).
    pub page_size: Option<u32>,
    /// Trigger-based replication pipelines a leader installs (`[[pipeline]]` sections, the
    /// fields of `flotilla pipeline add`).
    #[serde(default)]
    pub pipeline: Vec<flotilla_types::PipelineSpec>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FilterSection {
    #[serde(default)]
    pub tables: Vec<String>,
    /// Table → the columns kept.
    #[serde(default)]
    pub columns: BTreeMap<String, Vec<String>>,
    /// Table → an SQL predicate over its columns.
    #[serde(default, rename = "where")]
    pub predicates: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogSectionFields {
    /// Which log a follower consumes: "physical" (default) or "logical".
    pub kind: Option<String>,
    pub fsync: Option<String>,
    pub segment_mib: Option<u64>,
    pub retention_max_mib: Option<u64>,
    pub retention_max_age_hours: Option<u64>,
}

/// The `[log]` section; `log = "logical"` is short for `[log] kind = "logical"`.
#[derive(Debug, Default, Clone)]
pub struct LogSection(pub LogSectionFields);

impl std::ops::Deref for LogSection {
    type Target = LogSectionFields;
    fn deref(&self) -> &LogSectionFields {
        &self.0
    }
}

impl std::ops::DerefMut for LogSection {
    fn deref_mut(&mut self) -> &mut LogSectionFields {
        &mut self.0
    }
}

impl<'de> Deserialize<'de> for LogSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LogSection;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a log kind (\"physical\" or \"logical\") or a [log] section")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<LogSection, E> {
                Ok(LogSection(LogSectionFields {
                    kind: Some(v.to_string()),
                    ..Default::default()
                }))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<LogSection, A::Error> {
                LogSectionFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(LogSection)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ApiSection {
    pub max_body_kib: Option<u64>,
    pub readers: Option<usize>,
    /// A follower sends writes on to its leader instead of answering 421 (a request's own
    /// `"forward"` overrides it).
    pub forward_writes: Option<bool>,
    /// `/readyz` on a follower: ready while it is at most this far behind its leader.
    pub ready_max_lag_ms: Option<u64>,
}

/// `[durability]`: the copies a write waits for, and what happens when too few answer.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DurabilitySection {
    /// A write request's durability when it names none: "async", "semi-sync" or "quorum".
    pub default: Option<String>,
    /// `semi-sync`: replicas (besides the leader) that must hold the transaction durably.
    pub semi_sync_replicas: Option<usize>,
    /// When too few replicas answer: "wait" (until they do) or "error" (after `timeout-ms`).
    pub too_few_replicas: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// What a write does when too few replicas hold it durably.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooFewReplicas {
    /// Keep waiting (the client's own timeout, or the replicas' return, ends the wait).
    Wait,
    /// Answer 503 `not_replicated` after the timeout; the transaction stays committed on the
    /// leader, and a retry with its idempotency key waits again.
    Error,
}

/// Validated `[durability]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurabilitySettings {
    pub default: flotilla_types::Durability,
    pub semi_sync_replicas: usize,
    pub too_few_replicas: TooFewReplicas,
    pub timeout_ms: u64,
}

impl DurabilitySection {
    fn validate(&self, clustered: bool) -> Result<DurabilitySettings, ConfigError> {
        let default = match &self.default {
            None => flotilla_types::Durability::Async,
            Some(d) => d
                .parse()
                .map_err(|e: flotilla_types::DurabilityParseError| {
                    invalid("durability.default", e.to_string())
                })?,
        };

        if default == flotilla_types::Durability::Quorum && !clustered {
            return Err(invalid(
                "durability.default",
                "\"quorum\" needs a cluster of voters (--cluster); a single leader waits for \
                 followers with \"semi-sync\"",
            ));
        }
        let semi_sync_replicas = self.semi_sync_replicas.unwrap_or(1);
        if !(1..=16).contains(&semi_sync_replicas) {
            return Err(invalid(
                "durability.semi-sync-replicas",
                "must be between 1 and 16",
            ));
        }
        let too_few_replicas = match self.too_few_replicas.as_deref() {
            None | Some("wait") => TooFewReplicas::Wait,
            Some("error") => TooFewReplicas::Error,
            Some(other) => {
                return Err(invalid(
                    "durability.too-few-replicas",
                    format!("{other:?}: expected \"wait\" or \"error\""),
                ))
            }
        };
        let timeout_ms = self.timeout_ms.unwrap_or(10_000);
        if !(10..=3_600_000).contains(&timeout_ms) {
            return Err(invalid(
                "durability.timeout-ms",
                "must be between 10 and 3600000 (one hour)",
            ));
        }
        Ok(DurabilitySettings {
            default,
            semi_sync_replicas,
            too_few_replicas,
            timeout_ms,
        })
    }
}

/// `[pipeline-targets] allow = [...]`: the destinations pipelines may deliver to.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PipelineTargetsSection {
    pub allow: Option<Vec<String>>,
}

/// TLS: the node's certificate and key (it then serves HTTPS), and the CA its peers'
/// certificates are verified against.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsSection {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

/// Limits on what one request may cost.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsSection {
    /// The largest transaction a leader commits: its replication log record (row changes plus
    /// page images).
    pub max_transaction_mib: Option<u64>,
    /// How long a write request's statements may run before they are cancelled.
    pub write_timeout_ms: Option<u64>,
    /// How long a query may run before it is cancelled.
    pub query_timeout_ms: Option<u64>,
    /// A snapshot download whose client reads nothing for this long is ended.
    pub snapshot_stall_timeout_ms: Option<u64>,
    /// The most data one query may return (the values' bytes).
    pub max_result_mib: Option<u64>,
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
    /// The voters of a cluster (name, URL), in the order given: a cluster member elects its
    /// leader with them instead of following a fixed one.
    pub cluster: Option<Vec<(NodeId, String)>>,
    /// A member of the cluster to join through (a node with no `cluster.json` yet asks to be
    /// added as a learner; later starts ignore it).
    pub join: Option<String>,
    pub election_timeout_ms: u64,
    /// Whether requests must carry a token.
    pub auth: bool,
    /// A follower's token for its leader.
    pub replication_token: Option<String>,
    /// The members' shared secret (a cluster with authentication on).
    pub cluster_secret: Option<String>,
    /// Serve HTTPS with this certificate chain and key (PEM files).
    pub tls_cert_key: Option<(PathBuf, PathBuf)>,
    /// Verify the nodes this node connects to against this CA certificate (PEM).
    pub tls_ca: Option<PathBuf>,
    pub synchronous: Synchronous,
    pub log_fsync: FsyncPolicy,
    pub segment_bytes: u64,
    pub retention_max_bytes: u64,
    pub retention_max_age_ms: u64,
    pub max_body_bytes: usize,
    pub readers: usize,
    /// The largest transaction record a leader commits.
    pub max_transaction_bytes: u64,
    /// Time limits of a write request's statements and of a query; a request may ask for
    /// less, never more.
    pub write_timeout_ms: u64,
    pub query_timeout_ms: u64,
    pub snapshot_stall_timeout_ms: u64,
    /// The most data one query may return.
    pub max_result_bytes: u64,
    /// A follower forwards writes to its leader unless the request says otherwise.
    pub forward_writes: bool,
    /// A follower is ready (`/readyz`) while at most this far behind.
    pub ready_max_lag_ms: u64,
    /// The copies a write waits for.
    pub durability: DurabilitySettings,
    /// The log a follower consumes.
    pub log_kind: LogKind,
    /// A logical follower's publication filter (empty: everything).
    pub filter: RowFilter,
    pub conflict_policy: ConflictPolicy,
    /// The page size of a logical replica built from now on.
    pub page_size: Option<u32>,
    /// Pipelines declared in the config: a leader installs those it does not have.
    pub pipelines: Vec<flotilla_types::PipelineSpec>,
    /// Where pipelines may deliver (the config's list, or the defaults).
    pub pipeline_allow: Vec<crate::pipeline::allow::Allowed>,
    /// Multi-leader: this node's data centre and its peers.
    pub multi_leader: Option<MultiLeaderConfig>,
}

impl ConfigFile {
    pub fn validate(self) -> Result<NodeConfig, ConfigError> {
        let multi_leader = self.multi_leader_config()?;
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
        if self.cluster.is_some() && self.join.is_some() {
            return Err(invalid(
                "join",
                "--join cannot go with --cluster: --cluster starts a new cluster, --join joins a \
                 running one",
            ));
        }
        let cluster = match &self.cluster {
            None => None,
            Some(list) => {
                let mut members: Vec<(NodeId, String)> = Vec::new();
                for item in list {
                    let (name, url) = item.split_once('=').ok_or_else(|| {
                        invalid(
                            "cluster",
                            format!("{item:?}: expected NAME=URL (n1=10.0.0.1:4790)"),
                        )
                    })?;
                    let name = NodeId::new(name.trim())
                        .map_err(|e| invalid("cluster", format!("{item:?}: {e}")))?;
                    let url = member_url("cluster", url.trim())?;
                    if members.iter().any(|(n, _)| *n == name) {
                        return Err(invalid("cluster", format!("{name} is named twice")));
                    }
                    if let Some((other, _)) = members.iter().find(|(_, u)| *u == url) {
                        return Err(invalid(
                            "cluster",
                            format!("{name} and {other} have the same address {url}"),
                        ));
                    }
                    members.push((name, url));
                }
                let Some((_, own)) = members.iter().find(|(n, _)| *n == id) else {
                    return Err(invalid(
                        "cluster",
                        format!("this node ({id}) is not among the members given"),
                    ));
                };
                // The others dial this node at its URL in the list: it must be where it
                // listens (or the URL it advertises).
                let reachable = match &self.advertise_url {
                    Some(adv) => validate_url("advertise-url", adv)? == *own,
                    None => reqwest::Url::parse(own).is_ok_and(|u| {
                        u.port_or_known_default() == Some(listen.port())
                            && (listen.ip().is_unspecified()
                                || u.host_str().is_some_and(|h| {
                                    h.trim_matches(['[', ']']) == listen.ip().to_string()
                                }))
                    }),
                };
                if listen.port() == 0 {
                    return Err(invalid(
                        "cluster",
                        format!(
                            "this node ({id}) listens on a port the system picks (:0), but the \
                             others dial it at {own}: listen on that port"
                        ),
                    ));
                }
                if !reachable {
                    return Err(invalid(
                        "cluster",
                        format!(
                            "this node ({id}) is listed at {own}, but listens on {listen}{}: the \
                             others would dial the wrong address (give --advertise-url {own} if \
                             that address reaches this node)",
                            self.advertise_url
                                .as_deref()
                                .map(|a| format!(" and advertises {a}"))
                                .unwrap_or_default()
                        ),
                    ));
                }
                if self.follow.is_some() {
                    return Err(invalid(
                        "cluster",
                        "a cluster member elects its leader: give --cluster or --follow, not both",
                    ));
                }
                if self.log.kind.as_deref() == Some("logical") {
                    return Err(invalid(
                        "cluster",
                        "a cluster member holds a physical copy (it may lead): drop log = \"logical\"",
                    ));
                }
                Some(members)
            }
        };
        let join = match &self.join {
            None => None,
            Some(url) => {
                let url = member_url("join", url.trim())?;
                let clash = if cluster.is_some() {
                    Some("--cluster (which starts a new cluster)")
                } else if self.follow.is_some() {
                    Some("--follow (a follower outside the cluster)")
                } else if self.log.kind.as_deref() == Some("logical") {
                    Some("log = \"logical\" (a member holds a physical copy)")
                } else {
                    None
                };
                if let Some(other) = clash {
                    return Err(invalid("join", format!("--join cannot go with {other}")));
                }
                Some(url)
            }
        };
        let clustered = cluster.is_some() || join.is_some();
        let election_timeout_ms = self.election_timeout_ms.unwrap_or(1000);
        if !(100..=60_000).contains(&election_timeout_ms) {
            return Err(invalid(
                "election-timeout-ms",
                "must be between 100 and 60000 (see docs/failover.md for what is safe)",
            ));
        }

        let follow = match self.follow {
            Some(url) => Some(validate_url("follow", &url)?),
            None => None,
        };
        let advertise_url = match self.advertise_url {
            Some(url) => Some(validate_url("advertise-url", &url)?),
            None => None,
        };
        // Loopback only: reachable from this machine alone, so it may stay open (the demo's
        // one command). Anything else requires tokens unless switched off explicitly.
        let auth = self.auth.unwrap_or(!listen.ip().is_loopback());
        // (A secret without --cluster or --join is checked at start: the data directory may be
        // a member's already.)
        match &self.cluster_secret {
            Some(s) if s.trim().len() < 32 || s.trim() != s => {
                return Err(invalid(
                    "cluster-secret",
                    "must be at least 32 characters without spaces around (`openssl rand -hex \
                     32` makes one)",
                ))
            }
            None if auth && clustered => {
                return Err(invalid(
                    "cluster-secret",
                    "authentication is on: a cluster's members need a secret they share and \
                     present to each other (--cluster-secret or FLOTILLA_CLUSTER_SECRET, the \
                     same on every member; see docs/failover.md)",
                ))
            }
            _ => {}
        }
        let tls_cert_key = match (self.tls.cert, self.tls.key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "tls",
                    "give both a certificate and its key (--tls-cert and --tls-key)",
                ))
            }
        };
        if let Some(url) = follow.as_ref().filter(|u| u.starts_with("https://")) {
            if self.tls.ca.is_none() {
                return Err(invalid(
                    "tls.ca",
                    format!(
                        "{url} is an https:// leader: give --tls-ca with the CA certificate its \
                         certificate is verified against"
                    ),
                ));
            }
        }
        if let Some(t) = &self.replication_token {
            if follow.is_none() && multi_leader.is_none() {
                return Err(invalid(
                    "replication-token",
                    "a follower's token for its leader (or a data centre's for its peers): give \
                     --follow or --dc too",
                ));
            }
            if !t.starts_with("flt_") || t.trim() != t {
                return Err(invalid(
                    "replication-token",
                    "not a Flotilla token (flt_…): make one with `flotilla token create --role \
                     replicate` on the leader",
                ));
            }
        }
        // A leader's database is completed from its log (flushed before every answer) after a
        // power loss, so one flush per commit is enough there; a follower commits its applies
        // unflushed too (visible at once) and flushes its WAL beside the next apply before it
        // acknowledges them as durable (`flotilla_store::flush_wal`).
        let synchronous = match self.synchronous.as_deref().unwrap_or("normal") {
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
        let log_kind: LogKind = self
            .log
            .kind
            .as_deref()
            .unwrap_or("physical")
            .parse()
            .map_err(|e: flotilla_types::LogKindParseError| invalid("log", e.to_string()))?;
        if log_kind == LogKind::Logical && follow.is_none() {
            return Err(invalid(
                "log",
                "\"logical\" is for a follower: give --follow URL too (a leader keeps both logs)",
            ));
        }
        let f = self.filter;
        let columns: Vec<String> = f
            .columns
            .iter()
            .map(|(t, c)| format!("{t}:{}", c.join(",")))
            .collect();
        let predicates: Vec<String> = f
            .predicates
            .iter()
            .map(|(t, p)| format!("{t}: {p}"))
            .collect();
        let filter = RowFilter::parse(&f.tables, &columns, &predicates)
            .map_err(|e| invalid("filter", e.0))?;
        if !filter.is_empty() && log_kind != LogKind::Logical {
            return Err(invalid(
                "filter",
                "a filter (--tables, --columns, --where) needs a logical follower: add --log logical",
            ));
        }
        let conflict_policy = self
            .conflict_policy
            .as_deref()
            .unwrap_or("stop")
            .parse()
            .map_err(|e: flotilla_store::UnknownConflictPolicy| {
                invalid("conflict-policy", e.to_string())
            })?;
        if let Some(size) = self.page_size {
            if !(512..=65536).contains(&size) || !size.is_power_of_two() {
                return Err(invalid(
                    "page-size",
                    format!("{size}: a power of two from 512 to 65536"),
                ));
            }
            if log_kind != LogKind::Logical {
                return Err(invalid(
                    "page-size",
                    "only a logical follower has its own page size (a physical one copies the leader's pages)",
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for p in &self.pipeline {
            p.check().map_err(|e| invalid("pipeline", e.0))?;
            if !names.insert(p.name.clone()) {
                return Err(invalid(
                    "pipeline",
                    format!("two pipelines are named {}", p.name),
                ));
            }
        }
        if !self.pipeline.is_empty() && follow.is_some() {
            return Err(invalid(
                "pipeline",
                "pipelines run on the leader: declare them in the leader's config (a physical \
                 follower carries the leader's pipelines and runs none)",
            ));
        }
        let pipeline_allow = match &self.pipeline_targets.allow {
            None => crate::pipeline::allow::Allowed::defaults(&data_dir),
            Some(list) => list
                .iter()
                .map(|e| crate::pipeline::allow::Allowed::parse(e))
                .collect::<Result<_, _>>()
                .map_err(|e| invalid("pipeline-targets.allow", e.0))?,
        };
        let max_body_kib = self.api.max_body_kib.unwrap_or(16 * 1024);
        if !(1..=(1 << 20)).contains(&max_body_kib) {
            return Err(invalid(
                "api.max-body-kib",
                "must be between 1 and 1048576 (1 GiB)",
            ));
        }
        let readers = self.api.readers.unwrap_or(4);
        if !(1..=64).contains(&readers) {
            return Err(invalid("api.readers", "must be between 1 and 64"));
        }
        let max_txn_mib = self
            .limits
            .max_transaction_mib
            .unwrap_or(flotilla_store::DEFAULT_MAX_TRANSACTION_BYTES >> 20);
        let max_txn_limit = flotilla_store::MAX_TRANSACTION_BYTES_LIMIT >> 20;
        if !(1..=max_txn_limit).contains(&max_txn_mib) {
            return Err(invalid(
                "limits.max-transaction-mib",
                format!("must be between 1 and {max_txn_limit} (a log record is at most 1 GiB)"),
            ));
        }
        let max_result_mib = self.limits.max_result_mib.unwrap_or(64);
        if !(1..=1024).contains(&max_result_mib) {
            return Err(invalid(
                "limits.max-result-mib",
                "must be between 1 and 1024",
            ));
        }
        let ready_max_lag_ms = self.api.ready_max_lag_ms.unwrap_or(10_000);
        if !(1..=86_400_000).contains(&ready_max_lag_ms) {
            return Err(invalid(
                "api.ready-max-lag-ms",
                "must be between 1 and 86400000 (one day)",
            ));
        }
        let durability = self
            .durability
            .validate(self.cluster.is_some() || self.join.is_some())?;
        if let (Some(members), Some(_)) = (&self.cluster, self.durability.semi_sync_replicas) {
            if durability.semi_sync_replicas + 1 > members.len() {
                return Err(invalid(
                    "durability.semi-sync-replicas",
                    format!(
                        "{} other members can never hold a write in a cluster of {}: at most {}",
                        durability.semi_sync_replicas,
                        members.len(),
                        members.len().saturating_sub(1)
                    ),
                ));
            }
        }
        let write_timeout_ms = self.limits.write_timeout_ms.unwrap_or(10_000);
        let query_timeout_ms = self.limits.query_timeout_ms.unwrap_or(30_000);
        let snapshot_stall_timeout_ms = self.limits.snapshot_stall_timeout_ms.unwrap_or(60_000);
        for (key, v) in [
            ("limits.write-timeout-ms", write_timeout_ms),
            ("limits.query-timeout-ms", query_timeout_ms),
            (
                "limits.snapshot-stall-timeout-ms",
                snapshot_stall_timeout_ms,
            ),
        ] {
            if !(10..=3_600_000).contains(&v) {
                return Err(invalid(key, "must be between 10 and 3600000 (one hour)"));
            }
        }
        // A data centre is a single leader or a cluster of voters (every member given the same
        // --dc): its followers follow whichever member leads it.
        if multi_leader.is_some() && follow.is_some() {
            return Err(invalid(
                "dc",
                "a data centre's node (--dc) leads it, alone or as a member of its cluster \
                 (--cluster, --join): it cannot also follow another node (--follow); the data \
                 centre's followers follow it without --dc",
            ));
        }
        Ok(NodeConfig {
            multi_leader,
            id,
            data_dir,
            listen,
            follow,
            advertise_url,
            cluster,
            join,
            election_timeout_ms,
            auth,
            replication_token: self.replication_token,
            cluster_secret: self.cluster_secret,
            tls_cert_key,
            tls_ca: self.tls.ca,
            synchronous,
            log_fsync,
            segment_bytes: segment_mib << 20,
            retention_max_bytes: self.log.retention_max_mib.unwrap_or(1024) << 20,
            retention_max_age_ms: self.log.retention_max_age_hours.unwrap_or(24) * 3_600_000,
            max_body_bytes: (max_body_kib << 10) as usize,
            readers,
            max_transaction_bytes: max_txn_mib << 20,
            write_timeout_ms,
            query_timeout_ms,
            snapshot_stall_timeout_ms,
            max_result_bytes: max_result_mib << 20,
            forward_writes: self.api.forward_writes.unwrap_or(false),
            ready_max_lag_ms,
            durability,
            log_kind,
            filter,
            conflict_policy,
            page_size: self.page_size,
            pipelines: self.pipeline,
            pipeline_allow,
        })
    }
}

/// A cluster member's URL: `http(s)://host:port` and nothing more (no credentials, path or
/// query: members dial each other's endpoints under it, and it is shown in status).
pub(crate) fn member_url(key: &'static str, url: &str) -> Result<String, ConfigError> {
    let url = validate_url(key, url)?;
    let parsed = reqwest::Url::parse(&url).map_err(|e| invalid(key, format!("{url:?}: {e}")))?;
    if !parsed.username().is_empty()
        || parsed.password().is_some()
        || parsed.path() != "/"
        || parsed.query().is_some()
        || parsed.fragment().is_some()
        || parsed.port_or_known_default().is_none()
    {
        return Err(invalid(
            key,
            format!("{url:?}: a member's URL is http(s)://HOST:PORT, without credentials, path or query"),
        ));
    }
    Ok(url)
}

pub(crate) fn validate_url(key: &'static str, url: &str) -> Result<String, ConfigError> {
    // `host:port` means http://host:port, as everywhere a node is named.
    let full;
    let url = if url.contains("://") {
        url
    } else {
        full = format!("http://{url}");
        &full
    };
    let trimmed = url.trim_end_matches('/');
    let ok = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(' '));
    if ok {
        // Also what a URL parser refuses: a port beyond 65535, a malformed host.
        reqwest::Url::parse(trimmed).map_err(|e| invalid(key, format!("{url:?}: {e}")))?;
        Ok(trimmed.to_string())
    } else {
        Err(invalid(
            key,
            format!("{url:?} is not an http:// or https:// URL such as http://127.0.0.1:4790"),
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

    /// The example's (commented) pipeline section, uncommented, is a valid leader config.
    #[test]
    fn the_example_pipeline_section_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text.find("# [[pipeline]]").expect("a pipeline example");
        let section: String = text[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let cfg: ConfigFile =
            toml::from_str(&format!("id = \"l\"\ndata = \"d\"\n{section}")).unwrap();
        let cfg = cfg.validate().unwrap();
        let p = &cfg.pipelines[0];
        assert_eq!(p.name, "orders-to-pg");
        assert_eq!(p.renames[0].to, "amount");
        assert_eq!(p.backlog_warn_rows, Some(100_000));
        assert!(p.apply_sql.is_some());
        let bad = ConfigFile {
            follow: Some("http://127.0.0.1:1".into()),
            ..toml::from_str(&format!("id = \"f\"\ndata = \"d\"\n{section}")).unwrap()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("pipelines run on the leader"));
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
        let short = ConfigFile {
            id: Some("a".into()),
            data: Some("d".into()),
            follow: Some("127.0.0.1:4790".into()),
            ..Default::default()
        };
        assert_eq!(
            short.validate().unwrap().follow.as_deref(),
            Some("http://127.0.0.1:4790")
        );
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
    fn durability_settings_are_checked() {
        let load = |section: &str| {
            toml::from_str::<ConfigFile>(&format!(
                "id = \"a\"\ndata = \"d\"\n[durability]\n{section}"
            ))
            .unwrap()
            .validate()
        };
        let d =
            load("default = \"semi-sync\"\nsemi-sync-replicas = 2\ntoo-few-replicas = \"error\"")
                .unwrap()
                .durability;
        assert_eq!(d.default, flotilla_types::Durability::SemiSync);
        assert_eq!(
            (d.semi_sync_replicas, d.too_few_replicas, d.timeout_ms),
            (2, TooFewReplicas::Error, 10_000)
        );
        for (section, named) in [
            ("default = \"sync\"", "unknown durability \"sync\""),
            (
                "default = \"quorum\"",
                "needs a cluster of voters (--cluster)",
            ),
            ("semi-sync-replicas = 0", "durability.semi-sync-replicas"),
            (
                "too-few-replicas = \"degrade\"",
                "\"degrade\": expected \"wait\" or \"error\"",
            ),
            ("timeout-ms = 1", "durability.timeout-ms"),
        ] {
            let err = load(section).unwrap_err().to_string();
            assert!(err.contains(named), "{section}: {err}");
        }
    }

    #[test]
    fn cluster_members_are_checked() {
        let load = |extra: &str| {
            toml::from_str::<ConfigFile>(&format!(
                "id = \"n1\"\ndata = \"d\"\nlisten = \"127.0.0.1:1\"\n{extra}"
            ))
            .unwrap()
            .validate()
        };
        let ok = load("cluster = [\"n1=127.0.0.1:1\", \"n2=http://127.0.0.1:2\"]").unwrap();
        let members = ok.cluster.unwrap();
        assert_eq!(members[0].1, "http://127.0.0.1:1");
        assert_eq!(members[1].0.as_str(), "n2");
        assert_eq!(ok.durability.default, flotilla_types::Durability::Async);
        for (extra, named) in [
            ("cluster = [\"n2=127.0.0.1:2\"]", "not among the members"),
            ("cluster = [\"n1\"]", "expected NAME=URL"),
            (
                "cluster = [\"n1=127.0.0.1:1\", \"n1=127.0.0.1:2\"]",
                "named twice",
            ),
            (
                "cluster = [\"n1=127.0.0.1:1\"]\nfollow = \"127.0.0.1:9\"",
                "not both",
            ),
            (
                "cluster = [\"n1=127.0.0.1:1\"]\nauth = true",
                "need a secret they share",
            ),
            (
                "cluster = [\"n1=127.0.0.1:1\"]\ncluster-secret = \"short\"",
                "at least 32 characters",
            ),
            ("join = \"127.0.0.1:99999\"", "join"),
            (
                "cluster = [\"n1=127.0.0.1:2\"]",
                "listed at http://127.0.0.1:2, but listens on 127.0.0.1:1",
            ),
            (
                "cluster = [\"n1=127.0.0.1:1\", \"n2=http://u:p@127.0.0.1:2/x\"]",
                "without credentials, path or query",
            ),
            (
                "cluster = [\"n1=127.0.0.1:1\"]\njoin = \"127.0.0.1:2\"",
                "cannot go with --cluster",
            ),
            (
                "join = \"127.0.0.1:1\"\nfollow = \"127.0.0.1:2\"",
                "cannot go with --follow",
            ),
            (
                "cluster = [\"n1=127.0.0.1:1\"]\nlog = \"logical\"",
                "physical copy",
            ),
        ] {
            let err = load(extra).unwrap_err().to_string();
            assert!(err.contains(named), "{extra}: {err}");
        }
        let secret = "cluster = [\"n1=127.0.0.1:1\"]\nauth = true\n\
                      cluster-secret = \"0123456789abcdef0123456789abcdef\"";
        assert!(load(secret).unwrap().auth);
        let joining = load("join = \"127.0.0.1:4791\"\nelection-timeout-ms = 300").unwrap();
        assert_eq!(joining.join.as_deref(), Some("http://127.0.0.1:4791"));
        // A cluster may make quorum its default; a single leader may not.
        let q = load("cluster = [\"n1=127.0.0.1:1\"]\n[durability]\ndefault = \"quorum\"").unwrap();
        assert_eq!(q.durability.default, flotilla_types::Durability::Quorum);
    }

    #[test]
    fn log_kind_and_filter_in_either_form() {
        let short: ConfigFile = toml::from_str(
            "id = \"f\"\ndata = \"d\"\nfollow = \"http://127.0.0.1:1\"\nlog = \"logical\"\n\
             conflict-policy = \"overwrite\"\n[filter]\ntables = [\"t\"]\nwhere = { t = \"n > 1\" }\n",
        )
        .unwrap();
        let cfg = short.validate().unwrap();
        assert_eq!(cfg.log_kind, LogKind::Logical);
        assert_eq!(cfg.filter.predicates["t"], "n > 1");
        assert_eq!(cfg.conflict_policy, ConflictPolicy::Overwrite);
        let long: ConfigFile = toml::from_str(
            "id = \"f\"\ndata = \"d\"\nfollow = \"http://127.0.0.1:1\"\n[log]\nkind = \"logical\"\n",
        )
        .unwrap();
        assert_eq!(long.validate().unwrap().log_kind, LogKind::Logical);
        let err = toml::from_str::<ConfigFile>("[log]\nkinds = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `kinds`"), "{err}");
        let leader: ConfigFile =
            toml::from_str("id = \"f\"\ndata = \"d\"\nlog = \"logical\"\n").unwrap();
        assert!(leader
            .validate()
            .unwrap_err()
            .to_string()
            .contains("for a follower"));
        let physical: ConfigFile = toml::from_str(
            "id = \"f\"\ndata = \"d\"\nfollow = \"http://127.0.0.1:1\"\n[filter]\ntables = [\"t\"]\n",
        )
        .unwrap();
        assert!(physical
            .validate()
            .unwrap_err()
            .to_string()
            .contains("needs a logical follower"));
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
