//! Collaborative text documents (Yjs's model, through `yrs`): a document as every node and
//! device builds it, merging updates into one, and a document's first content. Shared by the
//! server (its document tasks, followers, the merge of documents from other data centres and
//! devices) and the device crate, so that all of them build a document alike.
//!
//! A document merges without conflicts by construction (a sequence CRDT): unlike rows, there
//! is nothing to resolve, only updates to merge, in any order, any number of times.

use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, OffsetKind, Options, ReadTxn, StateVector, Text, Transact};

/// The name of the document's text (what stock Yjs clients and editor bindings use).
pub const TEXT_NAME: &str = "text";

/// A document as every Flotilla node and stock Yjs client count positions: in UTF-16 units.
pub fn new_doc() -> Doc {
    Doc::with_options(Options {
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    })
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

/// A document's text and an update to it together, at most: an update that could take the
/// document beyond is refused (what is stored is the text with every commit, and a resync must
/// fit one message).
pub const MAX_DOCUMENT_BYTES: usize = 8 << 20;

/// Writers (Yjs client numbers) one update may bring that the document has not seen. A Yjs
/// client writes as one number (a new one each time a page loads; a device as one); an update
/// from a copy kept offline brings those of its own sessions. Merging concurrent inserts at one
/// place costs the product of their counts: an update forged with 40,000 writers, each
/// inserting at the start, took a minute of CPU to merge the second time.
pub const MAX_NEW_WRITERS_PER_UPDATE: usize = 64;

/// Merges updates (v1) into one, as `yrs::merge_updates_v1` does, in pairs: yrs merges many at
/// once by sorting all of them again for each block it writes, which made merging a group
/// commit's thousands of keystrokes most of a busy server's CPU. Pairwise, each round is
/// linear in the blocks, and there are log2(count) rounds.
pub fn merge_updates(updates: &[Vec<u8>]) -> Result<Vec<u8>, String> {
    use yrs::updates::encoder::Encode;
    let mut round: Vec<yrs::Update> = updates
        .iter()
        .map(|u| yrs::Update::decode_v1(u))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("an update to merge is damaged: {e}"))?;
    while round.len() > 1 {
        let mut next = Vec::with_capacity(round.len().div_ceil(2));
        let mut each = round.into_iter();
        while let Some(a) = each.next() {
            next.push(match each.next() {
                Some(b) => yrs::Update::merge_updates([a, b]),
                None => a,
            });
        }
        round = next;
    }
    Ok(round
        .pop()
        .map_or_else(|| yrs::Update::new().encode_v1(), |u| u.encode_v1()))
}

/// The writers (client numbers) `update` holds insertions (`inserted`: its state vector) or
/// deletions of; one may come twice.
pub fn writers<'a>(
    inserted: &'a StateVector,
    update: &'a yrs::Update,
) -> impl Iterator<Item = yrs::block::ClientID> + 'a {
    inserted
        .iter()
        .map(|(c, _)| *c)
        .chain(update.delete_set().client_ids())
}

/// The document's text. No transaction of `doc` may be open (it opens one).
pub fn text_of(doc: &Doc) -> String {
    let text = doc.get_or_insert_text(TEXT_NAME);
    let txn = doc.transact();
    text.get_string(&txn)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::{Arc, Mutex};

    /// Keystrokes of two writers, each one update as the doc's observer reports it.
    fn keystrokes(edits: &[(bool, u16, bool, char)]) -> (Vec<Vec<u8>>, String) {
        let server = new_doc();
        let updates: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sink = updates.clone();
        server
            .observe_update_v1("test", move |_, e: &yrs::UpdateEvent| {
                sink.lock().unwrap().push(e.update.clone())
            })
            .unwrap();
        let writers = [new_doc(), new_doc()];
        for &(which, at, delete, ch) in edits {
            let w = &writers[usize::from(which)];
            let t = w.get_or_insert_text(TEXT_NAME);
            let before = w.transact().state_vector();
            {
                let mut txn = w.transact_mut();
                let len = t.len(&txn);
                let at = u32::from(at) % (len + 1);
                if delete && at < len {
                    t.remove_range(&mut txn, at, 1);
                } else {
                    t.insert(&mut txn, at, &ch.to_string());
                }
            }
            let u = w.transact().encode_diff_v1(&before);
            apply_updates(&server, [&u]).unwrap();
            // The other writer hears of it now and then (edits concurrent in between).
            if at % 3 == 0 {
                let other = &writers[usize::from(!which)];
                apply_updates(other, [&u]).unwrap();
            }
        }
        let merged = updates.lock().unwrap().clone();
        (merged, text_of(&server))
    }

    proptest! {
        #[test]
        fn merging_in_pairs_gives_the_same_document(
            edits in prop::collection::vec((any::<bool>(), any::<u16>(), any::<bool>(), prop::char::range('a', 'e')), 0..300),
        ) {
            let (updates, text) = keystrokes(&edits);
            let merged = merge_updates(&updates).unwrap();
            let d = new_doc();
            apply_updates(&d, [&merged]).unwrap();
            prop_assert_eq!(text_of(&d), text);
            // And the same as yrs's own merge, byte for byte of the state it makes.
            let theirs = yrs::merge_updates_v1(updates.iter().map(Vec::as_slice)).unwrap();
            let e = new_doc();
            apply_updates(&e, [&theirs]).unwrap();
            prop_assert_eq!(
                d.transact().state_vector(),
                e.transact().state_vector()
            );
        }
    }

    #[test]
    fn a_damaged_update_is_named_and_none_merge_to_an_empty_one() {
        assert!(merge_updates(&[vec![0xff, 0xff]])
            .unwrap_err()
            .contains("damaged"));
        let empty = merge_updates(&[]).unwrap();
        let d = new_doc();
        apply_updates(&d, [&empty]).unwrap();
        assert_eq!(text_of(&d), "");
    }
}
