//! Pruning the conflicts table: resolved conflicts older than a time go, open ones (keep-both,
//! not resolved yet) always stay. Each data centre prunes its own table (conflicts are recorded
//! in each, not exchanged); its followers see the rows go like any other change.

use super::CONFLICTS_TABLE;
use crate::leader_db::{CommitOutcome, LeaderDb};
use crate::StoreError;
use flotilla_types::{Epoch, NodeId};

/// The wall-clock milliseconds of a stamp as the conflicts table shows it (`MS.COUNTER`).
fn wall_ms_of(column: &str) -> String {
    format!("CAST(substr({column}, 1, instr({column} || '.', '.') - 1) AS INTEGER)")
}

impl LeaderDb {
    /// Deletes the resolved conflicts whose both sides were stamped before `before_ms` (wall
    /// clock, milliseconds since the epoch), as one commit; `None` when there are none (no
    /// commit then).
    pub fn prune_conflicts(
        &mut self,
        before_ms: u64,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<Option<(usize, CommitOutcome)>, StoreError> {
        if self.multi_leader.is_none() {
            return Err(StoreError::Refused(
                "there are conflicts only on multi-leader nodes: this node has no data centre \
                 (--dc)"
                    .into(),
            ));
        }
        let filter = format!(
            "resolved = 1 AND {} < ?1 AND {} < ?1",
            wall_ms_of("local_hlc"),
            wall_ms_of("remote_hlc")
        );
        let before = before_ms.min(i64::MAX as u64) as i64;
        let rules = self.rules.clone();
        let count: i64 = rules.internal(|| {
            self.conn.query_row(
                &format!("SELECT count(*) FROM {CONFLICTS_TABLE} WHERE {filter}"),
                [before],
                |r| r.get(0),
            )
        })?;
        if count == 0 {
            return Ok(None);
        }
        let (n, out) = self
            .internal_commit::<_, super::MergeApplyError>(
                "prune resolved conflicts",
                epoch,
                origin,
                now_us,
                |db, _| {
                    let n = db.conn.execute(
                        &format!("DELETE FROM {CONFLICTS_TABLE} WHERE {filter}"),
                        [before],
                    )?;
                    db.capture.statement_done(&db.conn)?;
                    Ok(n)
                },
            )
            .map_err(|e| match e {
                super::MergeApplyError::Store(e) => e,
                // (Deleting rows makes a record too: a huge table's may pass the size limit.)
                other => StoreError::Refused(format!(
                    "{other}: prune in steps (an older --older-than first)"
                )),
            })?;
        Ok(Some((n, out)))
    }
}
