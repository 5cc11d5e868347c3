//! `flotilla bench --quick` keeps working (figures are reported, not asserted: timings belong
//! to the benchmark, not to tests).

use std::path::Path;

/// Runs `flotilla bench ARGS --quick --json [--report DIR]`, checks it succeeded and returns its
/// JSON. One at a time: each run starts many processes, and five at once on a 2-core machine
/// would make the quick runs' bounded waits fail for lack of CPU rather than for a bug.
fn bench(args: &[&str], report: Option<&Path>) -> serde_json::Value {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
    cmd.arg("bench").args(args).args(["--quick", "--json"]);
    if let Some(dir) = report {
        cmd.arg("--report").arg(dir);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn quick_bench_reports_every_figure() {
    let v = bench(&["--runs", "1"], None);
    let figures = v["figures"].as_array().unwrap();
    assert_eq!(figures.len(), 18);
    for f in figures {
        let median = f["median"].as_f64().unwrap();
        assert!(median.is_finite() && median >= 0.0, "{f}");
        assert_eq!(f["runs"].as_array().unwrap().len(), 1);
    }
}

#[test]
fn quick_commit_comparison_with_postgres_reports_both_systems() {
    let report = tempfile::tempdir().unwrap();
    let v = bench(&["commit", "--compare", "postgres"], Some(report.path()));
    // 1, 4, 16 clients × (async with 0, 1, 2 followers, semi-sync with 1, 2, and for
    // PostgreSQL remote_apply with 1, 2).
    for (system, n) in [("flotilla", 15), ("postgres", 21)] {
        let cells = v[system]
            .as_array()
            .unwrap_or_else(|| panic!("{system}: {v}"));
        assert_eq!(cells.len(), n, "{system}");
        let semi = cells
            .iter()
            .filter(|c| c["durability"] == "semi-sync")
            .count();
        assert_eq!(semi, 6, "{system}");
        for c in cells {
            let tps = c["tps"]["median"].as_f64().unwrap();
            assert!(tps.is_finite() && tps > 0.0, "{system}: {c}");
        }
    }
    assert_eq!(v["floors"].as_array().unwrap().len(), 3);
    // The report: Markdown naming both systems, and two PNG plots.
    let md = std::fs::read_to_string(report.path().join("report.md")).unwrap();
    assert!(
        md.contains("PostgreSQL") && md.contains("| ratio |"),
        "{md}"
    );
    for png in [
        "commit-throughput.png",
        "commit-latency-p99.png",
        "commit-semi-sync-throughput.png",
    ] {
        let bytes = std::fs::read(report.path().join(png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png} is not a PNG");
        assert!(md.contains(png));
    }
}

#[test]
fn quick_pipeline_bench_delivers_into_postgres_and_reports_every_figure() {
    let v = bench(&["pipeline"], None);
    assert_eq!(v["target"], "PostgreSQL (synchronous_commit=on)");
    let figures = v["figures"].as_array().unwrap();
    assert_eq!(figures.len(), 8);
    for f in figures {
        let median = f["median"].as_f64().unwrap();
        assert!(median.is_finite() && median > 0.0, "{f}");
    }
}

#[test]
fn quick_lag_comparison_with_postgres_reports_both_and_a_cdf() {
    let report = tempfile::tempdir().unwrap();
    let v = bench(&["lag", "--compare", "postgres"], Some(report.path()));
    assert_eq!(v["postgres_error"], serde_json::Value::Null, "{v}");
    let figures = v["figures"].as_array().unwrap();
    // max rate, p50, p99, max, p50 and p99 seen by the reader, poll period — for each system.
    assert_eq!(figures.len(), 14, "{v}");
    for system in ["Flotilla", "PostgreSQL"] {
        for name in [
            "lag p50",
            "lag p99, seen by the reader",
            "follower poll period",
        ] {
            let full = format!("{system} {name}");
            assert!(
                figures.iter().any(|f| f["name"] == full.as_str()),
                "{full}: {v}"
            );
        }
    }
    for f in figures {
        let median = f["median"].as_f64().unwrap();
        assert!(median.is_finite() && median >= 0.0, "{f}");
    }
    let md = std::fs::read_to_string(report.path().join("report.md")).unwrap();
    assert!(md.contains("PostgreSQL lag p99"), "{md}");
    let png = std::fs::read(report.path().join("lag-cdf.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
}

#[test]
fn quick_catchup_bootstrap_logical_and_backup_comparisons_report_both_systems() {
    for scenario in ["catchup", "bootstrap", "logical", "backup"] {
        let report = tempfile::tempdir().unwrap();
        let v = bench(&[scenario, "--compare", "postgres"], Some(report.path()));
        assert_eq!(v["scenario"], scenario);
        let figures = v["figures"].as_array().unwrap();
        assert!(!figures.is_empty(), "{v}");
        for f in figures {
            for system in ["flotilla", "postgres"] {
                let m = f[system]["median"].as_f64().unwrap_or(f64::NAN);
                assert!(m.is_finite() && m > 0.0, "{scenario} {system}: {f}");
            }
            assert!(f["ratio"].as_f64().unwrap() > 0.0);
        }
        // The report: a header row, its separator, and a row per figure.
        let md = std::fs::read_to_string(report.path().join("report.md")).unwrap();
        let rows = md.lines().filter(|l| l.starts_with("| ")).count();
        let own = v["flotilla_only"].as_array().unwrap().len();
        assert_eq!(rows, 2 + figures.len() + own, "{md}");
        assert!(md.contains("PostgreSQL"), "{md}");
    }
}

#[test]
fn quick_failover_bench_measures_every_durability_and_each_failover() {
    let report = tempfile::tempdir().unwrap();
    let v = bench(&["failover", "--runs", "2"], Some(report.path()));
    let commit = v["commit"].as_array().unwrap();
    // async, semi-sync, quorum × 1, 4, 16 clients.
    assert_eq!(commit.len(), 9, "{v}");
    // Every read guarantee was served (a linearizable read that never confirmed would not be).
    let reads = v["reads"].as_array().unwrap();
    assert_eq!(reads.len(), 5, "{v}");
    for r in reads {
        assert!(r["reads_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    for c in commit {
        assert!(c["tps"]["median"].as_f64().unwrap() > 0.0, "{c}");
    }
    let runs = v["failover_ms"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{v}");
    assert!(runs.iter().all(|r| r.as_f64().unwrap() > 0.0), "{v}");
    assert!(!v["timeline"].as_array().unwrap().is_empty());
    let png = std::fs::read(report.path().join("failover-throughput.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let md = std::fs::read_to_string(report.path().join("report.md")).unwrap();
    assert!(
        md.contains("p50") && md.contains("failover-throughput.png"),
        "{md}"
    );
}
