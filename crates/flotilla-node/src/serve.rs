//! Starting a node: opens its data directory, wires the role's tasks, the HTTP server and the
//! fatal-error channel, and runs until a signal or a fatal error. The one module that knows
//! every other: [`crate::node`] is only the state the tasks share.

use crate::config::NodeConfig;
use crate::follower::FollowerShared;
use crate::identity;
use crate::leader::{self, Head, LeaderState, RecentRecords, WriteJob};
use crate::metrics::Counters;
use crate::node::{Node, Role};
use crate::readers::ReaderPool;
use anyhow::Context;
use flotilla_core::FollowerTracker;
use flotilla_log::{Log, LogConfig};
use flotilla_store::{DbSettings, LeaderDb};
use flotilla_types::Position;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// The data directory holds the database, its log and secrets (pipeline targets' passwords, the
/// first admin token): a new one is made readable by its owner only, and an existing one that
/// others may read is named in a warning.
fn private_data_dir(dir: &std::path::Path, new: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if new {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
        return Ok(());
    }
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            "the data directory {} can be read by other users (mode {:o}): it holds the data and \
             secrets; `chmod 700` it",
            dir.display(),
            mode & 0o777
        );
    }
    Ok(())
}

fn random_cluster_id() -> String {
    flotilla_types::ClusterId::from_random(rand::random()).to_string()
}

/// Runs a node until Ctrl-C / SIGTERM or a fatal error. `ready` receives the bound URL. Needs a
/// multi-threaded tokio runtime (it refuses to start on another).
pub async fn run(
    config: NodeConfig,
    ready: Option<tokio::sync::oneshot::Sender<String>>,
) -> anyhow::Result<()> {
    if tokio::runtime::Handle::current().runtime_flavor()
        != tokio::runtime::RuntimeFlavor::MultiThread
    {
        // Queries run in place on the runtime's workers (`block_in_place`).
        anyhow::bail!("a node needs a multi-threaded tokio runtime");
    }
    let dir = config.data_dir.clone();
    let new_dir = !dir.exists();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    private_data_dir(&dir, new_dir)?;
    // A restore interrupted by a crash left its upload and half-built database: never used.
    let _ = std::fs::remove_dir_all(dir.join("restore"));
    if config.follow.is_none() {
        // Where file pipelines may write by default (`[pipeline-targets] allow`).
        let exports = dir.join("exports");
        std::fs::create_dir_all(&exports)
            .with_context(|| format!("cannot create {}", exports.display()))?;
    }
    // Held until the node stops: a second process on this directory refuses to start.
    let _lock = crate::data_lock::DataDirLock::acquire(
        &dir,
        &format!("node {}, listening on {}", config.id, config.listen),
    )?;
    let mut ident = identity::load_or_create(&dir, config.id.as_str())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let bound = listener.local_addr()?;
    let tls = match &config.tls_cert_key {
        Some((cert, key)) => Some(crate::tls::server_config(cert, key)?),
        None => None,
    };
    // A cluster member presents the members' shared secret to the others; a follower its
    // replication token to its leader.
    let peer_token = config
        .cluster_secret
        .clone()
        .or_else(|| config.replication_token.clone());
    let peers = Arc::new(crate::peer::Peers::new(
        config.tls_ca.as_deref(),
        peer_token,
    )?);
    let scheme = if tls.is_some() { "https" } else { "http" };
    if bound.ip().is_unspecified() && config.advertise_url.is_none() {
        tracing::warn!(
            "listening on {bound} (every address) without --advertise-url: this node will call \
             itself {scheme}://{bound}, which other machines cannot reach; set --advertise-url"
        );
    }
    let url = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{bound}"));
    let db_path = dir.join("db.sqlite");
    let settings = DbSettings {
        synchronous: config.synchronous,
        max_transaction_bytes: config.max_transaction_bytes,
    };
    let counters = Arc::new(Counters::default());
    let shutdown = CancellationToken::new();
    let (fatal_tx, mut fatal_rx) = crate::fatal::channel();

    let mut writer_thread = None;
    // The open collaborative documents (the writer tells them of merges into theirs).
    let collab: Arc<crate::collab::DocHub> = Default::default();
    // A cluster member: its consensus state, and its database as a replica until it leads.
    // A data directory that is a cluster member stays one, whatever the flags of this start:
    // started as a single leader it would take writes of its own beside the cluster's.
    let remembered = if config.cluster.is_none() && config.join.is_none() {
        crate::cluster::state::ClusterFile::load(&dir)?
    } else {
        None
    };
    if let Some(f) = &remembered {
        let mine = f.members.get(&f.member_id).map(|m| m.name.as_str());
        if mine != Some(config.id.as_str()) {
            anyhow::bail!(
                "this data directory is member {} ({}) of its cluster, not {}",
                f.member_id,
                mine.unwrap_or("?"),
                config.id
            );
        }
        if config.follow.is_some() {
            anyhow::bail!(
                "this data directory is a member of cluster {}: it cannot follow another node \
                 (start it without --follow, or give --follow an empty data directory)",
                f.cluster_id
            );
        }
        tracing::info!(
            cluster_id = %f.cluster_id,
            "this data directory is a cluster member: it runs as one"
        );
    }
    let dc = config.multi_leader.as_ref().map(|m| m.dc.to_string());
    let cluster_file = match (&config.cluster, &config.join) {
        (None, None) => remembered,
        (members, via) => {
            let file = match (members, via) {
                (Some(members), _) => crate::cluster::setup::cluster_file(
                    &dir,
                    members,
                    &config.id,
                    config.auth,
                    dc.as_deref(),
                )?,
                (None, Some(via)) => {
                    crate::cluster::setup::joined(
                        &dir,
                        via,
                        &config.id,
                        &url,
                        &peers,
                        config.auth,
                        dc.as_deref(),
                    )
                    .await?
                }
                (None, None) => unreachable!("matched above"),
            };
            match &ident.cluster_id {
                Some(c) if *c != file.cluster_id => anyhow::bail!(
                    "this data directory belongs to cluster {c}, not to the cluster of the \
                     members given ({})",
                    file.cluster_id
                ),
                _ => {}
            }
            ident.cluster_id = Some(file.cluster_id.clone());
            identity::save(&dir, &ident)?;
            Some(file)
        }
    };
    // A data centre's members all name it: one that led with another (or none) would not
    // stamp its writes for the other data centres.
    if let Some(f) = &cluster_file {
        match (&f.dc, &dc) {
            (Some(theirs), Some(mine)) if theirs != mine => anyhow::bail!(
                "this data directory is a member of data centre {theirs}'s cluster: start it \
                 with --dc {theirs}, not {mine}"
            ),
            (Some(theirs), None) => anyhow::bail!(
                "this data directory is a member of data centre {theirs}'s cluster \
                 (multi-leader): start it with --dc {theirs} and its --peer-dc peers"
            ),
            (None, Some(mine)) => anyhow::bail!(
                "this data directory is a member of a cluster that leads no data centre: \
                 --dc {mine} needs a new cluster (every member started with it)"
            ),
            _ => {}
        }
    }
    match &cluster_file {
        // A cluster whose members required tokens keeps requiring them: a member started
        // without --auth would serve the cluster's data (and mint tokens) to anyone.
        Some(f) if f.auth && !config.auth => anyhow::bail!(
            "cluster {} requires API tokens (its members run with --auth): start this member \
             with --auth too",
            f.cluster_id
        ),
        Some(_) if config.auth && config.cluster_secret.is_none() => anyhow::bail!(
            "authentication is on: a cluster's members need the secret they share \
             (--cluster-secret or FLOTILLA_CLUSTER_SECRET; see docs/failover.md)"
        ),
        None if config.cluster_secret.is_some() => anyhow::bail!(
            "--cluster-secret: only a cluster's members share a secret, and this node is none \
             (give --cluster or --join)"
        ),
        _ => {}
    }
    let (role, position) = match &config.follow {
        _ if cluster_file.is_some() => {
            let db = flotilla_store::Replica::open(
                &db_path,
                &crate::follower::replica_settings(&config, counters.apply_conflicts.clone()),
            )?;
            let position = db.as_ref().map(|d| d.meta().position).unwrap_or_default();
            (
                Role::Follower {
                    leader_url: String::new(),
                    state: Arc::new(FollowerShared::new(db)),
                },
                position,
            )
        }
        None => {
            // A new data centre joins its peers' deployment, from a copy of one's database; a
            // single leader takes the deployment's id as its cluster id (the first data centre
            // makes one).
            let adopted = match &config.multi_leader {
                Some(ml) if !db_path.exists() => {
                    crate::exchange::copy_from_peer(&peers, ml, &db_path).await?
                }
                _ => None,
            };
            let joined_peers = adopted.is_some();
            let new_cluster_id = move || adopted.unwrap_or_else(random_cluster_id);
            // The database knows its own position; an empty log continues from there.
            let (mut db, created) = LeaderDb::open(&db_path, &settings, new_cluster_id)
                .with_context(|| format!("cannot open the database {}", db_path.display()))?;
            let meta = db.meta().clone();
            let log_dir = dir.join("log");
            let log_config = LogConfig {
                segment_bytes: config.segment_bytes,
                fsync: config.log_fsync,
            };
            let log = Arc::new(Log::open(&log_dir, log_config, meta.position.lsn.0)?);
            let recovery = flotilla_store::recover_leader(&mut db, &log, &config.id)?;
            if recovery.completed_from_log > 0 {
                // A power loss with synchronous=NORMAL took the database's newest commits; the
                // log, flushed before every answer, had them.
                tracing::warn!(
                    "the database had lost {} commits: completed from the replication log",
                    recovery.completed_from_log
                );
            }
            for p in &recovery.recaptured {
                tracing::warn!(position = %p, "recovered a commit missing from the log");
            }
            if let Some(why) = &recovery.log_restarted {
                // Followers behind this point bootstrap from a snapshot.
                tracing::warn!(
                    "{why}; restarted the replication log after lsn {}",
                    db.meta().position.lsn
                );
            }
            // A data centre's database runs as that data centre only: without --dc its writes
            // would never be stamped, and so never reach the other data centres.
            match (db.data_centre()?, &config.multi_leader) {
                (Some(dc), None) => anyhow::bail!(
                    "this database is data centre {dc}'s (multi-leader): start it with --dc {dc} \
                     and its --peer-dc peers; without them its writes would not reach the other \
                     data centres"
                ),
                (Some(dc), Some(ml)) if dc != ml.dc.as_str() => anyhow::bail!(
                    "this database is data centre {dc}'s, not {}'s: start it with --dc {dc}, or \
                     give --dc {} an empty data directory",
                    ml.dc,
                    ml.dc
                ),
                (None, Some(ml)) if db.meta().position.lsn.0 > 0 => anyhow::bail!(
                    "this database was not a data centre's: --dc {} needs an empty data \
                     directory (a database that already holds transactions cannot become a \
                     data centre: the others would never get what it holds)",
                    ml.dc
                ),
                _ => {}
            }
            let meta = db.meta().clone();
            match &ident.cluster_id {
                Some(c) if *c != meta.cluster_id => anyhow::bail!(
                    "the database belongs to cluster {} but this node to cluster {c}",
                    meta.cluster_id
                ),
                _ => {}
            }
            ident.cluster_id = Some(meta.cluster_id.clone());
            ident.epoch = ident.epoch.max(meta.position.epoch.0);
            if ident.incarnation.is_none() {
                if let Some(followed) = &ident.leader_incarnation {
                    tracing::warn!(
                        "this data directory followed leader incarnation {followed}; it now \
                         leads as a new incarnation: followers of the old leader will not \
                         follow it unless they start from empty data directories"
                    );
                }
                ident.incarnation = Some(format!("{:032x}", rand::random::<u128>()));
            }
            identity::save(&dir, &ident)?;
            let incarnation = ident.incarnation.clone().expect("set above");
            if created && joined_peers {
                tracing::info!(cluster_id = %meta.cluster_id, "created this data centre's database in its peers' cluster");
            } else if created {
                tracing::info!(cluster_id = %meta.cluster_id, "created a new cluster");
            }
            let head = Head {
                position: meta.position,
                chain: meta.chain,
                commit_time_us: meta.commit_time_us,
            };
            let (head_tx, _) = watch::channel(head);
            let (jobs_tx, jobs_rx) = mpsc::channel::<WriteJob>(4096);
            let writer_interrupt = Arc::new(Mutex::new(db.interrupt_handle()));
            let recent = Arc::new(RecentRecords::default());
            let followers_file = dir.join("followers.json");
            let state = LeaderState {
                writer: jobs_tx,
                log: log.clone(),
                head: head_tx.clone(),
                recent: recent.clone(),
                tracker: Mutex::new(FollowerTracker::new(leader::load_followers(
                    &followers_file,
                ))),
                cluster_id: meta.cluster_id.clone(),
                incarnation,
                epoch: meta.position.epoch,
                followers_file,
                followers_saving: Mutex::new(()),
                feed_pins: Default::default(),
                trims: Default::default(),
                writer_interrupt: writer_interrupt.clone(),
                replicated: Default::default(),
                gate: Default::default(),
            };
            writer_thread = Some(leader::spawn_writer(
                leader::WriterParts {
                    db,
                    log,
                    head: head_tx,
                    recent,
                    epoch: meta.position.epoch,
                    origin: config.id.clone(),
                    counters: counters.clone(),
                    fatal: fatal_tx.clone(),
                    trims: state.trims.clone(),
                    settings: settings.clone(),
                    interrupt: writer_interrupt,
                    cluster: None,
                    gate: state.gate.clone(),
                    collab: collab.clone(),
                    // A single leader's deployment is its cluster (taken from its peers).
                    multi_leader: config
                        .multi_leader
                        .as_ref()
                        .map(|m| leader::DataCentreParts {
                            dc: m.dc.clone(),
                            deployment: meta.cluster_id.clone(),
                            max_clock_drift_ms: m.max_clock_drift_ms,
                        }),
                },
                jobs_rx,
            ));
            (
                Role::Leader {
                    state: Arc::new(state),
                    pipelines: Default::default(),
                },
                meta.position,
            )
        }
        Some(leader_url) => {
            let db = flotilla_store::Replica::open(
                &db_path,
                &crate::follower::replica_settings(&config, counters.apply_conflicts.clone()),
            )?;
            let position = db.as_ref().map(|d| d.meta().position).unwrap_or_default();
            if let (Some(d), Some(c)) = (&db, &ident.cluster_id) {
                if d.meta().cluster_id != *c {
                    anyhow::bail!(
                        "the database belongs to cluster {} but this node to cluster {c}",
                        d.meta().cluster_id
                    );
                }
            }
            let shared = Arc::new(FollowerShared::new(db));
            (
                Role::Follower {
                    leader_url: leader_url.clone(),
                    state: shared,
                },
                position,
            )
        }
    };
    let keyring = config
        .auth
        .then(|| Arc::new(crate::auth::Keyring::new(db_path.clone())));
    if !config.auth && !config.listen.ip().is_loopback() {
        tracing::warn!(
            "authentication is off on {}: anyone who reaches this address can read, write and \
             administer the node",
            config.listen
        );
    }
    let have_db =
        db_path.exists() && (matches!(role, Role::Leader { .. }) || position != Position::ZERO);
    // A value as large as a transaction may write can be read back.
    let max_value = config.max_result_bytes.max(config.max_transaction_bytes) as usize;
    let readers = ReaderPool::new(db_path.clone(), config.readers, have_db, max_value);
    let (position_tx, _) = watch::channel(position);
    let mut cluster_parts = None;
    let cluster = match cluster_file {
        Some(file) => {
            let log = Arc::new(Log::open(
                &dir.join("log"),
                LogConfig {
                    segment_bytes: config.segment_bytes,
                    fsync: config.log_fsync,
                },
                file.base_lsn,
            )?);
            let (events_tx, events_rx) = mpsc::unbounded_channel();
            let mut consensus = flotilla_core::consensus::ConsensusConfig::new(file.member_id);
            consensus.semi_sync_replicas = config.durability.semi_sync_replicas;
            consensus.election_ticks = crate::cluster::driver::TICKS_PER_ELECTION;
            consensus.election_ticks_max = 2 * crate::cluster::driver::TICKS_PER_ELECTION;
            consensus.heartbeat_ticks = 2;
            let handle = crate::cluster::driver::start(crate::cluster::driver::DriverParts {
                dir: dir.clone(),
                file,
                log: log.clone(),
                credentials: crate::follower::Credentials {
                    tls: peers.tls.clone(),
                    token: peers.token.clone(),
                },
                config: consensus,
                election_timeout_ms: config.election_timeout_ms,
                shutdown: shutdown.clone(),
                fatal: fatal_tx.clone(),
                events: Some(events_tx),
                db_lsn: position.lsn.0,
            })?;
            cluster_parts = Some((log, events_rx));
            Some(handle)
        }
        None => None,
    };
    let node = Arc::new(Node {
        config: config.clone(),
        role: arc_swap::ArcSwap::from_pointee(role),
        url: url.clone(),
        db_path,
        identity: Arc::new(crate::identity::IdentityStore::new(&dir, ident)),
        readers,
        position: Arc::new(position_tx),
        counters,
        shutdown: shutdown.clone(),
        keyring,
        peers: peers.clone(),
        cluster,
        exchange: Arc::new(crate::exchange::Exchange {
            links: config
                .multi_leader
                .iter()
                .flat_map(|m| m.peers.iter())
                .map(|(name, url)| Arc::new(crate::exchange::Link::new(name.clone(), url.clone())))
                .collect(),
        }),
        device_activity: Default::default(),
        collab,
    });
    crate::auth::first_admin_token(&node).await?;
    if let Some(leader) = node.leader() {
        // Committed positions become visible to readers as the head moves.
        let mut head_rx = leader.head.subscribe();
        let n = node.clone();
        tokio::spawn(async move {
            while head_rx.changed().await.is_ok() {
                let p = head_rx.borrow_and_update().position;
                n.position.send_replace(p);
            }
        });
        tokio::spawn(crate::leader::retention_loop(
            leader.clone(),
            flotilla_core::retention::RetentionPolicy {
                max_bytes: config.retention_max_bytes,
                max_age_ms: config.retention_max_age_ms,
            },
            shutdown.clone(),
        ));
        if let Some(ml) = &config.multi_leader {
            for link in &node.exchange.links {
                tokio::spawn(crate::exchange::drive(
                    node.clone(),
                    link.clone(),
                    ml.dc.clone(),
                    ml.topology.forwards(),
                    shutdown.clone(),
                ));
            }
        }
        if let Some(pipelines) = node.pipelines() {
            tokio::spawn(crate::pipeline::manage(crate::pipeline::PipelineHost {
                leader: leader.clone(),
                pipelines: pipelines.clone(),
                readers: node.readers.clone(),
                counters: node.counters.clone(),
                declared: Arc::new(config.pipelines.clone()),
                allow: Arc::new(config.pipeline_allow.clone()),
                http: node.peers.http.clone(),
                shutdown: shutdown.clone(),
            }));
        }
    }
    let follower_host = || {
        Arc::new(crate::follower::FollowerHost {
            id: config.id.as_str().to_string(),
            url: node.url.clone(),
            db_path: node.db_path.clone(),
            replica: crate::follower::replica_settings(
                &config,
                node.counters.apply_conflicts.clone(),
            ),
            identity: node.identity.clone(),
            readers: node.readers.clone(),
            position: node.position.clone(),
            counters: node.counters.clone(),
            peers: node.peers.clone(),
            keyring: node.keyring.clone(),
            shutdown: node.shutdown.clone(),
        })
    };
    if let (Some(handle), Some((log, events))) = (&node.cluster, cluster_parts) {
        let Role::Follower { state, .. } = &*node.role() else {
            unreachable!("a cluster member starts as a follower")
        };
        tokio::spawn(crate::cluster::member::run(
            crate::cluster::member::MemberHost {
                node: node.clone(),
                follower: follower_host(),
                shared: state.clone(),
                handle: handle.clone(),
                log,
                settings: settings.clone(),
                fatal: fatal_tx.clone(),
                dir: dir.clone(),
            },
            events,
        ));
    }
    let follower_task = match &*node.role() {
        _ if node.cluster.is_some() => None,
        Role::Follower { leader_url, state } => Some(tokio::spawn(crate::follower::drive(
            follower_host(),
            state.clone(),
            leader_url.clone(),
            fatal_tx.clone(),
        ))),
        Role::Leader { .. } => None,
    };

    let app = crate::api::router(node.clone());
    // Started: from here on the directory belongs to this id.
    node.identity.pin()?;
    std::fs::write(dir.join("http.addr"), &url).ok();
    tracing::info!(id = %config.id, role = %node.role().name(), %url, "node started");
    println!("flotilla: node {} listening on {url}", config.id);
    if let Some(tx) = ready {
        let _ = tx.send(url.clone());
    }
    let server_shutdown = shutdown.clone();
    let server = match tls {
        None => tokio::spawn(async move {
            // Small writes (a keystroke relayed, a replication ack) go out at once, as over
            // TLS (NoDelayAcceptor): Nagle's algorithm would hold them for the peer's ACK.
            use axum::serve::ListenerExt;
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { server_shutdown.cancelled().await })
                .await
        }),
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                server_shutdown.cancelled().await;
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
            });
            let listener = listener.into_std()?;
            let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
            // Without TCP_NODELAY a TLS record split over two segments waits for a delayed
            // ACK: 40 ms per answer.
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
                .acceptor(axum_server::accept::NoDelayAcceptor::new());
            tokio::spawn(async move {
                axum_server::from_tcp(listener)
                    .acceptor(acceptor)
                    .handle(handle)
                    .serve(app.into_make_service())
                    .await
            })
        }
    };
    let result = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        Some(fatal) = fatal_rx.recv() => Err(anyhow::anyhow!(
            "fatal error, the node stopped: {fatal}"
        )),
        _ = shutdown.cancelled() => Ok(()),
    };
    shutdown.cancel();
    // Statements still running end now (their clients hear 503), so that the server's
    // graceful shutdown does not wait for them.
    node.readers.interrupt_all();
    if let Some(l) = node.leader() {
        l.writer_interrupt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .interrupt();
    }
    if let Some(t) = follower_task {
        t.abort();
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
    // The writer thread is not joined: a group in flight either reaches the log or is
    // recaptured from the WAL at the next start (see LeaderDb::open).
    drop(writer_thread);
    result
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
