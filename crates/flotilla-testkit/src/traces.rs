//! Real editing traces (josephg/editing-traces' sequential format) as the updates a Yjs
//! client sends, keystroke by keystroke: for replaying a real editing history through a
//! server in tests and benchmarks.

use anyhow::{bail, Context};
use std::io::Read;
use std::path::PathBuf;
use yrs::{GetString, Text, Transact};

/// A trace's keystrokes, each as the Yjs update a client sends for it (one transaction per
/// patch), and the texts to check against.
pub struct Trace {
    pub updates: Vec<Vec<u8>>,
    /// The text after the updates, as the client's own document has it.
    pub text: String,
    /// The trace's `endContent` (the author's final text), when every patch was taken.
    pub end_content: Option<String>,
}

/// Where trace `name` (`sequential/seph-blog1.json.gz`) is: `FLOTILLA_TRACES`, the traces
/// bundled with the testkit (`crates/flotilla-testkit/traces`), or the repository's sibling
/// `shared/traces`.
pub fn find(name: &str) -> anyhow::Result<PathBuf> {
    let mut places: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = std::env::var("FLOTILLA_TRACES") {
        places.push(PathBuf::from(dir));
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    places.push(here.join("traces"));
    places.push(here.join("../../../shared/traces"));
    places.push(PathBuf::from("../shared/traces"));
    for p in &places {
        if p.join(name).exists() {
            return Ok(p.join(name));
        }
    }
    bail!("the editing trace {name} was not found (looked in {places:?}): set FLOTILLA_TRACES to the folder holding it")
}

/// The first `limit` keystrokes of the trace at `path` (all with `None`).
pub fn keystrokes(path: &std::path::Path, limit: Option<usize>) -> anyhow::Result<Trace> {
    let mut json = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
    )
    .read_to_string(&mut json)
    .with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
    let doc = yrs::Doc::with_options(yrs::Options {
        offset_kind: yrs::OffsetKind::Utf16,
        ..yrs::Options::default()
    });
    let text = doc.get_or_insert_text("text");
    let updates = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = updates.clone();
    doc.observe_update_v1("trace", move |_: &yrs::TransactionMut, e| {
        sink.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e.update.clone())
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut count = 0;
    let mut all = true;
    'all: for txn in v["txns"].as_array().context("the trace has no txns")? {
        for p in txn["patches"].as_array().context("a txn without patches")? {
            if limit.is_some_and(|n| count == n) {
                all = false;
                break 'all;
            }
            let (pos, del) = (
                p[0].as_u64().context("a patch without a position")? as u32,
                p[1].as_u64().context("a patch without a length")? as u32,
            );
            let ins = p[2].as_str().unwrap_or("");
            let mut t = doc.transact_mut();
            if del > 0 {
                text.remove_range(&mut t, pos, del);
            }
            if !ins.is_empty() {
                text.insert(&mut t, pos, ins);
            }
            count += 1;
        }
    }
    let end = text.get_string(&doc.transact());
    let updates = std::mem::take(&mut *updates.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Trace {
        updates,
        text: end,
        end_content: all
            .then(|| v["endContent"].as_str().map(str::to_string))
            .flatten(),
    })
}
