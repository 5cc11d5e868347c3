//! `flotilla bench --quick` keeps working (figures are reported, not asserted: timings belong
//! to the benchmark, not to tests).

#[test]
fn quick_bench_reports_every_figure() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["bench", "--quick", "--runs", "1", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let figures = v["figures"].as_array().unwrap();
    assert_eq!(figures.len(), 18);
    for f in figures {
        let median = f["median"].as_f64().unwrap();
        assert!(median.is_finite() && median >= 0.0, "{f}");
        assert_eq!(f["runs"].as_array().unwrap().len(), 1);
    }
}
