//! What the pipelines' targets confirmed they hold: changelog rows the leader's writer deletes
//! inside its next commits (never a second connection: see docs/trigger-pipelines.md).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Changelog rows each pipeline's target confirmed, for the writer to delete.
#[derive(Default)]
pub struct Trims(Mutex<BTreeMap<i64, i64>>);

impl Trims {
    pub fn confirm(&self, pipeline: i64, seq: i64) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(pipeline).or_insert(seq);
        *e = (*e).max(seq);
    }

    pub fn take(&self) -> BTreeMap<i64, i64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
