use crate::value_order::{compare_values, counter_add};
use crate::{ColumnPolicy, CustomResolver, Version};
use flotilla_types::{SqlValue, VersionVector};
use std::cmp::Ordering;

/// A write still standing in a column's register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub version: Version,
    pub value: SqlValue,
}

/// One column of one row: its register and its visible value.
///
/// Invariants: `entries` is sorted by version and holds no two writes of which one saw the
/// other (they are pairwise concurrent); at most one per origin. `value` is the policy applied
/// to `entries`, or for a counter the sum of every increment applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub entries: Vec<Entry>,
    pub value: SqlValue,
}

impl Cell {
    /// A column as it was before merge metadata existed (or a fresh, never written one).
    pub fn settled(value: SqlValue) -> Cell {
        Cell {
            entries: vec![Entry {
                version: Version::zero(),
                value: value.clone(),
            }],
            value,
        }
    }

    pub(crate) fn empty() -> Cell {
        Cell {
            entries: Vec::new(),
            value: SqlValue::Null,
        }
    }

    /// The latest entry (the one `lww` shows).
    pub fn latest(&self) -> Option<&Entry> {
        self.entries.last()
    }

    /// A write made here, after everything this replica has: it replaces the register.
    pub(crate) fn write_local(
        &mut self,
        entry: Entry,
        policy: &ColumnPolicy,
        delta: Option<&SqlValue>,
    ) {
        self.value = match (policy, delta) {
            (ColumnPolicy::Counter, Some(d)) => counter_add(&self.value, d),
            _ => entry.value.clone(),
        };
        self.entries = vec![entry];
    }

    /// A write that arrives from elsewhere with dependencies `deps`. Returns the concurrent
    /// write it met (the latest one), if any: a conflict.
    pub(crate) fn write_remote(
        &mut self,
        entry: Entry,
        deps: &VersionVector,
        policy: &ColumnPolicy,
        delta: Option<&SqlValue>,
        resolver: &mut dyn CustomResolver,
    ) -> Result<Option<Entry>, String> {
        self.entries
            .retain(|e| !e.version.seen_by(deps, &entry.version));
        let met = self.entries.last().cloned();
        let at = self
            .entries
            .binary_search_by(|e| e.version.cmp(&entry.version))
            .unwrap_or_else(|i| i);
        self.entries.insert(at, entry);
        self.value = match policy {
            ColumnPolicy::Counter => match delta {
                Some(d) => counter_add(&self.value, d),
                None => self.value.clone(),
            },
            _ => resolve(&self.entries, policy, resolver)?,
        };
        Ok(met)
    }

    /// A counter's increment that comes without a new value for the register (a delete).
    pub(crate) fn add(&mut self, delta: &SqlValue) {
        self.value = counter_add(&self.value, delta);
    }
}

/// The visible value of a register under a (non-counter) policy.
fn resolve(
    entries: &[Entry],
    policy: &ColumnPolicy,
    resolver: &mut dyn CustomResolver,
) -> Result<SqlValue, String> {
    let Some(latest) = entries.last() else {
        return Ok(SqlValue::Null);
    };
    Ok(match policy {
        ColumnPolicy::Lww | ColumnPolicy::KeepBoth | ColumnPolicy::Counter => latest.value.clone(),
        // Ties go to the later version (entries ascend, so `>=` / `<=` keeps the last).
        ColumnPolicy::Max => pick(entries, Ordering::Greater),
        ColumnPolicy::Min => pick(entries, Ordering::Less),
        // An expression that fails on these values (an error, not a result: `json()` of text
        // that is not JSON) leaves the latest write, as `lww` would: the same in every data
        // centre, since the expression is deterministic — rather than a merge that can never
        // complete, holding back everything after it.
        ColumnPolicy::Custom(expr) => {
            let mut acc = entries[0].value.clone();
            for e in &entries[1..] {
                match resolver.resolve(expr, &acc, &e.value) {
                    Ok(v) => acc = v,
                    Err(_) => return Ok(latest.value.clone()),
                }
            }
            acc
        }
    })
}

fn pick(entries: &[Entry], want: Ordering) -> SqlValue {
    let mut best = &entries[0].value;
    for e in &entries[1..] {
        let o = compare_values(&e.value, best);
        if o == want || o == Ordering::Equal {
            best = &e.value;
        }
    }
    best.clone()
}
