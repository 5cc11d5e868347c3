//! What arrives over HTTP from anyone: request bodies of `/v1/execute` and `/v1/query`, the
//! `Authorization` header's token, the role an arbitrary path needs. Nothing may panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flotilla_node::api::decode::decode_execute(data, 10_000);
    let _ = flotilla_node::api::decode::decode_query(data, 10_000);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(t) = flotilla_node::auth::TokenText::parse(text) {
            // A parsed token prints back as itself.
            assert_eq!(
                flotilla_node::auth::TokenText::parse(&t.to_string()),
                Some(t)
            );
        }
        let _ = text.parse::<flotilla_types::Position>();
        for method in [axum::http::Method::GET, axum::http::Method::POST] {
            let _ = flotilla_node::auth::required_role(&method, text);
        }
    }
});
