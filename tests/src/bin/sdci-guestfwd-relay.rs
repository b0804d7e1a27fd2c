//! `sdci-guestfwd-relay PORT`: one connection of a libvirt test guest relayed to
//! `127.0.0.1:PORT` on the host. QEMU's restricted user network runs it per connection
//! (`guestfwd=tcp:10.0.2.100:PORT-cmd:sdci-guestfwd-relay PORT`, `sdci_libvirt::UserNet`) with
//! the guest's connection on stdin and stdout (and stderr: nothing is ever written there). It
//! can reach nothing but the host's loopback: the port is all it takes.
//!
//! Guest → host bytes go as they come; at the guest's end of input the host side gets a
//! half-close (so an HTTP request body ends); when the host side ends, the process exits, which
//! closes the guest's connection.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(port) = std::env::args().nth(1).and_then(|p| p.parse::<u16>().ok()) else {
        return ExitCode::from(64);
    };
    let Ok(tcp) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return ExitCode::from(69);
    };
    let _ = tcp.set_nodelay(true);
    let Ok(mut to_host) = tcp.try_clone() else {
        return ExitCode::from(71);
    };
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_host.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_host.shutdown(Shutdown::Write);
    });
    let mut from_host = tcp;
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from_host.read(&mut buf) {
            Ok(0) | Err(_) => return ExitCode::SUCCESS,
            Ok(n) => {
                if stdout
                    .write_all(&buf[..n])
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    return ExitCode::SUCCESS;
                }
            }
        }
    }
}
