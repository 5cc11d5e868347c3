//! The collaborative editor page (docs/collab.md): `/edit/TABLE/KEY/COLUMN` opens a row's
//! document in CodeMirror 6, bound to it over the y-websocket protocol (`/v1/collab/...`).
//! Static assets built from `web/collab` (`npm run build` there) and embedded in the binary,
//! so the Rust build needs no npm. The page holds nothing of the server's (the document comes
//! through the WebSocket, which checks the token), so it is served to anyone, with a content
//! security policy that lets only its own script run and connect to its own origin.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;

const INDEX: &[u8] = include_bytes!("../../assets/edit/index.html");
const APP: &[u8] = include_bytes!("../../assets/edit/app.js");

/// CodeMirror adds its styles at run time (inline style elements).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'";

/// Whether `path` is the page's (served without a token).
pub fn is_page(path: &str) -> bool {
    path.starts_with("/edit/") || path == "/favicon.ico"
}

/// `GET /favicon.ico`, which browsers ask for on their own: none, rather than a refusal (a
/// 401 with authentication on) logged in the page's console.
pub async fn no_icon() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// `GET /edit/app.js`.
pub async fn app() -> Response {
    file(APP, "text/javascript; charset=utf-8")
}

/// `GET /edit/TABLE/KEY/COLUMN`: the page; its script reads the address from the path.
pub async fn page(Path((_table, _key, _column)): Path<(String, String, String)>) -> Response {
    file(INDEX, "text/html; charset=utf-8")
}

fn file(bytes: &'static [u8], kind: &'static str) -> Response {
    super::web::static_file(bytes, kind, CSP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_script_are_embedded() {
        assert!(INDEX.starts_with(b"<!doctype html>"));
        assert!(std::str::from_utf8(INDEX).unwrap().contains("/edit/app.js"));
        assert!(APP.len() > 10_000, "app.js is {} bytes", APP.len());
        assert!(is_page("/edit/notes/1/body") && !is_page("/editor") && !is_page("/v1/collab/x"));
    }
}
