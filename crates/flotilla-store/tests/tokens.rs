//! API tokens live in the database: made and revoked on the leader, present on a physical
//! follower (its pages) and on a logical follower (the one internal table the logical log
//! carries), whatever the follower's filter.

mod common;

use flotilla_store::*;
use flotilla_types::{AccessRole, Epoch, LogKind, Lsn, NodeId};
use std::path::Path;

fn origin() -> NodeId {
    NodeId::new("l").unwrap()
}

fn token(id: &str, role: AccessRole) -> StoredToken {
    StoredToken {
        id: id.into(),
        name: format!("token {id}"),
        role,
        hash: vec![7; 32],
        created_ms: 5,
        revoked_ms: None,
    }
}

fn logical(out: &CommitOutcome) -> flotilla_types::LogRecord {
    let rec = out.record.as_ref().expect("committed");
    let bytes = flotilla_wire::encode_record_with_rows(rec, Some(&out.encoded_rows));
    let shipped = flotilla_wire::project_record(&bytes, LogKind::Logical).unwrap();
    flotilla_wire::decode_record(&shipped).unwrap()
}

#[test]
fn tokens_reach_every_kind_of_replica() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let (mut db, _) = LeaderDb::open(&lp, &DbSettings::default(), || "ab".repeat(16)).unwrap();
    db.uncaptured(Lsn(0), &origin()).unwrap();
    db.commit_batch(
        &[common::req(&[("CREATE TABLE t(x)", vec![])])],
        Epoch(1),
        &origin(),
        1,
    )
    .unwrap();
    let first = db
        .add_token(&token("aaaa", AccessRole::Admin), Epoch(1), &origin(), 1)
        .unwrap();
    assert!(first.record.is_some());
    // A logical follower built now, filtered to `t`, and one built before any token.
    let snap = dir.path().join("snap.db");
    common::snapshot(&lp, &snap);
    let filter = RowFilter::parse(&["t".to_string()], &[], &[]).unwrap();
    let open = |path: &Path, filter: &RowFilter| common::logical_replica(&snap, path, filter);
    let mut filtered = open(&dir.path().join("filtered.db"), &filter);
    assert_eq!(
        read_tokens(&open_reader(&dir.path().join("filtered.db")).unwrap()).unwrap(),
        vec![token("aaaa", AccessRole::Admin)]
    );
    let second = db
        .add_token(&token("bbbb", AccessRole::Read), Epoch(1), &origin(), 1)
        .unwrap();
    let revoked = db.revoke_token("aaaa", 99, Epoch(1), &origin(), 1).unwrap();
    filtered
        .apply(&[logical(&second), logical(&revoked)])
        .unwrap();
    let mut expected = vec![
        token("aaaa", AccessRole::Admin),
        token("bbbb", AccessRole::Read),
    ];
    expected[0].revoked_ms = Some(99);
    assert_eq!(read_tokens(&open_reader(&lp).unwrap()).unwrap(), expected);
    assert_eq!(
        read_tokens(&open_reader(&dir.path().join("filtered.db")).unwrap()).unwrap(),
        expected
    );
    // Bad requests change nothing.
    let dup = db.add_token(&token("bbbb", AccessRole::Write), Epoch(1), &origin(), 1);
    assert!(dup.unwrap_err().to_string().contains("exists already"));
    let unknown = db.revoke_token("zzzz", 1, Epoch(1), &origin(), 1);
    assert!(matches!(unknown, Err(TokenError::Unknown(_))));
    assert_eq!(read_tokens(&open_reader(&lp).unwrap()).unwrap(), expected);
    // Clients cannot touch the table.
    let out = db
        .commit_batch(
            &[common::req(&[(
                "UPDATE _flotilla_tokens SET role = 'admin'",
                vec![],
            )])],
            Epoch(1),
            &origin(),
            1,
        )
        .unwrap();
    assert!(matches!(
        out.outcomes[0],
        RequestOutcome::Failed {
            kind: FailureKind::Refused,
            ..
        }
    ));
}
