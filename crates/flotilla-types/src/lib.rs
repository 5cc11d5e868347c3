//! Flotilla's vocabulary: the values every other crate talks in.
//!
//! Nothing here does IO, reads a clock or spawns a thread; it is shared by the sans-IO core,
//! the node runtime, the simulator and the client.

#![forbid(unsafe_code)]

mod access;
mod chain;
mod durability;
mod exchange_stamp;
mod hlc;
mod ids;
mod pipeline;
mod position;
mod record;
mod rows;
pub mod sync_protocol;
mod version_vector;

pub use access::{AccessRole, AccessRoleParseError};
pub use chain::{Chain, ContentDigest};
pub use durability::{Durability, DurabilityParseError};
pub use exchange_stamp::{CounterBase, ExchangeStamp};
pub use hlc::{Hlc, HlcDrift};
pub use ids::{ClusterId, IdError, NodeId};
pub use pipeline::{
    split_assignment, Computed, InvalidPipeline, PipelineSpec, PipelineTarget, Rename,
    PIPELINE_FORMAT_VERSION,
};
pub use position::{Epoch, Lsn, Position, PositionParseError};
pub use record::{LogKind, LogKindParseError, LogRecord, Page, PagePayload};
pub use rows::{
    rowid_alias, DdlKind, RowChange, RowItem, RowOp, RowPayload, SchemaChange, SqlValue, TableShape,
};
pub use version_vector::{OriginName, VersionVector};
