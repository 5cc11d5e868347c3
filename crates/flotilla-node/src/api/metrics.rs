//! `GET /metrics`: Prometheus / OpenMetrics text through `prometheus-client`, built from the
//! node's counters at each scrape. Rates (commits/s, applied transactions/s) are `rate()` over
//! the counters (registered without their `_total` suffix, which the encoder adds).

use crate::metrics::Counters;
use crate::node::Node;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

type Labels = Vec<(String, String)>;
type U64Gauge = Gauge<u64, AtomicU64>;

/// A label value as the exposition format wants it: backslash, double quote and line feed
/// escaped (the encoder writes values as they are; ours are identifiers, but nothing here
/// relies on that).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), label_value(v)))
        .collect()
}

/// One scrape's registry.
struct Scrape(Registry);

impl Scrape {
    fn gauge(&mut self, name: &str, help: &str, v: u64) {
        let g = U64Gauge::default();
        g.set(v);
        self.0.register(name, help, g);
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        let c: Counter<u64> = Counter::default();
        c.inc_by(v);
        self.0.register(name, help, c);
    }

    fn gauges(&mut self, name: &str, help: &str, samples: Vec<(Labels, u64)>) {
        let family = Family::<Labels, U64Gauge>::default();
        for (l, v) in samples {
            family.get_or_create(&l).set(v);
        }
        self.0.register(name, help, family);
    }

    fn counters(&mut self, name: &str, help: &str, samples: Vec<(Labels, u64)>) {
        let family = Family::<Labels, Counter<u64>>::default();
        for (l, v) in samples {
            family.get_or_create(&l).inc_by(v);
        }
        self.0.register(name, help, family);
    }
}

pub async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let mut m = Scrape(Registry::default());
    let c = &node.counters;
    let pos = *node.position.borrow();
    let role = node.role().name();
    m.gauges(
        "flotilla_info",
        "Node identity",
        vec![(
            labels(&[("id", node.config.id.as_str()), ("role", role)]),
            1,
        )],
    );
    m.gauge(
        "flotilla_position_epoch",
        "Epoch of the newest visible transaction",
        pos.epoch.0,
    );
    m.gauge(
        "flotilla_position_lsn",
        "LSN of the newest visible transaction",
        pos.lsn.0,
    );
    if let Some(cluster) = &node.cluster {
        let st = cluster.status.borrow().clone();
        m.gauges(
            "flotilla_cluster_role",
            "This member's role in the consensus (1 for the role it has)",
            vec![(labels(&[("role", st.role.as_str())]), 1)],
        );
        m.gauge(
            "flotilla_cluster_epoch",
            "The consensus's epoch (term)",
            st.epoch.0,
        );
        m.gauge(
            "flotilla_cluster_commit_lsn",
            "The newest LSN a majority holds, as far as this member knows",
            st.commit.0,
        );
        m.gauge(
            "flotilla_cluster_applied_lsn",
            "The newest LSN this member applied",
            st.applied.0,
        );
        m.gauge(
            "flotilla_cluster_has_leader",
            "1 while this member knows a leader",
            u64::from(st.leader.is_some()),
        );
        m.gauge(
            "flotilla_cluster_lag_ms",
            "For how long this member may have been behind (what max_lag_ms compares with)",
            super::health::lag_ms(&node),
        );
        if !st.progress.is_empty() {
            let file = cluster.file();
            let matched = st
                .progress
                .iter()
                .map(|p| {
                    let name = file
                        .members
                        .get(&p.id)
                        .map_or(p.id.to_string(), |m| m.name.clone());
                    (labels(&[("member", &name)]), p.matched.0)
                })
                .collect();
            m.gauges(
                "flotilla_cluster_member_matched_lsn",
                "On the leader: how far each other member holds the log",
                matched,
            );
        }
        m.counter(
            "flotilla_cluster_refused_messages",
            "Consensus messages refused (another cluster, garbage)",
            st.refused,
        );
    }
    m.counter(
        "flotilla_execute_requests",
        "POST /v1/execute requests",
        Counters::get(&c.execute_requests),
    );
    m.counter(
        "flotilla_query_requests",
        "POST /v1/query requests",
        Counters::get(&c.query_requests),
    );
    if let (Some(leader), Some(pipelines)) = (node.leader(), node.pipelines()) {
        let (mut backlog, mut delivered, mut warning) = (Vec::new(), Vec::new(), Vec::new());
        for w in pipelines.all() {
            let st = crate::pipeline::status_json(&node.readers, &w).await;
            let l = labels(&[("pipeline", st["name"].as_str().unwrap_or(""))]);
            backlog.push((l.clone(), st["backlog_rows"].as_u64().unwrap_or(0)));
            delivered.push((l.clone(), st["delivered_rows"].as_u64().unwrap_or(0)));
            warning.push((l, u64::from(!st["backlog_warning"].is_null())));
        }
        if !backlog.is_empty() {
            m.gauges(
                "flotilla_pipeline_backlog_rows",
                "Changelog rows a pipeline has not delivered yet",
                backlog,
            );
            m.counters(
                "flotilla_pipeline_delivered_rows",
                "Changes a pipeline delivered since the node started",
                delivered,
            );
            m.gauges(
                "flotilla_pipeline_backlog_warning",
                "1 while a pipeline's backlog is above its backlog-warn-rows limit",
                warning,
            );
            m.0.register(
                "flotilla_pipeline_delivery_lag_seconds",
                "Trigger-based replication: source commit to target commit, per change",
                c.delivery_lag.metric(),
            );
        }
        let stats = leader.log.stats();
        m.counter(
            "flotilla_commits",
            "Transactions committed (one LSN each; a group of requests commits together)",
            Counters::get(&c.commits),
        );
        m.counter(
            "flotilla_committed_requests",
            "Client transactions committed",
            Counters::get(&c.committed_requests),
        );
        m.counter(
            "flotilla_merged_transactions",
            "Multi-leader: transactions from other data centres merged here",
            Counters::get(&c.merged_transactions),
        );
        m.counter(
            "flotilla_merge_conflicts",
            "Multi-leader: conflicts met while merging (each is a row of flotilla_conflicts)",
            Counters::get(&c.merge_conflicts),
        );
        m.gauge(
            "flotilla_log_bytes",
            "Bytes in the replication log",
            stats.bytes,
        );
        m.gauge(
            "flotilla_log_segments",
            "Segment files in the replication log",
            stats.segments as u64,
        );
        m.gauge(
            "flotilla_log_first_lsn",
            "Oldest LSN retained in the log",
            stats.first_lsn,
        );
        m.gauge(
            "flotilla_log_last_lsn",
            "Newest LSN in the log",
            stats.last_lsn,
        );
        m.counter(
            "flotilla_shipped_bytes",
            "Bytes of replication messages sent to followers",
            Counters::get(&c.shipped_bytes),
        );
        m.counter(
            "flotilla_semi_sync_waits",
            "Writes acknowledged only once enough followers held them durably (semi-sync)",
            Counters::get(&c.semi_sync_waits),
        );
        m.counter(
            "flotilla_semi_sync_timeouts",
            "Semi-sync writes answered not_replicated: too few followers within the timeout",
            Counters::get(&c.semi_sync_timeouts),
        );
        let followers: Vec<_> = leader.tracker().all().cloned().collect();
        let (mut lag_tx, mut lag_bytes, mut lag_ms) = (Vec::new(), Vec::new(), Vec::new());
        let (mut applied, mut connected) = (Vec::new(), Vec::new());
        for f in &followers {
            let lag = crate::api::status::follower_lag(&leader, f);
            let l = labels(&[("follower", f.id.as_str())]);
            lag_tx.push((l.clone(), lag.transactions));
            lag_bytes.push((l.clone(), lag.bytes));
            lag_ms.push((l.clone(), lag.ms()));
            applied.push((l.clone(), f.applied.lsn.0));
            connected.push((
                l,
                u64::from(f.state == flotilla_core::SessionState::Streaming),
            ));
        }
        m.gauges(
            "flotilla_follower_applied_lsn",
            "LSN each follower has applied",
            applied,
        );
        m.gauges(
            "flotilla_follower_lag_transactions",
            "Transactions each follower has yet to apply",
            lag_tx,
        );
        m.gauges(
            "flotilla_follower_lag_bytes",
            "Log bytes each follower has yet to apply",
            lag_bytes,
        );
        m.gauges(
            "flotilla_follower_lag_ms",
            "Age of the oldest transaction each follower has yet to apply",
            lag_ms,
        );
        m.gauges(
            "flotilla_follower_connected",
            "1 while the follower's session is open",
            connected,
        );
    } else {
        m.counter(
            "flotilla_applied_transactions",
            "Leader transactions applied",
            Counters::get(&c.applied_transactions),
        );
        m.counter(
            "flotilla_apply_batches",
            "Local transactions used to apply them",
            Counters::get(&c.apply_batches),
        );
        m.counter(
            "flotilla_bootstraps",
            "Snapshots installed",
            Counters::get(&c.bootstraps),
        );
        m.counter(
            "flotilla_apply_conflicts",
            "Changes a logical follower found not to fit its data (see conflict-policy)",
            Counters::get(&c.apply_conflicts),
        );
        if let Some(f) = node.follower() {
            let s = f.status();
            m.gauge(
                "flotilla_leader_lsn",
                "Newest LSN the leader announced",
                s.leader_head.lsn.0,
            );
            m.gauge(
                "flotilla_lag_transactions",
                "Leader transactions not yet applied here",
                s.leader_head.lsn.0.saturating_sub(pos.lsn.0),
            );
        }
        m.0.register(
            "flotilla_apply_lag_seconds",
            "Leader commit to visible on this follower",
            c.apply_lag.metric(),
        );
    }
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &m.0) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("cannot encode the metrics: {e}"),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_counters_get_their_suffix() {
        let mut m = Scrape(Registry::default());
        m.gauges(
            "flotilla_x",
            "x",
            vec![(labels(&[("pipeline", "a\"b\\c\nd")]), 1)],
        );
        m.counter("flotilla_things", "things", 3);
        let mut out = String::new();
        encode(&mut out, &m.0).unwrap();
        assert!(
            out.contains(r#"flotilla_x{pipeline="a\"b\\c\nd"} 1"#),
            "{out}"
        );
        assert!(out.contains("flotilla_things_total 3"), "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
    }
}
