//! `--report DIR`: a Markdown report with PNG plots people can read, next to the terminal table.
//! Plots are drawn with `plotters` into bitmaps; the text uses DejaVu Sans, bundled in
//! `assets/` (with its licence) so that no system font is needed.

use super::commit::{
    same, Cell, CommitResults, ASYNC, CLIENTS, FOLLOWERS, REMOTE_APPLY, SEMI_SYNC,
};
use anyhow::Context;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bundled font is valid; a failure here would leave plots without text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One line of a plot: a label and (x, y) points.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    dashed: bool,
}

fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max * 1.05, 0.0..y_max.max(1e-9))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 16))
        .draw()?;
    for s in series {
        let color = s.color;
        let style = ShapeStyle::from(&color).stroke_width(if s.dashed { 2 } else { 3 });
        chart
            .draw_series(LineSeries::new(s.points.clone(), style))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(
            s.points
                .iter()
                .map(|p| Circle::new(*p, 4, ShapeStyle::from(&color).filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

const FLOTILLA_COLORS: [RGBColor; 3] = [
    RGBColor(0, 90, 181),
    RGBColor(30, 136, 229),
    RGBColor(100, 181, 246),
];
const POSTGRES_COLORS: [RGBColor; 3] = [
    RGBColor(194, 24, 7),
    RGBColor(229, 57, 53),
    RGBColor(239, 154, 154),
];

/// One series per follower count, of the cells of one durability (counts without such cells
/// are left out).
fn by_followers(
    cells: &[Cell],
    durability: &str,
    system: &str,
    colors: [RGBColor; 3],
    dashed: bool,
    y: impl Fn(&Cell) -> f64,
) -> Vec<Series> {
    let replicas = if system.starts_with("PostgreSQL") {
        "standbys"
    } else {
        "followers"
    };
    FOLLOWERS
        .iter()
        .enumerate()
        .map(|(i, f)| Series {
            label: format!("{system}, {f} {replicas}"),
            points: CLIENTS
                .iter()
                .filter_map(|c| {
                    cells
                        .iter()
                        .find(|x| {
                            x.durability == durability && x.followers == *f && x.clients == *c
                        })
                        .map(|x| (*c as f64, y(x)))
                })
                .collect(),
            color: colors[i],
            dashed,
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

/// A plot of throughput (per second) over time (ms): the failover report's.
pub fn throughput_over_time(path: &Path, title: &str, points: &[(f64, f64)]) -> anyhow::Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_min = points.iter().map(|p| p.0).fold(0.0, f64::min);
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x_min..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("ms from the SIGKILL of the leader")
        .y_desc("writes acknowledged per second")
        .label_style(("sans-serif", 16))
        .draw()?;
    let color = FLOTILLA_COLORS[0];
    chart.draw_series(LineSeries::new(
        points.to_vec(),
        ShapeStyle::from(&color).stroke_width(3),
    ))?;
    chart.draw_series(LineSeries::new(
        vec![(0.0, 0.0), (0.0, y_max)],
        ShapeStyle::from(&POSTGRES_COLORS[0]).stroke_width(1),
    ))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Convergence after a partition healed: per data centre, the share (%) of the other side's
/// transactions merged over ms since the links came back.
pub fn convergence(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, 0.0..105.0)?;
    chart
        .configure_mesh()
        .x_desc("ms since the partition healed")
        .y_desc("% of the other side's transactions merged")
        .label_style(("sans-serif", 16))
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = FLOTILLA_COLORS[i % FLOTILLA_COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                points.clone(),
                ShapeStyle::from(&color).stroke_width(3),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Writes `report.md`, `commit-throughput.png` and `commit-latency-p99.png` into `dir`.
pub fn write_commit(dir: &Path, r: &CommitResults) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pg = match &r.postgres {
        Some(Ok(c)) => Some(c),
        _ => None,
    };
    let tps = |c: &Cell| c.tps.median();
    let mut tp = by_followers(&r.flotilla, ASYNC, "Flotilla", FLOTILLA_COLORS, false, tps);
    let mut p99 = by_followers(
        &r.flotilla,
        ASYNC,
        "Flotilla",
        FLOTILLA_COLORS,
        false,
        |c| c.p99_ms.median(),
    );
    let mut semi = by_followers(
        &r.flotilla,
        SEMI_SYNC,
        "Flotilla semi-sync",
        FLOTILLA_COLORS,
        false,
        tps,
    );
    if let Some(pg) = pg {
        tp.extend(by_followers(
            pg,
            ASYNC,
            "PostgreSQL",
            POSTGRES_COLORS,
            true,
            tps,
        ));
        p99.extend(by_followers(
            pg,
            ASYNC,
            "PostgreSQL",
            POSTGRES_COLORS,
            true,
            |c| c.p99_ms.median(),
        ));
        semi.extend(by_followers(
            pg,
            SEMI_SYNC,
            "PostgreSQL sync on",
            POSTGRES_COLORS,
            true,
            tps,
        ));
        semi.extend(by_followers(
            pg,
            REMOTE_APPLY,
            "PostgreSQL remote_apply",
            [
                RGBColor(120, 120, 120),
                RGBColor(80, 80, 80),
                RGBColor(40, 40, 40),
            ],
            true,
            tps,
        ));
    }
    let tp_png = dir.join("commit-throughput.png");
    line_plot(
        &tp_png,
        "Commit throughput vs clients (median)",
        "concurrent clients",
        "transactions/s",
        &tp,
    )?;
    let lat_png = dir.join("commit-latency-p99.png");
    line_plot(
        &lat_png,
        "Commit latency p99 vs clients (median of runs)",
        "concurrent clients",
        "ms",
        &p99,
    )?;

    let semi_png = dir.join("commit-semi-sync-throughput.png");
    line_plot(
        &semi_png,
        "Semi-sync commit throughput vs clients (median)",
        "concurrent clients",
        "transactions/s",
        &semi,
    )?;

    let mut md = String::new();
    let _ = writeln!(md, "# Flotilla benchmark: commit\n");
    let _ = writeln!(
        md,
        "One 100-byte row per transaction (`t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT)`), clients \
         sending back to back; each figure is the median of {} run(s) with [min..max]. `async`: \
         Flotilla answers a commit once its log record is flushed (followers asynchronous); \
         PostgreSQL runs `synchronous_commit = local` (asynchronous standbys). `semi-sync`: \
         Flotilla answers once one physical follower applied and flushed the transaction; \
         PostgreSQL has one synchronous standby (`synchronous_standby_names = '*'`) and runs \
         `synchronous_commit = on` (the standby flushed it) and, in the last column, \
         `remote_apply` (the standby applied it). Both on this machine, in the same run.\n",
        r.fsync_us.values.len()
    );
    let _ = writeln!(md, "## Floors of this machine (same run)\n");
    let _ = writeln!(md, "| floor | median | [min..max] |\n| --- | --- | --- |");
    for f in [&r.fsync_us, &r.bare_sqlite, &r.loopback_us] {
        let _ = writeln!(
            md,
            "| {} | {:.1} {} | [{:.1}..{:.1}] |",
            f.name,
            f.median(),
            f.unit,
            f.min(),
            f.max()
        );
    }
    let regime = if r.fsync_us.median() > 1000.0 {
        "slow (throttled)"
    } else {
        "fast"
    };
    let _ = writeln!(md, "\nDisk regime: **{regime}**.\n");
    let _ = writeln!(md, "## Throughput and latency\n");
    if pg.is_some() {
        let _ = writeln!(md, "| durability | followers | clients | Flotilla txn/s | p50 / p99 ms | PostgreSQL txn/s | p50 / p99 ms | ratio | PostgreSQL remote_apply txn/s | ratio |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    } else {
        let _ = writeln!(
            md,
            "| durability | followers | clients | Flotilla txn/s | p50 / p99 ms |\n| --- | --- | --- | --- | --- |"
        );
    }
    for c in &r.flotilla {
        let _ = write!(
            md,
            "| {} | {} | {} | {:.0} [{:.0}..{:.0}] | {:.2} / {:.2} |",
            c.durability,
            c.followers,
            c.clients,
            c.tps.median(),
            c.tps.min(),
            c.tps.max(),
            c.p50_ms.median(),
            c.p99_ms.median()
        );
        if let Some(p) = pg.and_then(|pg| same(pg, c, c.durability)) {
            let _ = write!(
                md,
                " {:.0} [{:.0}..{:.0}] | {:.2} / {:.2} | {:.2} |",
                p.tps.median(),
                p.tps.min(),
                p.tps.max(),
                p.p50_ms.median(),
                p.p99_ms.median(),
                c.tps.median() / p.tps.median()
            );
            match pg
                .and_then(|pg| same(pg, c, REMOTE_APPLY))
                .filter(|_| c.durability == SEMI_SYNC)
            {
                Some(ra) => {
                    let _ = write!(
                        md,
                        " {:.0} [{:.0}..{:.0}] | {:.2} |",
                        ra.tps.median(),
                        ra.tps.min(),
                        ra.tps.max(),
                        c.tps.median() / ra.tps.median()
                    );
                }
                None => md.push_str(" | |"),
            }
        }
        md.push('\n');
    }
    if let Some(Err(e)) = &r.postgres {
        let _ = writeln!(md, "\nPostgreSQL was not measured: {e}");
    }
    let _ = writeln!(
        md,
        "\n![throughput](commit-throughput.png)\n\n![latency p99](commit-latency-p99.png)\n\n\
         ![semi-sync throughput](commit-semi-sync-throughput.png)"
    );
    let md_path = dir.join("report.md");
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    Ok(vec![md_path, tp_png, lat_png, semi_png])
}

/// Writes `report.md` and `lag-cdf.png` for the lag scenario into `dir`.
pub fn write_lag(
    dir: &Path,
    r: &super::lag::LagResults,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cdf = |samples: &[f64]| -> Vec<(f64, f64)> {
        let n = samples.len().max(1) as f64;
        // At most ~400 points: enough for the curve.
        let step = (samples.len() / 400).max(1);
        samples
            .iter()
            .enumerate()
            .filter(|(i, _)| i % step == 0 || *i + 1 == samples.len())
            .map(|(i, v)| (*v, (i + 1) as f64 / n * 100.0))
            .collect()
    };
    let mut series = vec![Series {
        label: "Flotilla follower".into(),
        points: cdf(&r.flotilla.samples),
        color: FLOTILLA_COLORS[0],
        dashed: false,
    }];
    let pg = match &r.postgres {
        Some(Ok(p)) => Some(p),
        _ => None,
    };
    if let Some(p) = pg {
        series.push(Series {
            label: "PostgreSQL streaming standby".into(),
            points: cdf(&p.samples),
            color: POSTGRES_COLORS[0],
            dashed: true,
        });
    }
    let png = dir.join("lag-cdf.png");
    line_plot(
        &png,
        "Follower staleness at half load: CDF (last run)",
        "visible on the follower after the commit was acknowledged (ms)",
        "% of commits",
        &series,
    )?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Flotilla benchmark: follower lag
"
    );
    let _ = writeln!(
        md,
        "{} writers commit one 100-byte row per transaction at {:.0}% of the maximum rate measured \
         first; a reader polls the follower (standby) for the highest key it holds. Lag = when a key \
         became visible there − when its commit was acknowledged (0 if it was there first); when \
         it became visible is estimated as the middle between the middles of the last poll that \
         missed it and the first that saw it (\"seen by the reader\": when the answer that first \
         showed it arrived, which adds half a poll and the answer's way back). Median of {} \
         run(s) with [min..max]; same method for both systems.\n",
        4,
        super::lag::LOAD_FRACTION * 100.0,
        r.flotilla.p50_ms.values.len()
    );
    let _ = writeln!(md, "| figure | median | [min..max] |\n| --- | --- | --- |");
    for f in r.figures() {
        let _ = writeln!(
            md,
            "| {} | {:.2} {} | [{:.2}..{:.2}] |",
            f.name,
            f.median(),
            f.unit,
            f.min(),
            f.max()
        );
    }
    if let Some(p) = pg {
        let _ = writeln!(
            md,
            "\nRatios (Flotilla / PostgreSQL, lower is better): p50 {:.2}, p99 {:.2}.",
            r.flotilla.p50_ms.median() / p.p50_ms.median(),
            r.flotilla.p99_ms.median() / p.p99_ms.median()
        );
    }
    if let Some(Err(e)) = &r.postgres {
        let _ = writeln!(md, "\nPostgreSQL was not measured: {e}");
    }
    let _ = writeln!(md, "\n![lag CDF](lag-cdf.png)");
    let md_path = dir.join("report.md");
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    Ok(vec![md_path, png])
}

/// Writes `report.md` for `catchup`, `bootstrap` or `logical` into `dir`: each figure beside
/// PostgreSQL's, with the ratio.
pub fn write_versus(
    dir: &Path,
    scenario: &str,
    pairs: &[super::versus::Pair],
    own: &[super::Figure],
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut md = String::new();
    let _ = writeln!(md, "# Flotilla benchmark: {scenario}\n");
    let _ = writeln!(
        md,
        "Same workload on both systems, same machine, same run; each figure is the median of the \
         runs with [min..max]. The method is in docs/performance.md.\n"
    );
    let _ = writeln!(
        md,
        "| figure | Flotilla | PostgreSQL | Flotilla / PostgreSQL |\n| --- | --- | --- | --- |"
    );
    for p in pairs {
        let f = &p.flotilla;
        let (pg, ratio) = match &p.postgres {
            Some(g) => (
                format!(
                    "{:.1} {} [{:.1}..{:.1}]",
                    g.median(),
                    g.unit,
                    g.min(),
                    g.max()
                ),
                format!("{:.2}", f.median() / g.median()),
            ),
            None => ("not measured".to_string(), "—".to_string()),
        };
        let _ = writeln!(
            md,
            "| {} | {:.1} {} [{:.1}..{:.1}] | {pg} | {ratio} |",
            f.name.trim_start_matches("Flotilla "),
            f.median(),
            f.unit,
            f.min(),
            f.max()
        );
    }
    for f in own {
        let _ = writeln!(
            md,
            "| {} | {:.2} {} [{:.2}..{:.2}] | | |",
            f.name,
            f.median(),
            f.unit,
            f.min(),
            f.max()
        );
    }
    let path = dir.join("report.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    Ok(vec![path])
}
