//! `flotilla-core` stays sans-IO: the node and the simulator drive the same machines only as
//! long as nothing here reaches for a runtime, a database, a socket, a file, a thread or a
//! clock. These checks fail the build's tests the day one of them creeps in.

use std::path::Path;

/// Crates whose presence would mean IO or time inside the core (directly or through the
/// workspace crates the core depends on).
const FORBIDDEN_CRATES: &[&str] = &[
    "tokio",
    "rusqlite",
    "libsqlite3",
    "reqwest",
    "axum",
    "hyper",
    "mio",
    "socket2",
    "chrono",
    "time",
    "rand",
    "flotilla-log",
    "flotilla-store",
    "flotilla-node",
];

/// What a source file must not name.
const FORBIDDEN_APIS: &[&str] = &[
    "SystemTime",
    "Instant::now",
    "std::time::Instant",
    "std::thread",
    "std::net",
    "std::fs",
    "std::process",
    "std::io::stdin",
    "tokio::",
    "rusqlite::",
];

fn dependencies(manifest: &str) -> Vec<String> {
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some(name) = line.split(['.', '=', ' ']).next().filter(|n| !n.is_empty()) {
                deps.push(name.to_string());
            }
        }
    }
    deps
}

#[test]
fn the_core_and_what_it_builds_on_depend_on_no_io_or_clock_crate() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in ["flotilla-core", "flotilla-types", "flotilla-wire"] {
        let manifest = std::fs::read_to_string(crates.join(krate).join("Cargo.toml")).unwrap();
        let deps = dependencies(&manifest);
        assert!(
            !deps.is_empty() || krate != "flotilla-core",
            "parsed nothing"
        );
        for d in &deps {
            assert!(
                !FORBIDDEN_CRATES.contains(&d.as_str()),
                "{krate} depends on {d}: the replication core must stay sans-IO"
            );
        }
    }
}

#[test]
fn the_core_sources_use_no_clock_thread_file_or_socket() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src];
    let mut checked = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        checked += 1;
        for api in FORBIDDEN_APIS {
            assert!(
                !text.contains(api),
                "{} uses {api}: the core takes time and IO results as events",
                p.display()
            );
        }
    }
    assert!(checked > 5, "found only {checked} source files");
}
