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
    let bytes = json_bytes(headers, body, limit).await?;
    Ok((super::decode::decode_json(&bytes)?, bytes))
}

/// A JSON request's body, as bytes: its Content-Type checked and its size bounded.
pub async fn json_bytes(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
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
    Ok(bytes)
}
