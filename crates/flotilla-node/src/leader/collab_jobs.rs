//! The writer's part in collaborative text (docs/collab.md): making a column collaborative,
//! and storing what a document's editors merged, each a commit of its own.

use super::writer::ChangeError;
use flotilla_store::collab::{CollabColumn, DocWrite, DocWritten, ResolvedDoc};
use flotilla_store::{CommitOutcome, LeaderDb};
use flotilla_types::{Epoch, NodeId};
use tokio::sync::oneshot;

#[derive(Debug)]
pub enum CollabChange {
    /// `enabled` hears the column as checked.
    Enable {
        table: String,
        column: String,
        enabled: oneshot::Sender<CollabColumn>,
    },
    /// `written` hears what was stored (before the reply hears the commit's position).
    Write {
        doc: Box<ResolvedDoc>,
        write: DocWrite,
        written: oneshot::Sender<DocWritten>,
    },
}

/// Makes the change: its commit, or why there is none.
pub(super) fn change(
    db: &mut LeaderDb,
    change: CollabChange,
    epoch: Epoch,
    origin: &NodeId,
    now_us: u64,
) -> Result<CommitOutcome, ChangeError> {
    let out = match change {
        CollabChange::Enable {
            table,
            column,
            enabled,
        } => db
            .enable_collab(&table, &column, epoch, origin, now_us)
            .map(|(c, out)| {
                let _ = enabled.send(c);
                out
            }),
        CollabChange::Write {
            doc,
            write,
            written,
        } => db
            .write_collab_doc(&doc, &write, epoch, origin, now_us)
            .map(|(w, out)| {
                let _ = written.send(w);
                out
            }),
    };
    Ok(out?)
}
