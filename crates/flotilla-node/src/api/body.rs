//! Reads a JSON request body with errors that name the problem (instead of a framework's
//! default 415/422 or a bare text body).

use super::ApiError;
use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use serde::de::DeserializeOwned;

pub async fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<(T, Bytes), ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ctype.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::bad_request(
            "bad_content_type",
            if ctype.is_empty() {
                "missing Content-Type: send the body as application/json".to_string()
            } else {
                format!("Content-Type is {ctype:?}: send the body as application/json")
            },
        ));
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::bad_request(
            "body_too_large",
            format!("the request body exceeds the limit of {limit} bytes (api.max-body-kib)"),
        )
    })?;
    let value = serde_json::from_slice(&bytes).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "malformed JSON"
            }
            _ => "invalid request",
        };
        ApiError::bad_request("bad_request", format!("{kind}: {e}"))
    })?;
    Ok((value, bytes))
}
