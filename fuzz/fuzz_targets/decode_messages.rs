//! Replication messages from untrusted bytes (both directions).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flotilla_wire::FollowerMessage::decode(data);
    let _ = flotilla_wire::LeaderMessage::decode(data);
    let mut out = flotilla_wire::Out::default();
    out.u8(flotilla_wire::PROTOCOL_VERSION).raw(data);
    let sealed = out.seal();
    if let Ok(m) = flotilla_wire::FollowerMessage::decode(&sealed) {
        assert_eq!(flotilla_wire::FollowerMessage::decode(&m.encode()).unwrap(), m);
    }
    if let Ok(m) = flotilla_wire::LeaderMessage::decode(&sealed) {
        assert_eq!(flotilla_wire::LeaderMessage::decode(&m.encode()).unwrap(), m);
    }
});
