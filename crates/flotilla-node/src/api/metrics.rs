//! `GET /metrics` in Prometheus text format. Rates (commits/s, applied transactions/s) are
//! `rate()` over the counters.

use crate::metrics::Counters;
use crate::node::{Node, Role};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::fmt::Write;
use std::sync::Arc;

pub async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let mut out = String::new();
    let c = &node.counters;
    let pos = *node.position.borrow();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let role = match node.role {
        Role::Leader => "leader",
        Role::Follower { .. } => "follower",
    };
    let one = |v: u64| vec![(String::new(), v)];
    metric(
        "flotilla_info",
        "gauge",
        "Node identity.",
        &[(format!("{{id=\"{}\",role=\"{role}\"}}", node.config.id), 1)],
    );
    metric(
        "flotilla_position_epoch",
        "gauge",
        "Epoch of the newest visible transaction.",
        &one(pos.epoch.0),
    );
    metric(
        "flotilla_position_lsn",
        "gauge",
        "LSN of the newest visible transaction.",
        &one(pos.lsn.0),
    );
    metric(
        "flotilla_execute_requests_total",
        "counter",
        "POST /v1/execute requests.",
        &one(Counters::get(&c.execute_requests)),
    );
    metric(
        "flotilla_query_requests_total",
        "counter",
        "POST /v1/query requests.",
        &one(Counters::get(&c.query_requests)),
    );
    if let Some(leader) = &node.leader {
        let mut backlog = Vec::new();
        let mut delivered = Vec::new();
        let mut warning = Vec::new();
        for w in leader.pipelines.all() {
            let st = crate::pipeline::status_json(&node, &w).await;
            let label = format!("{{pipeline=\"{}\"}}", st["name"].as_str().unwrap_or(""));
            backlog.push((label.clone(), st["backlog_rows"].as_u64().unwrap_or(0)));
            delivered.push((label.clone(), st["delivered_rows"].as_u64().unwrap_or(0)));
            warning.push((label, u64::from(!st["backlog_warning"].is_null())));
        }
        if !backlog.is_empty() {
            metric(
                "flotilla_pipeline_backlog_rows",
                "gauge",
                "Changelog rows a pipeline has not delivered yet.",
                &backlog,
            );
            metric(
                "flotilla_pipeline_delivered_rows_total",
                "counter",
                "Changes a pipeline delivered since the node started.",
                &delivered,
            );
            metric(
                "flotilla_pipeline_backlog_warning",
                "gauge",
                "1 while a pipeline's backlog is above its backlog-warn-rows limit.",
                &warning,
            );
        }
        let stats = leader.log.stats();
        metric(
            "flotilla_commits_total",
            "counter",
            "Transactions committed (one LSN each; a group of requests commits together).",
            &one(Counters::get(&c.commits)),
        );
        metric(
            "flotilla_committed_requests_total",
            "counter",
            "Client transactions committed.",
            &one(Counters::get(&c.committed_requests)),
        );
        metric(
            "flotilla_log_bytes",
            "gauge",
            "Bytes in the replication log.",
            &one(stats.bytes),
        );
        metric(
            "flotilla_log_segments",
            "gauge",
            "Segment files in the replication log.",
            &one(stats.segments as u64),
        );
        metric(
            "flotilla_log_first_lsn",
            "gauge",
            "Oldest LSN retained in the log.",
            &one(stats.first_lsn),
        );
        metric(
            "flotilla_log_last_lsn",
            "gauge",
            "Newest LSN in the log.",
            &one(stats.last_lsn),
        );
        metric(
            "flotilla_shipped_bytes_total",
            "counter",
            "Bytes of replication messages sent to followers.",
            &one(Counters::get(&c.shipped_bytes)),
        );
        let followers: Vec<_> = leader.tracker().all().cloned().collect();
        let mut lag_tx = Vec::new();
        let mut lag_bytes = Vec::new();
        let mut lag_ms = Vec::new();
        let mut applied = Vec::new();
        let mut connected = Vec::new();
        for f in &followers {
            let lag = crate::api::status::follower_lag(&node, f);
            let l = format!("{{follower=\"{}\"}}", f.id);
            lag_tx.push((l.clone(), lag.transactions));
            lag_bytes.push((l.clone(), lag.bytes));
            lag_ms.push((l.clone(), lag.ms));
            applied.push((l.clone(), f.applied.lsn.0));
            connected.push((
                l,
                (f.state == flotilla_core::SessionState::Streaming) as u64,
            ));
        }
        metric(
            "flotilla_follower_applied_lsn",
            "gauge",
            "LSN each follower has applied.",
            &applied,
        );
        metric(
            "flotilla_follower_lag_transactions",
            "gauge",
            "Transactions each follower has yet to apply.",
            &lag_tx,
        );
        metric(
            "flotilla_follower_lag_bytes",
            "gauge",
            "Log bytes each follower has yet to apply.",
            &lag_bytes,
        );
        metric(
            "flotilla_follower_lag_ms",
            "gauge",
            "Age of the oldest transaction each follower has yet to apply.",
            &lag_ms,
        );
        metric(
            "flotilla_follower_connected",
            "gauge",
            "1 while the follower's session is open.",
            &connected,
        );
    } else {
        metric(
            "flotilla_applied_transactions_total",
            "counter",
            "Leader transactions applied.",
            &one(Counters::get(&c.applied_transactions)),
        );
        metric(
            "flotilla_apply_batches_total",
            "counter",
            "Local transactions used to apply them.",
            &one(Counters::get(&c.apply_batches)),
        );
        metric(
            "flotilla_bootstraps_total",
            "counter",
            "Snapshots installed.",
            &one(Counters::get(&c.bootstraps)),
        );
        metric(
            "flotilla_apply_conflicts_total",
            "counter",
            "Changes a logical follower found not to fit its data (see conflict-policy).",
            &one(Counters::get(&c.apply_conflicts)),
        );
        if let Some(f) = &node.follower {
            let s = f.status();
            metric(
                "flotilla_leader_lsn",
                "gauge",
                "Newest LSN the leader announced.",
                &one(s.leader_head.lsn.0),
            );
            metric(
                "flotilla_lag_transactions",
                "gauge",
                "Leader transactions not yet applied here.",
                &one(s.leader_head.lsn.0.saturating_sub(pos.lsn.0)),
            );
        }
    }
    if node.follower.is_some() {
        c.apply_lag.render(&mut out);
    }
    if node
        .leader
        .as_ref()
        .is_some_and(|l| !l.pipelines.all().is_empty())
    {
        c.delivery_lag.render_as(
            &mut out,
            "flotilla_pipeline_delivery_lag_seconds",
            "Trigger-based replication: source commit to target commit, per change.",
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
