//! What a transaction carries between data centres (multi-leader) and devices, beside its row
//! changes: where it was first committed, when, and what its origin had applied then.

use crate::{Hlc, Lsn, OriginName, RowPayload, SqlValue, VersionVector};

/// Invariants (checked by the decoder): `counter_bases` name changes of the transaction's
/// original payload (`item` indexes its items, `column` a column of that change's table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeStamp {
    /// The data centre (or device) where the transaction was first committed.
    pub origin: OriginName,
    /// Its position in the origin's log (the version vectors count these).
    pub origin_lsn: Lsn,
    pub hlc: Hlc,
    /// What the origin had applied of every other origin when it committed (and its own
    /// previous transactions): a replica applies the transaction only after these.
    pub deps: VersionVector,
    /// For inserts that brought back a deleted row whose counter columns were not zero in the
    /// origin's merge state: `(item, column, value)`. Other replicas add `after - value`.
    pub counter_bases: Vec<CounterBase>,
    /// The row changes as made at the origin, when the record's own row section differs: a
    /// transaction merged here from elsewhere has, in its row section, what the merge changed
    /// here, and passes the original on (star and ring topologies).
    pub original: Option<RowPayload>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterBase {
    pub item: u32,
    pub column: u16,
    pub value: SqlValue,
}
