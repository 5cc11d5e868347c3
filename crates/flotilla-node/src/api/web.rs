//! The calendar web page (docs/devices.md, "The calendar in a browser"): static assets built
//! from `web/device` (`npm run build` there) and embedded in the binary, so the Rust build
//! needs no npm. The page holds no data of the server's: its meetings live in the browser's
//! own SQLite database and reach the server through `/v1/sync` with a device token; a service
//! worker (`sw.js`) keeps the files so the page opens offline. Served
//! to anyone (a browser's navigation carries no token), with a content security policy that
//! lets only the page's own scripts run.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use crate::api_error::ApiError;

/// The page's files: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../assets/calendar/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/calendar/app.js"),
    ),
    (
        "device-worker.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/calendar/device-worker.js"),
    ),
    (
        "device-worker.js.LEGAL.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../../assets/calendar/device-worker.js.LEGAL.txt"),
    ),
    (
        "sw.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/calendar/sw.js"),
    ),
    (
        "sqlite3.wasm",
        "application/wasm",
        include_bytes!("../../assets/calendar/sqlite3.wasm"),
    ),
];

/// Scripts, the worker, the WebAssembly module and requests: the page's own origin only.
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
                   worker-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Whether `path` is the page's (served without a token).
pub fn is_page(path: &str) -> bool {
    path == "/calendar" || path.starts_with("/calendar/")
}

pub async fn calendar_root() -> Redirect {
    Redirect::permanent("/calendar/")
}

pub async fn calendar_index() -> Response {
    asset("index.html")
}

pub async fn calendar_file(Path(name): Path<String>) -> Response {
    asset(&name)
}

fn asset(name: &str) -> Response {
    let Some((_, kind, bytes)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("the calendar page has no file {name:?}"),
        )
        .into_response();
    };
    static_file(bytes, kind, CSP)
}

/// An embedded page file, with its content security policy. The page changes with the binary:
/// a browser asks again each time (cheap, loopback or LAN).
pub fn static_file(bytes: &'static [u8], kind: &'static str, csp: &'static str) -> Response {
    let mut resp = (StatusCode::OK, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_file_is_embedded_and_typed() {
        for name in [
            "index.html",
            "app.js",
            "device-worker.js",
            "sw.js",
            "sqlite3.wasm",
        ] {
            let (_, _, bytes) = ASSETS.iter().find(|(n, _, _)| *n == name).unwrap();
            assert!(!bytes.is_empty(), "{name} is empty");
        }
        let wasm = ASSETS
            .iter()
            .find(|(n, _, _)| *n == "sqlite3.wasm")
            .unwrap();
        assert_eq!(&wasm.2[..4], b"\0asm", "sqlite3.wasm is not WebAssembly");
        assert!(is_page("/calendar/") && is_page("/calendar") && !is_page("/calendarx"));
        assert_eq!(asset("../admin.token").status(), StatusCode::NOT_FOUND);
    }
}
