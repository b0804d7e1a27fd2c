//! The pages' static files, compiled into the binary from `host/assets/` and served by the host
//! itself (`GET /assets/{name}`): the bastion may have no internet, so nothing comes from a CDN.
//! Each answer carries an `ETag` (a hash of the file), so browsers revalidate cheaply.

use axum::extract::Path as UrlPath;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;

/// (name, content type, bytes).
const FILES: &[(&str, &str, &str)] = &[
    (
        "sdci.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../assets/sdci.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../../assets/style.css"),
    ),
];

fn etags() -> &'static Vec<String> {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        FILES
            .iter()
            .map(|(_, _, body)| {
                let d = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
                format!("\"{}\"", hex::encode(&d.as_ref()[..8]))
            })
            .collect()
    })
}

/// `GET /assets/{name}`.
pub async fn serve(UrlPath(name): UrlPath<String>, headers: HeaderMap) -> Response {
    let Some(i) = FILES.iter().position(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let (_, kind, body) = FILES[i];
    let tag = &etags()[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        body.into_response()
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
    r
}
