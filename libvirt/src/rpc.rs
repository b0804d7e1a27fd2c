//! libvirt's remote protocol (the one `virsh` and every libvirt client library speak to the
//! daemon): framing, calls matched to replies by serial, and the daemon's event messages.
//!
//! One [`Conn`] is one connection to one daemon. A reader task owns the read half: replies go to
//! the waiting call, domain events to a broadcast channel. When the connection ends (daemon
//! restarted, ssh gone) every pending call fails with [`CallError::Transport`], the event channel
//! closes, and [`Conn::is_alive`] turns false: the client opens a new one.
//!
//! Wire format (`src/rpc/virnetprotocol.x` in libvirt): a 4-byte length (including itself), a
//! header of six 32-bit words (program, version, procedure, type, serial, status), then the XDR
//! body. Procedure numbers are append-only in libvirt, so the ones below hold for every daemon
//! since they were added (the newest used here, agent lifecycle events, since libvirt 1.2.11).

use crate::xdr::{Dec, DecodeError, Enc};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, oneshot};

pub const REMOTE_PROGRAM: u32 = 0x2000_8086;
pub const QEMU_PROGRAM: u32 = 0x2000_8087;
const PROTOCOL_VERSION: u32 = 1;
/// libvirt's own cap on one message (`VIR_NET_MESSAGE_MAX`, 32 MiB since 8.x; older daemons use
/// less and simply never send more).
const MESSAGE_MAX: usize = 32 * 1024 * 1024 + 4;

/// Procedure numbers of the remote program (`remote_protocol.x`).
pub mod proc {
    pub const CONNECT_OPEN: u32 = 1;
    pub const CONNECT_CLOSE: u32 = 2;
    pub const DOMAIN_DESTROY: u32 = 12;
    pub const DOMAIN_GET_XML_DESC: u32 = 14;
    pub const DOMAIN_LOOKUP_BY_NAME: u32 = 23;
    pub const AUTH_LIST: u32 = 66;
    pub const AUTH_POLKIT: u32 = 70;
    pub const DOMAIN_SNAPSHOT_CREATE_XML: u32 = 185;
    pub const DOMAIN_SNAPSHOT_GET_XML_DESC: u32 = 186;
    pub const DOMAIN_SNAPSHOT_LOOKUP_BY_NAME: u32 = 189;
    pub const DOMAIN_SNAPSHOT_CURRENT: u32 = 191;
    pub const DOMAIN_REVERT_TO_SNAPSHOT: u32 = 192;
    pub const DOMAIN_SNAPSHOT_DELETE: u32 = 193;
    pub const DOMAIN_CREATE_WITH_FLAGS: u32 = 196;
    pub const DOMAIN_GET_STATE: u32 = 212;
    pub const DOMAIN_UNDEFINE_FLAGS: u32 = 231;
    pub const DOMAIN_SHUTDOWN_FLAGS: u32 = 258;
    pub const CONNECT_LIST_ALL_DOMAINS: u32 = 273;
    pub const DOMAIN_LIST_ALL_SNAPSHOTS: u32 = 274;
    pub const CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY: u32 = 316;
    pub const DOMAIN_EVENT_CALLBACK_LIFECYCLE: u32 = 318;
    pub const DOMAIN_EVENT_CALLBACK_AGENT_LIFECYCLE: u32 = 348;
    pub const DOMAIN_DEFINE_XML_FLAGS: u32 = 350;
    /// Of the QEMU program: `virDomainQemuMonitorCommand` (see [`crate::monitor`]).
    pub const QEMU_DOMAIN_MONITOR_COMMAND: u32 = 1;
    /// Of the QEMU program: `virDomainQemuAgentCommand`.
    pub const QEMU_DOMAIN_AGENT_COMMAND: u32 = 3;
}

/// `VIR_DOMAIN_EVENT_ID_*`.
const EVENT_ID_LIFECYCLE: i32 = 0;
const EVENT_ID_AGENT_LIFECYCLE: i32 = 18;

/// `remote_nonnull_domain`: how the protocol names a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dom {
    pub name: String,
    pub uuid: [u8; 16],
    /// Running domains' id, -1 when inactive.
    pub id: i32,
}

impl Dom {
    pub fn encode(&self, e: &mut Enc) {
        e.string(&self.name).opaque_fixed(&self.uuid).i32(self.id);
    }
    pub fn decode(d: &mut Dec) -> Result<Self, DecodeError> {
        let name = d.string()?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(d.opaque_fixed(16)?);
        Ok(Self {
            name,
            uuid,
            id: d.i32()?,
        })
    }
    /// The canonical `8-4-4-4-12` form.
    pub fn uuid_string(&self) -> String {
        let h: String = self.uuid.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// `remote_error`, the daemon's account of a failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    /// `virErrorNumber` (`VIR_ERR_*`).
    pub code: i32,
    /// `virErrorDomain` (which part of libvirt).
    pub domain: i32,
    pub message: String,
}

impl RemoteError {
    fn decode(d: &mut Dec) -> Result<Self, DecodeError> {
        let code = d.i32()?;
        let domain = d.i32()?;
        let message = d.opt_string()?.unwrap_or_default();
        // level, dom, str1..3, int1, int2, net: read for completeness of the check only.
        let _level = d.i32()?;
        if d.bool()? {
            Dom::decode(d)?;
        }
        for _ in 0..3 {
            d.opt_string()?;
        }
        d.i32()?;
        d.i32()?;
        if d.bool()? {
            d.string()?;
            d.opaque_fixed(16)?;
        }
        Ok(Self {
            code,
            domain,
            message,
        })
    }
}

/// Why a call did not return a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The daemon answered with an error.
    Remote(RemoteError),
    /// The connection is gone or the call timed out waiting for it.
    Transport(String),
    /// The reply could not be decoded.
    Decode(String),
}

impl From<DecodeError> for CallError {
    fn from(e: DecodeError) -> Self {
        CallError::Decode(e.0)
    }
}

/// A domain event the daemon sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `VIR_DOMAIN_EVENT_*` (2 started, 5 stopped, …) with its detail.
    Lifecycle {
        dom: String,
        event: i32,
        detail: i32,
    },
    /// The guest agent channel: state 1 connected, 2 disconnected.
    Agent {
        dom: String,
        state: i32,
        reason: i32,
    },
}

impl Event {
    pub fn domain(&self) -> &str {
        match self {
            Event::Lifecycle { dom, .. } | Event::Agent { dom, .. } => dom,
        }
    }
}

/// `VIR_DOMAIN_EVENT_STOPPED`.
pub const EVENT_STOPPED: i32 = 5;
/// `VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED`.
pub const AGENT_CONNECTED: i32 = 1;

/// Where the daemon is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The daemon's Unix socket on this machine.
    Unix(PathBuf),
    /// Through `ssh`: the command's stdin/stdout carry the protocol (`virt-ssh-helper` on the
    /// far side, as libvirt's own remote driver does since 6.8).
    Command { program: String, args: Vec<String> },
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Result<Vec<u8>, CallError>>>>>;

/// One open connection to one daemon.
pub struct Conn {
    label: String,
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    pending: Pending,
    serial: AtomicU32,
    alive: Arc<AtomicBool>,
    events: broadcast::Sender<Event>,
    reader: tokio::task::JoinHandle<()>,
    _child: Option<tokio::process::Child>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("label", &self.label).finish()
    }
}

impl Conn {
    /// Connects, authenticates (none or polkit: the daemon decides from the peer's uid), opens
    /// `name` (e.g. `qemu:///system`) and subscribes to lifecycle and agent events of every
    /// domain.
    pub async fn open(
        label: &str,
        endpoint: &Endpoint,
        name: &str,
        connect_timeout: Duration,
    ) -> Result<Arc<Conn>, CallError> {
        let (r, w, child): (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
            _,
        ) =
            match endpoint {
                Endpoint::Unix(path) => {
                    let s = tokio::time::timeout(
                        connect_timeout,
                        tokio::net::UnixStream::connect(path),
                    )
                    .await
                    .map_err(|_| {
                        CallError::Transport(format!("connecting to {} timed out", path.display()))
                    })?
                    .map_err(|e| {
                        CallError::Transport(format!("cannot connect to {}: {e}", path.display()))
                    })?;
                    let (r, w) = s.into_split();
                    (Box::new(r), Box::new(w), None)
                }
                Endpoint::Command { program, args } => {
                    let mut child = tokio::process::Command::new(program)
                        .args(args)
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::inherit())
                        .kill_on_drop(true)
                        .spawn()
                        .map_err(|e| {
                            CallError::Transport(format!("cannot start {program}: {e}"))
                        })?;
                    let (Some(w), Some(r)) = (child.stdin.take(), child.stdout.take()) else {
                        return Err(CallError::Transport(format!("{program} has no pipes")));
                    };
                    (Box::new(r), Box::new(w), Some(child))
                }
            };
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (events, _) = broadcast::channel(256);
        let reader = tokio::spawn(read_loop(r, pending.clone(), alive.clone(), events.clone()));
        let conn = Arc::new(Conn {
            label: label.to_string(),
            writer: tokio::sync::Mutex::new(w),
            pending,
            serial: AtomicU32::new(1),
            alive,
            events,
            reader,
            _child: child,
        });
        let t = connect_timeout;
        let auth = conn
            .call(REMOTE_PROGRAM, proc::AUTH_LIST, Vec::new(), t)
            .await?;
        let mut d = Dec::new(&auth);
        let n = d.count()?;
        let mut types = Vec::with_capacity(n);
        for _ in 0..n {
            types.push(d.i32()?);
        }
        // REMOTE_AUTH_NONE = 0, SASL = 1, POLKIT = 2.
        if !types.is_empty() && !types.contains(&0) {
            if types.contains(&2) {
                conn.call(REMOTE_PROGRAM, proc::AUTH_POLKIT, Vec::new(), t)
                    .await?;
            } else {
                return Err(CallError::Remote(RemoteError {
                    code: 45,
                    domain: 0,
                    message: format!(
                        "the daemon asks for SASL authentication ({types:?}), which sdci does not speak: use a Unix socket or ssh"
                    ),
                }));
            }
        }
        let mut e = Enc::new();
        e.opt_string(Some(name)).u32(0);
        conn.call(REMOTE_PROGRAM, proc::CONNECT_OPEN, e.0, t)
            .await?;
        for id in [EVENT_ID_LIFECYCLE, EVENT_ID_AGENT_LIFECYCLE] {
            let mut e = Enc::new();
            e.i32(id).u32(0); // all domains
            conn.call(
                REMOTE_PROGRAM,
                proc::CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
                e.0,
                t,
            )
            .await?;
        }
        Ok(conn)
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Events from now on. The receiver ends (`Closed`) when the connection does.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// One call: writes it, waits up to `timeout` for its reply.
    pub async fn call(
        &self,
        program: u32,
        procedure: u32,
        args: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        if !self.is_alive() {
            return Err(CallError::Transport(format!(
                "connection to {} is closed",
                self.label
            )));
        }
        let serial = self.serial.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("pending map lock is never poisoned: no panics while held")
            .insert(serial, tx);
        let mut frame = Enc::new();
        let len = 28 + args.len();
        frame
            .u32(u32::try_from(len).unwrap_or(u32::MAX))
            .u32(program)
            .u32(PROTOCOL_VERSION)
            .u32(procedure)
            .u32(0) // VIR_NET_CALL
            .u32(serial)
            .u32(0); // VIR_NET_OK
        frame.0.extend_from_slice(&args);
        let written = {
            let mut w = self.writer.lock().await;
            match w.write_all(&frame.0).await {
                Ok(()) => w.flush().await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = written {
            self.forget(serial);
            self.alive.store(false, Ordering::SeqCst);
            return Err(CallError::Transport(format!(
                "writing to {}: {e}",
                self.label
            )));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(CallError::Transport(format!(
                "connection to {} closed during the call",
                self.label
            ))),
            Err(_) => {
                self.forget(serial);
                Err(CallError::Transport(format!(
                    "{} did not answer procedure {procedure} within {timeout:?}",
                    self.label
                )))
            }
        }
    }

    fn forget(&self, serial: u32) {
        self.pending
            .lock()
            .expect("pending map lock is never poisoned: no panics while held")
            .remove(&serial);
    }
}

async fn read_loop(
    mut r: Box<dyn AsyncRead + Send + Unpin>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    events: broadcast::Sender<Event>,
) {
    let why = loop {
        let mut len = [0u8; 4];
        if let Err(e) = r.read_exact(&mut len).await {
            break format!("connection closed: {e}");
        }
        let len = u32::from_be_bytes(len) as usize;
        if !(28..=MESSAGE_MAX).contains(&len) {
            break format!("bad message length {len}");
        }
        let mut body = vec![0u8; len - 4];
        if let Err(e) = r.read_exact(&mut body).await {
            break format!("connection closed mid-message: {e}");
        }
        let mut d = Dec::new(&body);
        let header = (|| -> Result<_, DecodeError> {
            Ok((d.u32()?, d.u32()?, d.u32()?, d.u32()?, d.u32()?, d.u32()?))
        })();
        let Ok((program, _version, procedure, kind, serial, status)) = header else {
            break "bad message header".to_string();
        };
        let payload = &body[24..];
        match kind {
            // VIR_NET_REPLY
            1 => {
                let tx = pending
                    .lock()
                    .expect("pending map lock is never poisoned: no panics while held")
                    .remove(&serial);
                let Some(tx) = tx else { continue };
                let reply = match status {
                    0 => Ok(payload.to_vec()),
                    _ => match RemoteError::decode(&mut Dec::new(payload)) {
                        Ok(e) => Err(CallError::Remote(e)),
                        Err(e) => Err(CallError::Decode(e.0)),
                    },
                };
                let _ = tx.send(reply);
            }
            // VIR_NET_MESSAGE: events.
            2 if program == REMOTE_PROGRAM => {
                if let Ok(Some(ev)) = decode_event(procedure, payload) {
                    let _ = events.send(ev);
                }
            }
            _ => {}
        }
    };
    tracing::debug!(%why, "libvirt connection ended");
    alive.store(false, Ordering::SeqCst);
    // Dropping the senders fails every pending call with "closed during the call".
    pending
        .lock()
        .expect("pending map lock is never poisoned: no panics while held")
        .clear();
}

fn decode_event(procedure: u32, payload: &[u8]) -> Result<Option<Event>, DecodeError> {
    let mut d = Dec::new(payload);
    Ok(match procedure {
        proc::DOMAIN_EVENT_CALLBACK_LIFECYCLE => {
            let _callback = d.i32()?;
            let dom = Dom::decode(&mut d)?;
            Some(Event::Lifecycle {
                dom: dom.name,
                event: d.i32()?,
                detail: d.i32()?,
            })
        }
        proc::DOMAIN_EVENT_CALLBACK_AGENT_LIFECYCLE => {
            let _callback = d.i32()?;
            let dom = Dom::decode(&mut d)?;
            Some(Event::Agent {
                dom: dom.name,
                state: d.i32()?,
                reason: d.i32()?,
            })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_print_in_canonical_form() {
        let d = Dom {
            name: "a".into(),
            uuid: [
                0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
                0xcd, 0xef,
            ],
            id: -1,
        };
        assert_eq!(d.uuid_string(), "12345678-9abc-def0-0123-456789abcdef");
    }

    #[test]
    fn agent_lifecycle_messages_decode_to_events() {
        let mut e = Enc::new();
        e.i32(7);
        Dom {
            name: "vm".into(),
            uuid: [0; 16],
            id: 3,
        }
        .encode(&mut e);
        e.i32(1).i32(2);
        let ev = decode_event(proc::DOMAIN_EVENT_CALLBACK_AGENT_LIFECYCLE, &e.0).unwrap();
        assert_eq!(
            ev,
            Some(Event::Agent {
                dom: "vm".into(),
                state: 1,
                reason: 2
            })
        );
    }
}
