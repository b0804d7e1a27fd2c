//! Git over smart HTTP in the stand-in, served by the real `git http-backend` (CGI), so clients
//! get what github.com gives them: protocol v2 (from the `Git-Protocol` header), shallow
//! fetches, and a fetch of one commit by its sha (`uploadpack.allowReachableSHA1InWant`,
//! `allowAnySHA1InWant`, as GitHub allows).
//!
//! Invariants:
//! - Read only: `git-receive-pack` (a push) is refused with `403` before any process starts.
//! - Bounded: the request body is capped by the stand-in ([`MAX_BODY`]); the backend's answer
//!   must start within [`HEADER_TIMEOUT`] and end within [`TIMEOUT`], or the child is killed;
//!   the child is killed as soon as the response is dropped (a client that hangs up).
//! - The backend sees only the CGI variables, `PATH`, and its own configuration (no system or
//!   global git config, `HOME` pointing nowhere useful), so the machine's settings cannot change
//!   what the tests see.
//! - Authentication stays the stand-in's (Basic with a token that may read contents, checked
//!   before this module runs); `REMOTE_USER` is the Basic user name, as a web server would set.

use axum::body::{Body, Bytes};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest request body taken (an upload-pack request lists wants and haves: kilobytes).
pub const MAX_BODY: usize = 16 << 20;
/// How long the backend may take to start answering.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one request may take in all (a full clone of an SDW-sized repository takes
/// seconds).
pub const TIMEOUT: Duration = Duration::from_secs(600);

/// One git request, as the stand-in routed it.
pub(super) struct GitRequest {
    pub git_dir: PathBuf,
    /// The path below `/{owner}/{repo}.git`, e.g. `/info/refs`, `/git-upload-pack`.
    pub path_info: String,
    pub method: String,
    pub query: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub git_protocol: Option<String>,
    pub remote_user: String,
    pub body: Bytes,
}

/// What a fetch asked for, read from an upload-pack request body (protocol v2 `fetch` or v0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchRequest {
    pub wants: Vec<String>,
    /// `deepen N` (a shallow fetch), if any.
    pub deepen: Option<u32>,
    /// `filter …` (a partial clone), if any.
    pub filter: Option<String>,
}

/// Reads the pkt-lines of an (uncompressed) upload-pack request; `None` when it is not one.
pub fn parse_fetch(body: &[u8]) -> Option<FetchRequest> {
    let mut req = FetchRequest::default();
    let mut rest = body;
    while rest.len() >= 4 {
        let len = usize::from_str_radix(std::str::from_utf8(&rest[..4]).ok()?, 16).ok()?;
        if len < 4 {
            // flush (0000), delimiter (0001), response-end (0002)
            rest = &rest[4..];
            continue;
        }
        let line = rest.get(4..len)?;
        rest = &rest[len..];
        let line = std::str::from_utf8(line).ok()?.trim_end_matches('\n');
        if let Some(w) = line.strip_prefix("want ") {
            // v0 puts capabilities after the first want's oid
            req.wants
                .push(w.split_whitespace().next().unwrap_or("").to_owned());
        } else if let Some(d) = line.strip_prefix("deepen ") {
            req.deepen = d.trim().parse().ok();
        } else if let Some(f) = line.strip_prefix("filter ") {
            req.filter = Some(f.to_owned());
        }
    }
    (!req.wants.is_empty()).then_some(req)
}

fn plain(status: StatusCode, text: &str) -> Response {
    (status, text.to_owned()).into_response()
}

/// Runs `git http-backend` for one request and streams its answer; every byte of the answer's
/// body is added to `sent`.
pub(super) async fn serve(req: GitRequest, sent: Vec<Arc<AtomicU64>>) -> Response {
    let service = req
        .query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("service=")));
    if service == Some("git-receive-pack") || req.path_info.ends_with("/git-receive-pack") {
        return plain(
            StatusCode::FORBIDDEN,
            "Write access to repository not granted.",
        );
    }
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", "/nonexistent")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", &req.git_dir)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", &req.path_info)
        .env("QUERY_STRING", req.query.as_deref().unwrap_or(""))
        .env("REQUEST_METHOD", &req.method)
        .env("REMOTE_USER", &req.remote_user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", req.body.len().to_string())
        .env("GIT_HTTP_MAX_REQUEST_BUFFER", MAX_BODY.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let config = [
        ("uploadpack.allowReachableSHA1InWant", "true"),
        ("uploadpack.allowAnySHA1InWant", "true"),
        ("uploadpack.allowFilter", "true"),
        ("safe.directory", "*"),
    ];
    cmd.env("GIT_CONFIG_COUNT", config.len().to_string());
    for (i, (k, v)) in config.iter().enumerate() {
        cmd.env(format!("GIT_CONFIG_KEY_{i}"), k)
            .env(format!("GIT_CONFIG_VALUE_{i}"), v);
    }
    if let Some(ct) = &req.content_type {
        cmd.env("CONTENT_TYPE", ct);
    }
    if let Some(ce) = &req.content_encoding {
        cmd.env("HTTP_CONTENT_ENCODING", ce);
    }
    if let Some(p) = &req.git_protocol {
        cmd.env("GIT_PROTOCOL", p);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("git http-backend cannot start: {e}"),
            )
        }
    };
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "git http-backend: no pipes",
        );
    };
    let body = req.body;
    tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
        let _ = stdin.shutdown().await;
    });
    tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        if !text.trim().is_empty() {
            eprintln!("GitHub stand-in: git http-backend: {}", text.trim_end());
        }
    });
    // The watchdog owns the child: it kills it at the deadline, or as soon as the response's
    // stream is dropped (its sender goes away), whichever comes first.
    let (alive, gone) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            _ = child.wait() => {}
            _ = gone => { let _ = child.kill().await; }
            _ = tokio::time::sleep(TIMEOUT) => {
                eprintln!("GitHub stand-in: git http-backend killed after {TIMEOUT:?}");
                let _ = child.kill().await;
            }
        }
    });
    // CGI headers, up to the blank line.
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let split = loop {
        if let Some(at) = find_blank_line(&head) {
            break at;
        }
        let n = match tokio::time::timeout(HEADER_TIMEOUT, stdout.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return plain(StatusCode::BAD_GATEWAY, &format!("git http-backend: {e}")),
            Err(_) => return plain(StatusCode::GATEWAY_TIMEOUT, "git http-backend timed out"),
        };
        if n == 0 || head.len() > 64 << 10 {
            return plain(
                StatusCode::BAD_GATEWAY,
                "git http-backend gave no CGI headers",
            );
        }
        head.extend_from_slice(&buf[..n]);
    };
    let (header_end, body_start) = split;
    let first_body = head.split_off(body_start);
    head.truncate(header_end);
    let mut status = StatusCode::OK;
    let mut headers = Vec::new();
    for line in String::from_utf8_lossy(&head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
        } else if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.push((n, v));
        }
    }
    let count = |n: usize| {
        for c in &sent {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    count(first_body.len());
    let first = (!first_body.is_empty()).then(|| Ok::<_, std::io::Error>(Bytes::from(first_body)));
    let rest = futures::stream::unfold(
        (stdout, buf, alive, sent),
        |(mut out, mut buf, alive, sent)| async move {
            match out.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    for c in &sent {
                        c.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    Some((Ok(chunk), (out, buf, alive, sent)))
                }
                Err(e) => Some((Err(e), (out, buf, alive, sent))),
            }
        },
    );
    let stream = futures::StreamExt::chain(futures::stream::iter(first), rest);
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    for (n, v) in headers {
        resp.headers_mut().append(n, v);
    }
    resp
}

/// Where the CGI header block ends: (end of the headers, start of the body).
fn find_blank_line(b: &[u8]) -> Option<(usize, usize)> {
    if let Some(i) = b.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some((i, i + 4));
    }
    b.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shallow_v2_fetch_of_one_sha_is_read_from_its_pkt_lines() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let pkt = |s: &str| format!("{:04x}{s}", s.len() + 4);
        let body = format!(
            "{}{}0001{}{}{}{}0000",
            pkt("command=fetch\n"),
            pkt("agent=git/2.47\n"),
            pkt("thin-pack\n"),
            pkt(&format!("want {sha}\n")),
            pkt("deepen 1\n"),
            pkt("done\n")
        );
        let req = parse_fetch(body.as_bytes()).unwrap();
        assert_eq!(req.wants, [sha]);
        assert_eq!(req.deepen, Some(1));
        assert_eq!(parse_fetch(b"0000"), None);
    }

    #[test]
    fn cgi_headers_end_at_the_first_blank_line() {
        assert_eq!(find_blank_line(b"A: b\r\n\r\nbody"), Some((4, 8)));
        assert_eq!(find_blank_line(b"A: b\n\nbody"), Some((4, 6)));
        assert_eq!(find_blank_line(b"A: b\r\n"), None);
    }
}
