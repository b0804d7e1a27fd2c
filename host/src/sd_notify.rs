//! systemd's readiness protocol (`sd_notify(3)`), in a few lines of std: one datagram of
//! `KEY=VALUE` lines to the `AF_UNIX` socket named by `$NOTIFY_SOCKET` (a path, or `@name` in
//! the abstract namespace). Without the variable (not started by systemd with `Type=notify`)
//! every call does nothing.
//!
//! Why not the `sd-notify` crate: this is all of it that `serve` uses (`READY=1`,
//! `STOPPING=1`, `STATUS=`), without a dependency. `packaging/sdci-host.service` has
//! `Type=notify` and `NotifyAccess=main`, so only this process's own datagrams count.
//!
//! Invariant: never fails the caller; a send error is logged once at debug level.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to `socket` (a path, or `@name`
/// for the abstract namespace).
pub fn notify_to(socket: &str, state: &str) -> std::io::Result<()> {
    let addr = if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())?
    } else {
        SocketAddr::from_pathname(socket)?
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// Sends `state` to `$NOTIFY_SOCKET` when it is set; `true` if it was sent.
pub fn notify(state: &str) -> bool {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    match notify_to(&socket.to_string_lossy(), state) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "sd_notify failed");
            false
        }
    }
}

/// The service is ready: called once the HTTP listener is bound (webhooks are accepted).
pub fn ready() -> bool {
    notify(&format!("READY=1\nMAINPID={}", std::process::id()))
}

/// The service is shutting down (graceful drain after `SIGTERM`).
pub fn stopping() -> bool {
    notify("STOPPING=1")
}

/// A one-line status shown by `systemctl status` (newlines replaced).
pub fn status(text: &str) -> bool {
    notify(&format!("STATUS={}", text.replace('\n', " ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_one_datagram_on_a_path_socket() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind the socket");
        notify_to(&path.to_string_lossy(), "READY=1").expect("sent");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn an_abstract_socket_is_named_with_an_at_sign() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sdci-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("an abstract name");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind");
        notify_to(&format!("@{name}"), "STOPPING=1").expect("sent");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        assert!(notify_to("/nonexistent/sdci/notify", "READY=1").is_err());
    }
}
