//! The document model for the store: [`flotilla_merge::text_doc`], and building a document
//! from what is stored of it.

pub use flotilla_merge::text_doc::*;

use super::StoredDoc;
use yrs::Doc;

/// Merges what is stored of a document (its state, then its updates) into `doc`.
pub fn apply_stored(doc: &Doc, stored: &StoredDoc) -> Result<(), String> {
    apply_updates(doc, stored.state.iter().chain(stored.updates.iter()))
}
