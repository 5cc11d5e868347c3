//! A row's merge state and the two ways it changes: a write made here, and a write that
//! arrives from another origin.

use crate::cell::{Cell, Entry};
use crate::conflict::{Conflict, ConflictSide, Winner};
use crate::value_order::counter_delta;
use crate::{ColumnPolicy, CustomResolver, DeleteRule, TablePolicies, Version};
use flotilla_types::{RowOp, SqlValue, VersionVector};

/// Everything a replica keeps to merge one row.
///
/// Whether the row exists is decided by two sets of writes (an observed-remove set, both
/// ways): `live` holds the inserts and updates no delete has seen, `dead` the deletes no insert
/// or update has seen. Each set only ever loses what a later write saw, so it is the same on
/// every replica that has the same writes, whatever their order. With `delete-wins` the row
/// exists when something is live and nothing is dead; with `update-wins`, when something is
/// live. Each set holds at most one write per origin (a later write of an origin saw its
/// earlier ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowState {
    pub live: Vec<Version>,
    pub dead: Vec<Version>,
    /// The earliest insert of the row (the same everywhere once the inserts are): who keeps
    /// a unique value two data centres gave two rows. `Version::zero()` for a settled row.
    pub created: Option<Version>,
    /// One per column, in the table's column order.
    pub cells: Vec<Cell>,
}

impl RowState {
    /// A row that existed before its table had merge metadata.
    pub fn settled(values: &[SqlValue]) -> RowState {
        RowState {
            live: vec![Version::zero()],
            dead: Vec::new(),
            created: Some(Version::zero()),
            cells: values.iter().cloned().map(Cell::settled).collect(),
        }
    }

    fn unseen(width: usize) -> RowState {
        RowState {
            live: Vec::new(),
            dead: Vec::new(),
            created: None,
            cells: (0..width).map(|_| Cell::empty()).collect(),
        }
    }

    pub fn alive(&self, rule: DeleteRule) -> bool {
        !self.live.is_empty() && (rule == DeleteRule::UpdateWins || self.dead.is_empty())
    }

    /// The row's values (also kept while it is deleted).
    pub fn values(&self) -> Vec<SqlValue> {
        self.cells.iter().map(|c| c.value.clone()).collect()
    }

    /// Columns added to the table since this state was written (`ALTER TABLE … ADD COLUMN`):
    /// they start as settled at their default.
    pub fn widen(&mut self, defaults: &[SqlValue]) {
        while self.cells.len() < defaults.len() {
            let d = defaults[self.cells.len()].clone();
            self.cells.push(Cell::settled(d));
        }
    }

    fn note_insert(&mut self, version: &Version) {
        if self.created.as_ref().is_none_or(|c| version < c) {
            self.created = Some(version.clone());
        }
    }

    /// Adds an insert or update (`alive`) or a delete: the write removes what it saw from both
    /// sets and joins its own. Returns the latest write of the other kind it had not seen (a
    /// delete racing an update, or the reverse).
    fn existence_write(
        &mut self,
        alive: bool,
        version: &Version,
        deps: &VersionVector,
    ) -> Option<Version> {
        self.live.retain(|v| !v.seen_by(deps, version));
        self.dead.retain(|v| !v.seen_by(deps, version));
        let (own, other) = if alive {
            (&mut self.live, &self.dead)
        } else {
            (&mut self.dead, &self.live)
        };
        let at = own.binary_search(version).unwrap_or_else(|i| i);
        own.insert(at, version.clone());
        other.last().cloned()
    }
}

/// What a write made here changes in a row's merge state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalWrite {
    pub state: RowState,
    /// For an insert: the counter columns whose value in the merge state was not zero before
    /// it (a deleted row that met increments concurrent with its delete), with that value. The
    /// change carries them so that other replicas add `after - base`, as this one did.
    pub counter_bases: Vec<(usize, SqlValue)>,
}

/// Records a row change made on this replica (`before` / `after` as SQLite reported them).
/// `state` is `None` for a row never seen by the merge metadata.
pub fn write_local(
    state: Option<RowState>,
    op: RowOp,
    before: Option<&[SqlValue]>,
    after: Option<&[SqlValue]>,
    version: &Version,
    policies: &TablePolicies,
) -> LocalWrite {
    let width = after.or(before).map_or(0, <[SqlValue]>::len);
    let mut state = match (state, before) {
        (Some(s), _) => s,
        (None, Some(b)) => RowState::settled(b),
        (None, None) => RowState::unseen(width),
    };
    if state.cells.len() < width {
        let pad: Vec<SqlValue> = after.or(before).expect("width > 0")[..].to_vec();
        state.widen(&pad);
    }
    let mut counter_bases = Vec::new();
    match op {
        RowOp::Insert | RowOp::Update => {
            let after = after.unwrap_or(&[]);
            if op == RowOp::Insert {
                state.note_insert(version);
            }
            // Everything here was seen by a local write.
            state.live = vec![version.clone()];
            state.dead.clear();
            for (i, value) in after.iter().enumerate() {
                let old = before.and_then(|b| b.get(i));
                if op == RowOp::Update && old == Some(value) {
                    continue;
                }
                let policy = policies.column(i);
                let cell = &mut state.cells[i];
                // The increment is taken against the merge state's value, which for an update
                // is the row's old value and for an insert the deleted row's (usually zero).
                let base = match op {
                    RowOp::Update => old.cloned(),
                    _ => Some(cell.value.clone()),
                };
                if op == RowOp::Insert
                    && *policy == ColumnPolicy::Counter
                    && !matches!(base, Some(SqlValue::Null | SqlValue::Integer(0)) | None)
                {
                    counter_bases.push((i, base.clone().expect("matched")));
                }
                let delta = counter_delta(base.as_ref(), Some(value));
                cell.write_local(
                    Entry {
                        version: version.clone(),
                        value: value.clone(),
                    },
                    policy,
                    Some(&delta),
                );
            }
        }
        RowOp::Delete => {
            state.live.clear();
            state.dead = vec![version.clone()];
            if let Some(before) = before {
                for (i, old) in before.iter().enumerate() {
                    if *policies.column(i) == ColumnPolicy::Counter {
                        state.cells[i].add(&counter_delta(Some(old), None));
                    }
                }
            }
        }
    }
    LocalWrite {
        state,
        counter_bases,
    }
}

/// A row change as it arrives from another origin.
#[derive(Debug, Clone, Copy)]
pub struct RemoteChange<'a> {
    pub op: RowOp,
    pub before: Option<&'a [SqlValue]>,
    pub after: Option<&'a [SqlValue]>,
    /// See [`LocalWrite::counter_bases`].
    pub counter_bases: &'a [(usize, SqlValue)],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub state: RowState,
    pub conflicts: Vec<Conflict>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("a change with {got} values for a table of {want} columns")]
    Width { got: usize, want: usize },
    #[error("an {op} without the row's values")]
    MissingImage { op: &'static str },
    #[error("the custom expression failed: {0}")]
    Custom(String),
}

/// Merges a change made elsewhere (`version`, which had seen `deps`) into a row's state.
/// The caller applies changes in causal order (a change only after its dependencies) and each
/// once; under that, replicas that merged the same changes hold equal states.
pub fn merge_remote(
    state: Option<RowState>,
    change: RemoteChange<'_>,
    version: &Version,
    deps: &VersionVector,
    policies: &TablePolicies,
    resolver: &mut dyn CustomResolver,
) -> Result<Merged, MergeError> {
    let op_name = change.op.as_str();
    let image = match change.op {
        RowOp::Insert | RowOp::Update => change.after,
        RowOp::Delete => change.before,
    }
    .ok_or(MergeError::MissingImage { op: op_name })?;
    let alive_op = change.op != RowOp::Delete;
    let width = image.len();
    let mut state = match (state, change.op) {
        (Some(s), _) => s,
        (None, RowOp::Insert) => RowState::unseen(width),
        // An update or delete of a row this replica never had: the row was there before
        // merge metadata existed.
        (None, _) => RowState::settled(change.before.unwrap_or(image)),
    };
    if state.cells.len() > width {
        return Err(MergeError::Width {
            got: width,
            want: state.cells.len(),
        });
    }
    state.widen(image);
    let mut conflicts = Vec::new();

    if change.op == RowOp::Insert {
        state.note_insert(version);
    }
    // Existence first: a conflict between a delete and an update is about the row.
    let rule = policies.delete;
    if let Some(unseen) = state.existence_write(alive_op, version, deps) {
        let alive = state.alive(rule);
        let (local_values, remote_values) = if alive_op {
            (None, Some(image))
        } else {
            (Some(image), None)
        };
        conflicts.push(row_conflict(
            &unseen,
            local_values,
            version,
            remote_values,
            rule,
            alive,
            alive_op,
        ));
    }

    // Then the columns.
    match change.op {
        RowOp::Insert | RowOp::Update => {
            for (i, value) in image.iter().enumerate() {
                let old = change.before.and_then(|b| b.get(i));
                if change.op == RowOp::Update && old == Some(value) {
                    continue;
                }
                let policy = policies.column(i);
                let base = match change.op {
                    RowOp::Update => old,
                    _ => change
                        .counter_bases
                        .iter()
                        .find(|(c, _)| *c == i)
                        .map(|(_, v)| v),
                };
                let delta = counter_delta(base, Some(value));
                let cell = &mut state.cells[i];
                let before_value = cell.value.clone();
                // Who wrote what this replica showed: the concurrent write whose value it is
                // (with max, min or custom not necessarily the latest one).
                let shown_by: Option<Version> = cell
                    .entries
                    .iter()
                    .rev()
                    .find(|e| e.value == before_value && !e.version.seen_by(deps, version))
                    .map(|e| e.version.clone());
                let met = cell
                    .write_remote(
                        Entry {
                            version: version.clone(),
                            value: value.clone(),
                        },
                        deps,
                        policy,
                        Some(&delta),
                        resolver,
                    )
                    .map_err(MergeError::Custom)?;
                if let Some(mut met) = met {
                    let after = cell.value.clone();
                    // Two writes of the same value (both left a column NULL, say) are no
                    // conflict: nothing to choose between, in any data centre. (Increments of
                    // a counter always add up: each is a change.)
                    if *policy != ColumnPolicy::Counter
                        && met.value == *value
                        && after == before_value
                    {
                        continue;
                    }
                    if let Some(v) = shown_by {
                        met.version = v;
                    }
                    let (is_local, is_remote) = (after == before_value, after == *value);
                    let winner = match (is_local, is_remote) {
                        (true, true) if met.version > *version => Winner::Local,
                        (_, true) => Winner::Remote,
                        (true, false) => Winner::Local,
                        (false, false) => Winner::Merged,
                    };
                    conflicts.push(Conflict {
                        column: Some(i),
                        local: ConflictSide {
                            version: met.version,
                            value: Some(before_value),
                        },
                        remote: ConflictSide {
                            version: version.clone(),
                            value: Some(value.clone()),
                        },
                        policy: policy.name(),
                        winner,
                        value: Some(after),
                        open: *policy == ColumnPolicy::KeepBoth,
                    });
                }
            }
        }
        RowOp::Delete => {
            for (i, old) in image.iter().enumerate() {
                if *policies.column(i) == ColumnPolicy::Counter {
                    state.cells[i].add(&counter_delta(Some(old), None));
                }
            }
        }
    }
    Ok(Merged { state, conflicts })
}

/// A delete that met an update it had not seen, or an update that met such a delete.
fn row_conflict(
    local_version: &Version,
    local_values: Option<&[SqlValue]>,
    remote_version: &Version,
    remote_values: Option<&[SqlValue]>,
    rule: DeleteRule,
    alive: bool,
    remote_is_update: bool,
) -> Conflict {
    let describe = |values: Option<&[SqlValue]>| values.map(|_| SqlValue::Text("updated".into()));
    Conflict {
        column: None,
        local: ConflictSide {
            version: local_version.clone(),
            value: describe(local_values),
        },
        remote: ConflictSide {
            version: remote_version.clone(),
            value: describe(remote_values),
        },
        policy: rule.name(),
        winner: if alive == remote_is_update {
            Winner::Remote
        } else {
            Winner::Local
        },
        value: alive.then(|| SqlValue::Text("updated".into())),
        open: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoCustomResolver;
    use flotilla_types::{Hlc, Lsn, OriginName};

    fn v(origin: &str, lsn: u64, ms: u64) -> Version {
        Version {
            hlc: Hlc::from_parts(ms, 0),
            origin: OriginName::new(origin).unwrap(),
            lsn: Lsn(lsn),
        }
    }

    fn deps(entries: &[(&str, u64)]) -> VersionVector {
        let mut d = VersionVector::new();
        for (o, l) in entries {
            d.advance(&OriginName::new(o).unwrap(), Lsn(*l));
        }
        d
    }

    fn int(i: i64) -> SqlValue {
        SqlValue::Integer(i)
    }

    fn remote<'a>(
        op: RowOp,
        before: Option<&'a [SqlValue]>,
        after: Option<&'a [SqlValue]>,
    ) -> RemoteChange<'a> {
        RemoteChange {
            op,
            before,
            after,
            counter_bases: &[],
        }
    }

    /// `eu` inserted (1, 10) at eu/1; both sides have it.
    fn base(policies: &TablePolicies) -> RowState {
        write_local(
            None,
            RowOp::Insert,
            None,
            Some(&[int(1), int(10)]),
            &v("eu", 1, 100),
            policies,
        )
        .state
    }

    #[test]
    fn concurrent_updates_conflict_and_the_later_wins() {
        let p = TablePolicies::lww(2);
        // Here (us) the value became 20 at us/1, after eu/1.
        let here = write_local(
            Some(base(&p)),
            RowOp::Update,
            Some(&[int(1), int(10)]),
            Some(&[int(1), int(20)]),
            &v("us", 1, 300),
            &p,
        )
        .state;
        // eu changed it to 30 at eu/2 (earlier clock), without having seen us/1.
        let m = merge_remote(
            Some(here),
            remote(
                RowOp::Update,
                Some(&[int(1), int(10)]),
                Some(&[int(1), int(30)]),
            ),
            &v("eu", 2, 200),
            &deps(&[("eu", 1)]),
            &p,
            &mut NoCustomResolver,
        )
        .unwrap();
        assert_eq!(m.state.values(), vec![int(1), int(20)]);
        assert_eq!(m.conflicts.len(), 1);
        let c = &m.conflicts[0];
        assert_eq!(
            (c.column, c.winner, c.open),
            (Some(1), Winner::Local, false)
        );
        assert_eq!(c.remote.value, Some(int(30)));
        // An update that had seen us/1 is no conflict.
        let m2 = merge_remote(
            Some(m.state),
            remote(
                RowOp::Update,
                Some(&[int(1), int(20)]),
                Some(&[int(1), int(40)]),
            ),
            &v("eu", 3, 250),
            &deps(&[("eu", 2), ("us", 1)]),
            &p,
            &mut NoCustomResolver,
        )
        .unwrap();
        assert_eq!(m2.state.values(), vec![int(1), int(40)]);
        assert!(m2.conflicts.is_empty());
    }

    #[test]
    fn a_delete_racing_an_update_follows_the_table_rule() {
        for (rule, alive) in [
            (DeleteRule::DeleteWins, false),
            (DeleteRule::UpdateWins, true),
        ] {
            let p = TablePolicies {
                columns: vec![ColumnPolicy::Lww; 2],
                delete: rule,
            };
            let here = write_local(
                Some(base(&p)),
                RowOp::Delete,
                Some(&[int(1), int(10)]),
                None,
                &v("us", 1, 300),
                &p,
            )
            .state;
            assert!(!here.alive(rule));
            let m = merge_remote(
                Some(here),
                remote(
                    RowOp::Update,
                    Some(&[int(1), int(10)]),
                    Some(&[int(1), int(11)]),
                ),
                &v("eu", 2, 200),
                &deps(&[("eu", 1)]),
                &p,
                &mut NoCustomResolver,
            )
            .unwrap();
            assert_eq!(m.state.alive(rule), alive, "{rule:?}");
            // The update's value is kept either way (shown if the row comes back).
            assert_eq!(m.state.values(), vec![int(1), int(11)]);
            assert_eq!(m.conflicts.len(), 1);
            assert_eq!(m.conflicts[0].column, None);
            assert_eq!(
                m.conflicts[0].winner,
                if alive { Winner::Remote } else { Winner::Local }
            );
        }
    }

    #[test]
    fn keep_both_stays_open_and_counters_add() {
        let p = TablePolicies {
            columns: vec![ColumnPolicy::KeepBoth, ColumnPolicy::Counter],
            delete: DeleteRule::DeleteWins,
        };
        let here = write_local(
            Some(base(&p)),
            RowOp::Update,
            Some(&[int(1), int(10)]),
            Some(&[int(2), int(15)]),
            &v("us", 1, 300),
            &p,
        )
        .state;
        let m = merge_remote(
            Some(here),
            remote(
                RowOp::Update,
                Some(&[int(1), int(10)]),
                Some(&[int(3), int(13)]),
            ),
            &v("eu", 2, 200),
            &deps(&[("eu", 1)]),
            &p,
            &mut NoCustomResolver,
        )
        .unwrap();
        // 10 + 5 (here) + 3 (there).
        assert_eq!(m.state.values(), vec![int(2), int(18)]);
        let open: Vec<_> = m.conflicts.iter().filter(|c| c.open).collect();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].column, Some(0));
        assert_eq!(m.state.cells[0].entries.len(), 2, "both values kept");
    }
}
