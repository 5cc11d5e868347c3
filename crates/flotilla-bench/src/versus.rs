//! `flotilla bench catchup | bootstrap | logical [--compare postgres]`: one part of the
//! replication benchmark at a time, each figure beside PostgreSQL's (streaming standby, or
//! publication/subscription for `logical`) with the ratio, measured in the same run.

use super::postgres_side;
use super::{
    bootstrap, catchup, leader_with_schema, position, solo_throughput, throughput, wait_for,
    Figure, Sizes,
};
use flotilla_client::Client;
use flotilla_testkit::cluster::LocalNode;
use serde_json::{json, Value};
use std::path::Path;

/// A Flotilla figure and, with --compare postgres, PostgreSQL's.
pub struct Pair {
    pub flotilla: Figure,
    pub postgres: Option<Figure>,
}

fn pair(name: &str, unit: &'static str, compare: bool) -> Pair {
    Pair {
        flotilla: Figure::new(&format!("Flotilla {name}"), unit),
        postgres: compare.then(|| Figure::new(&format!("PostgreSQL {name}"), unit)),
    }
}

pub async fn run(
    scenario: &str,
    exe: &Path,
    root: &Path,
    s: &Sizes,
    compare: bool,
    progress: &dyn Fn(&str),
) -> anyhow::Result<(Vec<Pair>, Vec<Figure>)> {
    let mut pairs = Vec::new();
    let mut own = Vec::new();
    match scenario {
        "catchup" => {
            pairs.push(pair(
                &format!("catch-up {} txns × {} rows", s.big_txns, s.big_rows),
                "rows/s",
                compare,
            ));
            pairs.push(pair(
                &format!("catch-up {} single-row txns", s.small_txns),
                "txn/s",
                compare,
            ));
        }
        "bootstrap" => pairs.push(pair(
            &format!("new replica of a {} MiB database", s.snapshot_mib),
            "MiB/s",
            compare,
        )),
        "logical" => {
            pairs.push(pair(
                &format!("logical catch-up {} txns × {} rows", s.big_txns, s.big_rows),
                "rows/s",
                compare,
            ));
            own.push(Figure::new(
                "leader commits, 4 clients, no follower",
                "txn/s",
            ));
            own.push(Figure::new(
                "leader commits, 4 clients, 1 logical follower",
                "txn/s",
            ));
            own.push(Figure::new("with a logical follower / without", "ratio"));
            own.push(Figure::new(
                &format!("change feed over {} single-row txns", s.small_txns),
                "txn/s",
            ));
        }
        other => anyhow::bail!("no scenario {other}"),
    }
    for run in 0..s.runs {
        let dir = root.join(format!("{scenario}{run}"));
        std::fs::create_dir_all(&dir)?;
        progress(&format!("run {}/{}: Flotilla", run + 1, s.runs));
        match scenario {
            "catchup" => {
                let ((rows_s, _), _, _) =
                    catchup(exe, &dir.join("big"), s.big_txns, s.big_rows).await?;
                let ((_, txn_s), _, _) = catchup(exe, &dir.join("small"), s.small_txns, 1).await?;
                pairs[0].flotilla.values.push(rows_s);
                pairs[1].flotilla.values.push(txn_s);
                if compare {
                    progress(&format!("run {}/{}: PostgreSQL", run + 1, s.runs));
                    let (rows_s, _) = postgres_side::catchup(s.big_txns, s.big_rows).await?;
                    let (_, txn_s) = postgres_side::catchup(s.small_txns, 1).await?;
                    pairs[0]
                        .postgres
                        .as_mut()
                        .expect("compare")
                        .values
                        .push(rows_s);
                    pairs[1]
                        .postgres
                        .as_mut()
                        .expect("compare")
                        .values
                        .push(txn_s);
                }
            }
            "bootstrap" => {
                pairs[0]
                    .flotilla
                    .values
                    .push(bootstrap(exe, &dir, s.snapshot_mib).await?);
                if compare {
                    progress(&format!("run {}/{}: PostgreSQL", run + 1, s.runs));
                    let v = postgres_side::bootstrap(s.snapshot_mib).await?;
                    pairs[0].postgres.as_mut().expect("compare").values.push(v);
                }
            }
            _ => {
                let (_, (rows_s, _), _) =
                    catchup(exe, &dir.join("big"), s.big_txns, s.big_rows).await?;
                pairs[0].flotilla.values.push(rows_s);
                let (_, _, feed) = catchup(exe, &dir.join("small"), s.small_txns, 1).await?;
                // Capture and shipping cost: the same leader load without and with a logical
                // follower.
                let tp0 = solo_throughput(exe, &dir, "solo", s.secs).await?;
                let (leader, lc) = leader_with_schema(exe, &dir, "leader").await?;
                let f = LocalNode::start(exe, &dir, "lf", Some(&leader.url), &["--log", "logical"])
                    .await?;
                wait_for(&Client::new(&f.url), &position(&lc).await?).await?;
                let tpl = throughput(&leader.url, 4, s.secs).await;
                drop((leader, f));
                own[0].values.push(tp0);
                own[1].values.push(tpl);
                own[2].values.push(tpl / tp0);
                own[3].values.push(feed);
                if compare {
                    progress(&format!(
                        "run {}/{}: PostgreSQL publication/subscription",
                        run + 1,
                        s.runs
                    ));
                    let v = postgres_side::logical_catchup(s.big_txns, s.big_rows).await?;
                    pairs[0].postgres.as_mut().expect("compare").values.push(v);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok((pairs, own))
}

pub fn print(title: &str, pairs: &[Pair], own: &[Figure]) {
    println!("\n{title}\n");
    let w = pairs
        .iter()
        .map(|p| p.flotilla.name.len())
        .chain(own.iter().map(|f| f.name.len()))
        .max()
        .unwrap_or(10);
    for p in pairs {
        let f = &p.flotilla;
        print!(
            "{:<w$}  {:>12.1} {:<6} [{:.1}..{:.1}]",
            f.name,
            f.median(),
            f.unit,
            f.min(),
            f.max()
        );
        if let Some(pg) = &p.postgres {
            print!(
                "   PostgreSQL {:>12.1} [{:.1}..{:.1}]   ratio {:.2}",
                pg.median(),
                pg.min(),
                pg.max(),
                f.median() / pg.median()
            );
        }
        println!();
    }
    for f in own {
        println!(
            "{:<w$}  {:>12.2} {:<6} [{:.2}..{:.2}]",
            f.name,
            f.median(),
            f.unit,
            f.min(),
            f.max()
        );
    }
    if pairs.iter().any(|p| p.postgres.is_some()) {
        println!("\nratio = Flotilla / PostgreSQL (higher is better), same run, same machine.");
    }
}

pub fn json(scenario: &str, pairs: &[Pair], own: &[Figure]) -> Value {
    json!({
        "scenario": scenario,
        "figures": pairs.iter().map(|p| json!({
            "flotilla": p.flotilla.json(),
            "postgres": p.postgres.as_ref().map(Figure::json),
            "ratio": p.postgres.as_ref().map(|pg| p.flotilla.median() / pg.median()),
        })).collect::<Vec<_>>(),
        "flotilla_only": own.iter().map(Figure::json).collect::<Vec<_>>(),
    })
}
