//! Byte fixtures of every format version this crate reads, kept in `fixtures/`. A change to an
//! encoder that alters the bytes of a current version fails here (bump the version, keep the old
//! fixture and its decoding); old versions keep decoding. `FLOTILLA_WRITE_FIXTURES=1 cargo test
//! -p flotilla-wire fixtures` writes a fixture that is missing (never overwrites one).

use crate::cursor::Out;
use crate::record::tests::sample;
use crate::{decode_record, encode_record, FollowerMessage, LeaderMessage, RefusalCode};
use crate::{SnapshotHeader, PROTOCOL_VERSION, RECORD_FORMAT_VERSION, SNAPSHOT_FORMAT_VERSION};
use flotilla_types::{Chain, Epoch, LogKind, Lsn, Position};
use std::path::Path;

/// The fixture `name`; `current` is what this build encodes for it (written when missing and
/// asked to).
fn fixture(name: &str, current: &[u8]) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    if std::env::var_os("FLOTILLA_WRITE_FIXTURES").is_some() && !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, current).unwrap();
    }
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "fixture {} is missing ({e}); FLOTILLA_WRITE_FIXTURES=1 writes it",
            path.display()
        )
    })
}

#[test]
fn the_current_versions_are_the_ones_fixed_here() {
    // A new version gets fixtures of its own: this list says which ones exist.
    assert_eq!((RECORD_FORMAT_VERSION, crate::ROWS_FORMAT_VERSION), (2, 1));
    assert_eq!((PROTOCOL_VERSION, SNAPSHOT_FORMAT_VERSION), (3, 1));
}

#[test]
fn record_version_2_with_rows_version_1() {
    let r = sample(7, &[1, 2]);
    let bytes = fixture("record-v2-rows-v1.bin", &encode_record(&r));
    assert_eq!(
        encode_record(&r),
        bytes,
        "the encoding of version 2 changed"
    );
    assert_eq!(decode_record(&bytes).unwrap(), r);
}

#[test]
fn record_version_1_still_decodes() {
    // Written by format version 1 (pages only: one 512-byte page).
    let mut out = Out::default();
    out.u8(1)
        .u8(1)
        .u64(3)
        .u64(1)
        .u64(9)
        .u64(42)
        .u64(5)
        .str16("n1");
    out.u32(512).u32(1).u32(1).u32(1).raw(&[7u8; 512]);
    let bytes = fixture("record-v1.bin", &out.seal());
    let r = decode_record(&bytes).unwrap();
    assert_eq!((r.lsn, r.epoch, r.rows.is_none()), (Lsn(1), Epoch(3), true));
    assert_eq!(r.pages.unwrap().pages[0].data, vec![7u8; 512]);
}

#[test]
fn replication_protocol_version_3() {
    let p = Position::new(3, 41);
    let follower = [
        (
            "hello",
            FollowerMessage::Hello {
                cluster_id: Some("c0ffee".into()),
                follower_id: "f1".into(),
                follower_url: "http://127.0.0.1:4791".into(),
                log_kind: LogKind::Logical,
                position: p,
                chain: Chain(99),
            },
        ),
        (
            "ack",
            FollowerMessage::Ack {
                received: Position::new(3, 44),
                durable: p,
                applied: p,
                now_ms: 1_700_000_000_123,
            },
        ),
    ];
    for (name, msg) in follower {
        let bytes = fixture(&format!("message-v3-{name}.bin"), &msg.encode());
        assert_eq!(msg.encode(), bytes, "the encoding of {name} changed");
        assert_eq!(FollowerMessage::decode(&bytes).unwrap(), msg);
    }
    let leader = [
        (
            "welcome",
            LeaderMessage::Welcome {
                cluster_id: "c0ffee".into(),
                leader_id: "l".into(),
                incarnation: "0123456789abcdef".into(),
                epoch: Epoch(3),
                start_after: Lsn(41),
                head: Position::new(3, 50),
            },
        ),
        ("records", LeaderMessage::Records(vec![sample(42, &[1])])),
        (
            "heartbeat",
            LeaderMessage::Heartbeat {
                head: Position::new(3, 50),
                now_ms: 1_700_000_000_456,
            },
        ),
        (
            "refuse",
            LeaderMessage::Refuse {
                code: RefusalCode::NeedSnapshot,
                message: "the log starts at lsn 60".into(),
            },
        ),
    ];
    for (name, msg) in leader {
        let bytes = fixture(&format!("message-v3-{name}.bin"), &msg.encode());
        assert_eq!(msg.encode(), bytes, "the encoding of {name} changed");
        assert_eq!(LeaderMessage::decode(&bytes).unwrap(), msg);
    }
    // What a physical follower is shipped: a unit with a superseded page left out.
    let unit = [
        encode_record(&sample(42, &[1, 2])),
        encode_record(&sample(43, &[2])),
    ];
    let current = LeaderMessage::encode_physical_unit(&unit).unwrap();
    let bytes = fixture("message-v3-physical-unit.bin", &current);
    assert_eq!(current, bytes, "the encoding of a physical unit changed");
    let LeaderMessage::Records(records) = LeaderMessage::decode(&bytes).unwrap() else {
        panic!("not records");
    };
    let pgnos = crate::physical_unit::tests::page_numbers(&records);
    assert_eq!(pgnos, vec![vec![1], vec![2]]);
}

/// Version 2 differs in what a `Records` message means (a physical follower could split it):
/// a peer speaking it is refused by the version byte, and the error names both versions.
#[test]
fn replication_protocol_version_2_is_refused_by_name() {
    for name in ["hello", "ack"] {
        let bytes = fixture(&format!("message-v2-{name}.bin"), &[]);
        let err = FollowerMessage::decode(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                crate::DecodeError::Version {
                    version: 2,
                    supported: 3,
                    ..
                }
            ),
            "{err}"
        );
    }
    for name in ["welcome", "records", "heartbeat", "refuse"] {
        let bytes = fixture(&format!("message-v2-{name}.bin"), &[]);
        let err = LeaderMessage::decode(&bytes).unwrap_err();
        assert!(
            matches!(err, crate::DecodeError::Version { version: 2, .. }),
            "{err}"
        );
    }
}

#[test]
fn snapshot_header_version_1() {
    let h = SnapshotHeader {
        position: Position::new(3, 41),
        chain: Chain(99),
        cluster_id: "c0ffee".into(),
        page_size: 4096,
        page_count: 12,
    };
    let bytes = fixture("snapshot-header-v1.bin", &h.encode());
    assert_eq!(
        h.encode(),
        bytes,
        "the encoding of the snapshot header changed"
    );
    let (got, len) = SnapshotHeader::decode_prefix(&bytes).unwrap().unwrap();
    assert_eq!((got, len), (h, bytes.len()));
}
