//! The document model (Yjs's, through `yrs`): building a document from what is stored, and
//! its first content. Shared by the leader's document tasks, its followers' and the merge of
//! documents from other data centres and devices, so every node builds a document alike.

use super::StoredDoc;
use yrs::updates::decoder::Decode;
use yrs::{Doc, OffsetKind, Options, ReadTxn, StateVector, Text, Transact};

/// The name of the document's text (what stock Yjs clients and editor bindings use).
pub const TEXT_NAME: &str = "text";

/// A document as every Flotilla node and stock Yjs client count positions: in UTF-16 units.
pub fn new_doc() -> Doc {
    Doc::with_options(Options {
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    })
}

/// Merges what is stored of a document (its state, then its updates) into `doc`.
pub fn apply_stored(doc: &Doc, stored: &StoredDoc) -> Result<(), String> {
    apply_updates(doc, stored.state.iter().chain(stored.updates.iter()))
}

/// Merges updates (Yjs update format v1) into `doc`: a damaged one fails, naming why.
pub fn apply_updates<'a>(
    doc: &Doc,
    updates: impl IntoIterator<Item = &'a Vec<u8>>,
) -> Result<(), String> {
    let mut txn = doc.transact_mut();
    for bytes in updates {
        let update = yrs::Update::decode_v1(bytes)
            .map_err(|e| format!("an update of the document is damaged: {e}"))?;
        txn.apply_update(update)
            .map_err(|e| format!("an update of the document cannot be merged: {e}"))?;
    }
    Ok(())
}

/// The document's first content: the text its row held before the column became
/// collaborative, as an update. Written by a client number derived from the document's
/// address and that text, so that two nodes (two data centres) that start the same document
/// from the same text make the same update (merged once), and from two texts two updates
/// (both kept: neither node's text is lost).
pub fn first_content(address: &str, text: &str) -> Vec<u8> {
    let seed = [address.as_bytes(), b"\0", text.as_bytes()].concat();
    let client = flotilla_types::ContentDigest::of(&seed).0 & 0x7fff_ffff;
    let first = Doc::with_options(Options {
        client_id: yrs::block::ClientID::new(client),
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    });
    let t = first.get_or_insert_text(TEXT_NAME);
    t.insert(&mut first.transact_mut(), 0, text);
    let update = first
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    update
}
