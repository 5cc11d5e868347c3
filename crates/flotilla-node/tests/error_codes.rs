//! docs/api.md lists every error code the API answers with: each code written next to its HTTP
//! status in the sources (`StatusCode::X, "code"`, in calls and in tuples) or given to
//! `ApiError::bad_request("code", …)` must be in its table, with that status.

use std::collections::BTreeSet;
use std::path::Path;

/// The first string literal in `s`, if it comes before the next `)` or `;`.
fn next_literal(s: &str) -> Option<&str> {
    let stop = s.find([')', ';']).unwrap_or(s.len());
    let start = s[..stop].find('"')? + 1;
    let len = s[start..].find('"')?;
    Some(&s[start..start + len])
}

fn status_of(name: &str) -> u16 {
    match name {
        "BAD_REQUEST" => 400,
        "UNAUTHORIZED" => 401,
        "FORBIDDEN" => 403,
        "NOT_FOUND" => 404,
        "METHOD_NOT_ALLOWED" => 405,
        "CONFLICT" => 409,
        "GONE" => 410,
        "PAYLOAD_TOO_LARGE" => 413,
        "MISDIRECTED_REQUEST" => 421,
        "INTERNAL_SERVER_ERROR" => 500,
        "BAD_GATEWAY" => 502,
        "SERVICE_UNAVAILABLE" => 503,
        "GATEWAY_TIMEOUT" => 504,
        other => panic!("status {other}: add it here and to docs/api.md"),
    }
}

fn sources(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(std::fs::read_to_string(&p).unwrap());
        }
    }
}

#[test]
fn every_error_code_is_documented_with_its_status() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let mut found: BTreeSet<(u16, String)> = BTreeSet::new();
    for text in &files {
        for (i, _) in text.match_indices("StatusCode::") {
            let rest = &text[i + "StatusCode::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            let after = rest[name.len()..].trim_start();
            if !after.starts_with(',') {
                continue;
            }
            if let Some(code) = next_literal(&after[1..]).filter(|c| {
                !c.is_empty() && c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')
            }) {
                found.insert((status_of(&name), code.to_string()));
            }
        }
        for (i, _) in text.match_indices("ApiError::bad_request(") {
            if let Some(code) = next_literal(&text[i + "ApiError::bad_request(".len()..]) {
                found.insert((400, code.to_string()));
            }
        }
    }
    assert!(found.len() > 20, "the scan found only {found:?}");
    let doc = std::fs::read_to_string(root.join("../../docs/api.md")).unwrap();
    let table = &doc[doc.find("## Every error code").expect("the section")..];
    let missing: Vec<String> = found
        .iter()
        .filter(|(status, code)| !table.contains(&format!("| {status} | `{code}` |")))
        .map(|(s, c)| format!("{s} {c}"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/api.md's error table lacks: {missing:?}"
    );
}
