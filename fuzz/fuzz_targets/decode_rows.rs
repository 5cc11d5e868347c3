//! Row payloads (the logical log) from untrusted bytes: an error, never a panic, a hang or an
//! allocation sized by an unchecked count.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = flotilla_wire::decode_rows(data) {
        let again = flotilla_wire::decode_rows(&flotilla_wire::encode_rows(&p)).unwrap();
        assert_eq!(again, p, "decode/encode round trip");
    }
});
