use clap::Args;
use flotilla_node::config::ConfigFile;
use std::path::PathBuf;

#[derive(Args)]
#[command(after_help = "Examples:
  flotilla serve --id leader --data ./data/leader --listen 127.0.0.1:4790
  flotilla serve --id f1 --data ./data/f1 --listen 127.0.0.1:4791 --follow http://127.0.0.1:4790
  flotilla serve --id f2 --data ./data/f2 --listen 127.0.0.1:4792 --follow 127.0.0.1:4790 \\
      --log logical --where \"notes: body LIKE 'h%'\"
  flotilla serve --config node.toml          # every setting from a file (see config.example.toml)")]
pub struct ServeArgs {
    /// Read settings from this TOML file (see config.example.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's name (1-64 of A-Z a-z 0-9 - _).
    #[arg(long)]
    id: Option<String>,
    /// Data directory: database, replication log, identity.
    #[arg(long)]
    data: Option<PathBuf>,
    /// HTTP address to listen on [default: 127.0.0.1:4790; port 0 picks a free one].
    #[arg(long)]
    listen: Option<String>,
    /// Follow this leader (http://HOST:PORT); without it the node is a leader.
    #[arg(long)]
    follow: Option<String>,
    /// Be a voter of a cluster that elects its leader: every voter, NAME=HOST:PORT, this node
    /// among them (the same list on each; see docs/failover.md).
    #[arg(long, value_name = "N1=HOST:PORT,N2=…", value_delimiter = ',')]
    cluster: Vec<String>,
    /// Join an existing cluster through any member (HOST:PORT): this node is added as a
    /// learner, copies the data, and can then be made a voter (flotilla cluster add-voter).
    #[arg(long, value_name = "HOST:PORT")]
    join: Option<String>,
    /// Multi-leader: this node leads data centre NAME and takes writes while the other data
    /// centres' leaders do too (see docs/multi-leader.md).
    #[arg(long, value_name = "NAME")]
    dc: Option<String>,
    /// Multi-leader: another data centre's leader to exchange changes with, NAME=HOST:PORT
    /// (repeatable).
    #[arg(long, value_name = "NAME=HOST:PORT")]
    peer_dc: Vec<String>,
    /// Multi-leader: all-to-all (default; each takes from every peer the changes made there),
    /// star or ring (changes are passed on).
    #[arg(long, value_name = "TOPOLOGY")]
    exchange_topology: Option<String>,
    /// Multi-leader: refuse changes stamped further ahead of this node's clock [default: 60000].
    #[arg(long, value_name = "MS")]
    max_clock_drift_ms: Option<u64>,
    /// Cluster member: start an election after this long without a leader (to twice as long,
    /// at random) [default: 1000].
    #[arg(long, value_name = "MS")]
    election_timeout_ms: Option<u64>,
    /// The URL other nodes and clients use for this node [default: http://<listen>].
    #[arg(long)]
    advertise_url: Option<String>,
    /// Require API tokens on every request (on by default when listening on a non-loopback
    /// address; `auth = false` in the config file turns it off there).
    #[arg(long)]
    auth: bool,
    /// A follower's token (role replicate) for its leader.
    #[arg(long, env = "FLOTILLA_REPLICATION_TOKEN", hide_env_values = true)]
    replication_token: Option<String>,
    /// Cluster member with authentication on: the secret all members share and present to
    /// each other (at least 32 characters; `openssl rand -hex 32` makes one).
    #[arg(long, env = "FLOTILLA_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Serve HTTPS with this certificate (PEM; `flotilla cert init` makes one for a test cluster).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,

    /// SQLite synchronous setting: full, normal or off [default: normal. A leader's database
    /// is completed from its flushed log after a power loss; a follower shows an applied batch
    /// at once and flushes it just after, acknowledging it as durable only then].
    #[arg(long)]
    synchronous: Option<String>,
    /// Replication log fsync policy: always (default) or never.
    #[arg(long)]
    log_fsync: Option<String>,
    /// The log a follower consumes: physical (default; a byte copy of the leader) or logical
    /// (row changes: its own page size, indexes and extra tables, and an optional filter).
    #[arg(long)]
    log: Option<String>,
    /// Logical follower: keep only these tables (comma-separated; repeatable).
    #[arg(long, value_name = "T1,T2")]
    tables: Vec<String>,
    /// Logical follower: keep only these columns of a table (must include its primary key).
    #[arg(long, value_name = "TABLE:COL,COL")]
    columns: Vec<String>,
    /// Logical follower: keep only the rows of a table for which an SQL predicate holds.
    #[arg(long = "where", value_name = "TABLE: PREDICATE")]
    predicates: Vec<String>,
    /// Logical follower: on a change that does not fit the data here, stop (default) or
    /// overwrite.
    #[arg(long)]
    conflict_policy: Option<String>,
    /// Logical follower: the page size of its database (a power of two, 512 to 65536).
    #[arg(long)]
    page_size: Option<u32>,
    /// Follower: send writes on to the leader instead of answering 421 not_leader (a request's
    /// own "forward" overrides it).
    #[arg(long)]
    forward_writes: bool,
    /// Leader: the durability of writes that name none: async (default: durable in the
    /// leader's log), semi-sync (also durable on --semi-sync-replicas physical followers; in a
    /// cluster, on a majority and that many other members) or, in a cluster, quorum.
    #[arg(long)]
    durability: Option<String>,
    /// Leader: how many physical followers must hold a semi-sync write durably [default: 1].
    #[arg(long, value_name = "N")]
    semi_sync_replicas: Option<usize>,
}

/// `tls_ca`: the global `--tls-ca`, the CA the nodes this one connects to are verified against.
pub async fn run(a: ServeArgs, tls_ca: Option<PathBuf>) -> anyhow::Result<()> {
    let mut file = match &a.config {
        Some(p) => ConfigFile::load(p)?,
        None => ConfigFile::default(),
    };
    macro_rules! over {
        ($($field:ident),*) => { $( if a.$field.is_some() { file.$field = a.$field.clone(); } )* };
    }
    over!(
        id,
        data,
        listen,
        follow,
        advertise_url,
        synchronous,
        conflict_policy,
        replication_token,
        cluster_secret,
        page_size,
        dc,
        exchange_topology,
        max_clock_drift_ms
    );
    if !a.peer_dc.is_empty() {
        file.peer_dc = Some(a.peer_dc.clone());
    }
    if !a.cluster.is_empty() {
        file.cluster = Some(a.cluster.clone());
    }
    if a.join.is_some() {
        file.join = a.join.clone();
    }
    if a.election_timeout_ms.is_some() {
        file.election_timeout_ms = a.election_timeout_ms;
    }
    if a.auth {
        file.auth = Some(true);
    }
    if a.tls_cert.is_some() {
        file.tls.cert = a.tls_cert.clone();
    }
    if a.tls_key.is_some() {
        file.tls.key = a.tls_key.clone();
    }
    if tls_ca.is_some() {
        file.tls.ca = tls_ca;
    }
    if a.log.is_some() {
        file.log.kind = a.log.clone();
    }
    // Filter flags replace the file's filter as a whole (mixing the two would be confusing).
    if !(a.tables.is_empty() && a.columns.is_empty() && a.predicates.is_empty()) {
        let f = flotilla_store::RowFilter::parse(&a.tables, &a.columns, &a.predicates)?;
        file.filter = flotilla_node::config::FilterSection {
            tables: f.tables.into_iter().collect(),
            columns: f.columns,
            predicates: f.predicates,
        };
    }
    if a.forward_writes {
        file.api.forward_writes = Some(true);
    }
    if a.durability.is_some() {
        file.durability.default = a.durability.clone();
    }
    if a.semi_sync_replicas.is_some() {
        file.durability.semi_sync_replicas = a.semi_sync_replicas;
    }
    if a.log_fsync.is_some() {
        file.log.fsync = a.log_fsync.clone();
    }
    let config = file.validate()?;
    flotilla_node::run(config, None).await
}
