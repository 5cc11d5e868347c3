//! The snapshot stream's header from untrusted bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flotilla_wire::SnapshotHeader::decode_prefix(data);
    let mut b = flotilla_wire::SNAPSHOT_MAGIC.to_vec();
    b.push(flotilla_wire::SNAPSHOT_FORMAT_VERSION);
    b.extend_from_slice(data);
    if let Ok(Some((h, _))) = flotilla_wire::SnapshotHeader::decode_prefix(&b) {
        assert_eq!(
            flotilla_wire::SnapshotHeader::decode_prefix(&h.encode()).unwrap().unwrap().0,
            h
        );
    }
});
