//! Collaborative documents in the devices simulation (`cargo sim --devices`): `items.body` is
//! a collaborative column; devices edit its documents offline (`Device::edit_text`), the
//! server's editors edit them too (stored as the leader's document task stores an edit), and
//! every sync exchanges their updates through the store's protocol code, with the transfer
//! faults of the simulation (lost requests and answers, old requests replayed).
//!
//! Invariants, once the faults stop and every device synced: each device's rows show the same
//! text as the server's, and the server's row holds its document's text.

use anyhow::Context;
use flotilla_store::collab::{self, crdt, crdt::text_of, DocWrite};
use flotilla_store::LeaderDb;
use flotilla_types::{Epoch, NodeId};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use yrs::{ReadTxn, StateVector, Text, Transact};

/// The column whose rows hold documents.
pub const TABLE: &str = "items";
pub const COLUMN: &str = "body";

/// An edit anywhere in a text of `len` UTF-16 units: (at, delete, insert). Inserts carry the
/// step, so a text shows whose edits reached it.
pub fn random_edit(rng: &mut ChaCha8Rng, len: u32, mark: &str) -> (u32, u32, String) {
    let at = rng.random_range(0..=len);
    let delete = if rng.random_bool(0.3) {
        rng.random_range(0..=(len - at).min(4))
    } else {
        0
    };
    (at, delete, mark.to_string())
}

/// A document as the server stores it, built as a document task opens it.
fn server_doc(
    reader: &rusqlite::Connection,
    id: &str,
) -> anyhow::Result<Option<(yrs::Doc, collab::ResolvedDoc, collab::StoredDoc)>> {
    let doc = match collab::resolve_doc(reader, TABLE, id, COLUMN) {
        Ok(d) => d,
        Err(collab::CollabError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let stored = collab::load_doc(reader, &doc)?;
    let y = crdt::new_doc();
    crdt::apply_stored(&y, &stored).map_err(anyhow::Error::msg)?;
    let empty = stored.state.is_none() && stored.updates.is_empty();
    if empty && !doc.text.is_empty() {
        crdt::apply_updates(&y, [&crdt::first_content(&doc.address(), &doc.text)])
            .map_err(anyhow::Error::msg)?;
    }
    Ok(Some((y, doc, stored)))
}

/// An editor on the server edits row `id`'s document: stored as the leader's document task
/// stores one (the update, the row's text). `None`: no such row.
pub fn server_edit(
    db: &mut LeaderDb,
    reader: &rusqlite::Connection,
    node: &NodeId,
    now_us: u64,
    id: &str,
    rng: &mut ChaCha8Rng,
    mark: &str,
) -> anyhow::Result<Option<flotilla_store::CommitOutcome>> {
    let Some((y, doc, stored)) = server_doc(reader, id)? else {
        return Ok(None);
    };
    let empty = stored.state.is_none() && stored.updates.is_empty();
    let before = if empty {
        StateVector::default()
    } else {
        y.transact().state_vector()
    };
    let text = y.get_or_insert_text(crdt::TEXT_NAME);
    {
        let mut txn = y.transact_mut();
        let (at, delete, insert) = random_edit(rng, text.len(&txn), mark);
        if delete > 0 {
            text.remove_range(&mut txn, at, delete);
        }
        text.insert(&mut txn, at, &insert);
    }
    // Separate statements: a read transaction held while text_of opens a write one would
    // wait for itself.
    let update = y.transact().encode_diff_v1(&before);
    let write = DocWrite {
        update,
        text: text_of(&y),
        compacted: None,
        base_seq: stored.last_seq,
    };
    let (_, out) = db.write_collab_doc(&doc, &write, Epoch(1), node, now_us)?;
    Ok(Some(out))
}

/// The server's row `id` holds its document's text: that text (`None`: no such row).
pub fn server_text(reader: &rusqlite::Connection, id: &str) -> anyhow::Result<Option<String>> {
    let Some((y, doc, _)) = server_doc(reader, id)? else {
        return Ok(None);
    };
    let text = text_of(&y);
    anyhow::ensure!(
        doc.text == text,
        "the server's row {id} holds {:?}, its document {text:?}",
        doc.text
    );
    Ok(Some(text))
}

/// A device's text of row `id` (`None`: it has no such row).
pub fn device_text(d: &flotilla_device::Device, id: &str) -> anyhow::Result<Option<String>> {
    use rusqlite::OptionalExtension;
    d.connection()
        .query_row(
            &format!("SELECT coalesce({COLUMN}, '') FROM {TABLE} WHERE id = ?1"),
            [id],
            |r| r.get(0),
        )
        .optional()
        .context("reading a device's text")
}
