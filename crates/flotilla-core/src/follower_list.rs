//! The leader's list of known followers as it is persisted (`followers.json`): a follower that is
//! down still holds the log back after a leader restart. Format version 1:
//!
//! ```json
//! { "format_version": 1,
//!   "followers": [ { "id": "f1", "url": "http://…", "log": "physical", "durable_position": "1/42" } ] }
//! ```
//!
//! Encoding and decoding only; the host writes and reads the file.

use crate::follower_tracker::{FollowerProgress, FollowerTracker, SessionState};
use flotilla_types::{LogKind, Position};
use serde::{Deserialize, Serialize};

pub const FOLLOWER_LIST_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    id: String,
    url: String,
    log: LogKind,
    durable_position: Position,
}

#[derive(Serialize)]
struct ListOut<'a> {
    format_version: u32,
    followers: &'a [Entry],
}

#[derive(Deserialize)]
struct ListIn {
    format_version: u32,
    /// Decoded one by one, so that one bad entry costs only itself.
    followers: Vec<serde_json::Value>,
}

/// The list could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FollowerListError {
    #[error("the follower list is not valid JSON of the expected shape: {0}")]
    Malformed(String),
    #[error("the follower list has format version {0}; this build reads version {FOLLOWER_LIST_FORMAT_VERSION}")]
    Version(u32),
}

/// A decoded list: the followers, and what was wrong with entries that were left out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FollowerList {
    pub followers: Vec<FollowerProgress>,
    pub bad_entries: Vec<String>,
}

/// Every known follower with its durable position.
pub fn encode(tracker: &FollowerTracker) -> Vec<u8> {
    let entries: Vec<Entry> = tracker
        .all()
        .map(|f| Entry {
            id: f.id.clone(),
            url: f.url.clone(),
            log: f.log_kind,
            durable_position: f.durable,
        })
        .collect();
    serde_json::to_vec_pretty(&ListOut {
        format_version: FOLLOWER_LIST_FORMAT_VERSION,
        followers: &entries,
    })
    .expect("serialisable")
}

pub fn decode(bytes: &[u8]) -> Result<FollowerList, FollowerListError> {
    let list: ListIn =
        serde_json::from_slice(bytes).map_err(|e| FollowerListError::Malformed(e.to_string()))?;
    if list.format_version != FOLLOWER_LIST_FORMAT_VERSION {
        return Err(FollowerListError::Version(list.format_version));
    }
    let mut out = FollowerList::default();
    for (i, v) in list.followers.into_iter().enumerate() {
        match serde_json::from_value::<Entry>(v) {
            Ok(e) if flotilla_types::NodeId::new(&e.id).is_ok() => {
                out.followers.push(FollowerProgress {
                    id: e.id,
                    url: e.url,
                    log_kind: e.log,
                    state: SessionState::Disconnected,
                    received: e.durable_position,
                    durable: e.durable_position,
                    applied: e.durable_position,
                    last_ack_ms: 0,
                    applied_moved_ms: 0,
                })
            }
            Ok(e) => {
                out.bad_entries
                    .push(format!("entry {}: invalid follower id {:?}", i + 1, e.id))
            }
            Err(e) => out.bad_entries.push(format!("entry {}: {e}", i + 1)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list as version 1 wrote it (`fixtures/followers-v1.json`, the format of the node's
    /// first `followers.json`) still reads.
    #[test]
    fn the_version_1_fixture_reads() {
        assert_eq!(
            FOLLOWER_LIST_FORMAT_VERSION, 1,
            "a new version gets a fixture of its own"
        );
        let list = decode(include_bytes!("../fixtures/followers-v1.json")).unwrap();
        assert!(list.bad_entries.is_empty());
        let ids: Vec<(&str, LogKind, Position)> = list
            .followers
            .iter()
            .map(|f| (f.id.as_str(), f.log_kind, f.durable))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("f1", LogKind::Physical, Position::new(1, 42)),
                ("f2", LogKind::Logical, Position::new(1, 40))
            ]
        );
    }

    #[test]
    fn round_trips_and_reports_bad_entries() {
        let mut t = FollowerTracker::default();
        t.session_opened("a", "http://a", LogKind::Physical, Position::new(1, 5), 0);
        t.session_opened("b", "http://b", LogKind::Logical, Position::new(1, 9), 0);
        let list = decode(&encode(&t)).unwrap();
        assert!(list.bad_entries.is_empty());
        assert_eq!(
            FollowerTracker::new(list.followers).needed_from(),
            Some(6),
            "the slowest still holds the log"
        );

        let damaged = br#"{"format_version": 1, "followers": [
            {"id": "a", "url": "u", "log": "physical", "durable_position": "1/5"},
            {"id": "b", "url": "u", "log": "sideways", "durable_position": "1/5"},
            {"id": "c", "url": "u", "log": "logical", "durable_position": "five"},
            {"id": "bad id", "url": "u", "log": "logical", "durable_position": "1/5"},
            {"url": "u"}
        ]}"#;
        let list = decode(damaged).unwrap();
        assert_eq!(list.followers.len(), 1);
        assert_eq!(list.bad_entries.len(), 4, "{:?}", list.bad_entries);
        assert!(list.bad_entries[0].starts_with("entry 2:"));
        assert!(list.bad_entries[3].contains("missing field"));

        assert_eq!(
            decode(br#"{"format_version": 2, "followers": []}"#),
            Err(FollowerListError::Version(2))
        );
        assert!(matches!(decode(b"{"), Err(FollowerListError::Malformed(_))));
    }
}
