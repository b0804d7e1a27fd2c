//! `sdci-guestfwd-relay`: carries a libvirt test guest's TCP connections to the host's loopback,
//! so the guest reaches the host's `127.0.0.1:PORT` at its own `127.0.0.1:PORT` and nothing
//! else (`sdci_tests::libvirt_world`). Two halves:
//!
//! - `sdci-guestfwd-relay PORT`, on the host: one connection relayed to `127.0.0.1:PORT`. QEMU's
//!   restricted user network runs it per connection (`guestfwd=tcp:10.0.2.100:PORT-cmd:…`,
//!   `sdci_libvirt::UserNet`) with the guest's connection on stdin and stdout (and stderr:
//!   nothing is ever written there). It can reach nothing but the host's loopback.
//! - `sdci-guestfwd-relay --listen PORT ADDR`, in the guest: accepts on the guest's
//!   `127.0.0.1:PORT` and carries each connection to `ADDR:PORT` (the forward, `10.0.2.100`).
//!
//! Bytes go as they come; at one side's end of input the other side gets a half-close (so an
//! HTTP request body ends); a connection ends when both directions have.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;

fn pump(mut from: impl Read, mut to: impl Write, close: impl FnOnce()) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    break;
                }
            }
        }
    }
    close();
}

/// The host half: stdin/stdout ↔ `127.0.0.1:port`.
fn host_side(port: u16) -> ExitCode {
    let Ok(tcp) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return ExitCode::from(69);
    };
    let _ = tcp.set_nodelay(true);
    let Ok(to_host) = tcp.try_clone() else {
        return ExitCode::from(71);
    };
    std::thread::spawn(move || {
        let end = to_host.try_clone();
        pump(std::io::stdin().lock(), to_host, move || {
            if let Ok(s) = end {
                let _ = s.shutdown(Shutdown::Write);
            }
        })
    });
    // The host side ended: exiting closes the guest's connection (stdin, stdout and stderr are
    // all that one socket).
    pump(tcp, std::io::stdout().lock(), || {});
    ExitCode::SUCCESS
}

/// The guest half: `127.0.0.1:port` ↔ `addr:port`, a thread pair per connection.
fn guest_side(port: u16, addr: Ipv4Addr) -> ExitCode {
    let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) else {
        return ExitCode::from(71);
    };
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let Ok(far) = TcpStream::connect((addr, port)) else {
                return;
            };
            let _ = (conn.set_nodelay(true), far.set_nodelay(true));
            let (Ok(conn2), Ok(far2)) = (conn.try_clone(), far.try_clone()) else {
                return;
            };
            let (conn3, far3) = (conn.try_clone(), far.try_clone());
            let up = std::thread::spawn(move || {
                pump(conn2, far2, move || {
                    if let Ok(s) = far3 {
                        let _ = s.shutdown(Shutdown::Write);
                    }
                })
            });
            pump(far, conn, move || {
                if let Ok(s) = conn3 {
                    let _ = s.shutdown(Shutdown::Write);
                }
            });
            let _ = up.join();
        });
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = |s: &str| s.parse::<u16>().ok();
    match args.as_slice() {
        [p] => match port(p) {
            Some(p) => host_side(p),
            None => ExitCode::from(64),
        },
        [flag, p, a] if flag == "--listen" => match (port(p), a.parse::<Ipv4Addr>()) {
            (Some(p), Ok(a)) => guest_side(p, a),
            _ => ExitCode::from(64),
        },
        _ => ExitCode::from(64),
    }
}
