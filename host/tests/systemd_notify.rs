//! `sdci-host serve` under systemd's `Type=notify` (packaging/sdci-host.service): the real binary
//! sends `READY=1` to `$NOTIFY_SOCKET` once its port is bound (here with vSphere unreachable:
//! serve starts degraded), answers `/healthz` by then, and `STOPPING=1` when SIGTERM starts the
//! drain, then exits 0.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a datagram before the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn serve_notifies_ready_once_listening_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let pw = dir.path().join("vsphere-password");
    std::fs::write(&pw, "pw\n").unwrap();
    let extra = format!(
        "[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
         [vsphere]\nurl = \"https://127.0.0.1:9/sdk\"\nuser = \"ci\"\npassword_file = \"{}\"\n",
        pw.display()
    );
    std::fs::write(
        dir.path().join("host.toml"),
        config_text(dir.path(), &listen, &extra),
    )
    .unwrap();
    let socket = dir.path().join("notify");
    let rx = UnixDatagram::bind(&socket).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut child = Command::new(sdci_tests::binary("sdci-host"))
        .arg("--config")
        .arg(dir.path().join("host.toml"))
        .arg("serve")
        .env("NOTIFY_SOCKET", &socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = recv(&rx);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.contains(&format!("MAINPID={}", child.id())),
        "{ready:?}"
    );
    // Ready means the port answers.
    let conn = std::net::TcpStream::connect(&listen);
    assert!(conn.is_ok(), "READY=1 before the port was bound");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let stopping = recv(&rx);
    assert_eq!(stopping, "STOPPING=1");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the drain ends with exit 0");
}
