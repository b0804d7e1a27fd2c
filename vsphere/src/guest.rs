//! Guest operations: programs (start, state, terminate), directories (`MakeDirectoryInGuest`)
//! and file transfers (initiate, then an HTTP PUT or GET on the `guestFile` URL).
//!
//! Invariants:
//! - Credentials are `NamePasswordAuthentication` with `interactiveSession=false`.
//! - A process has ended when `endTime` is present; an absent `exitCode` then means 0. An empty
//!   answer for a pid the guest once had means the pid is lost (tools restarted, or the record
//!   expired), never "still running".
//! - A `guestFile` URL whose host is `*` (with or without a port) is sent to the host:port the
//!   SOAP client is connected to; any other host (an ESXi host behind vCenter) is used as given.
//! - Transfers replay the session cookie and use the same TLS trust as the SOAP calls.
//! - An upload does not create parent directories (real ESXi does not); `make_directory` does,
//!   and treats an existing directory (`FileAlreadyExists`) as success.

use crate::hypervisor::{Downloaded, GuestAuth, GuestProgram, ProcessState, Result, VsphereError};
use crate::session::{Idem, Session};
use crate::soap::{el, esc, mor, Moref};
use crate::xmltree::Element;

/// The guest-operation managers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managers {
    pub process: Moref,
    pub file: Moref,
}

/// Reads `processManager` and `fileManager` of the GuestOperationsManager.
pub async fn managers(s: &Session) -> Result<Managers> {
    let gom = s
        .content()
        .guest_operations_manager
        .clone()
        .ok_or_else(|| VsphereError::Protocol {
            method: "RetrieveServiceContent".into(),
            message: "this endpoint has no guestOperationsManager".into(),
        })?;
    let o = crate::inventory::retrieve_one(s, &gom, &["processManager", "fileManager"]).await?;
    let get = |p: &str| {
        o.props
            .get(p)
            .and_then(|e| {
                Moref::from_element(e).or_else(|| {
                    // A `val` element carries the reference type as xsi:type on some servers.
                    e.xsi_type
                        .as_ref()
                        .map(|_| Moref::new(guess_kind(p), e.text.trim()))
                })
            })
            .ok_or_else(|| VsphereError::Protocol {
                method: "RetrievePropertiesEx".into(),
                message: format!("GuestOperationsManager has no {p}"),
            })
    };
    Ok(Managers {
        process: get("processManager")?,
        file: get("fileManager")?,
    })
}

fn guess_kind(path: &str) -> &'static str {
    if path == "processManager" {
        "GuestProcessManager"
    } else {
        "GuestFileManager"
    }
}

/// `vm` and `auth` arguments, the prefix of every guest call.
pub fn vm_auth(vm: &Moref, auth: &GuestAuth) -> String {
    format!(
        concat!(
            "{vm}<auth xsi:type=\"NamePasswordAuthentication\">",
            "<interactiveSession>false</interactiveSession>{user}{pass}</auth>"
        ),
        vm = mor("vm", vm),
        user = el("username", &auth.user),
        pass = el("password", auth.password.expose()),
    )
}

/// The `spec` argument of `StartProgramInGuest`.
pub fn program_spec(p: &GuestProgram) -> String {
    let mut s = String::from("<spec xsi:type=\"GuestProgramSpec\">");
    s.push_str(&el("programPath", &p.path));
    s.push_str(&el("arguments", &p.arguments));
    if let Some(wd) = &p.working_directory {
        s.push_str(&el("workingDirectory", wd));
    }
    for e in &p.env {
        s.push_str(&el("envVariables", e));
    }
    s.push_str("</spec>");
    s
}

fn protocol(method: &str, message: impl Into<String>) -> VsphereError {
    VsphereError::Protocol {
        method: method.into(),
        message: message.into(),
    }
}

/// Reads the pid `StartProgramInGuest` returned.
pub fn parse_pid(resp: &Element) -> Result<i64> {
    resp.text_at("returnval")
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| protocol("StartProgramInGuest", "no pid in the answer"))
}

/// The state of `pid` from a `ListProcessesInGuest` answer.
pub fn parse_process_state(resp: &Element, pid: i64) -> Result<ProcessState> {
    let entry = resp
        .children_named("returnval")
        .find(|p| p.text_at("pid").and_then(|t| t.trim().parse::<i64>().ok()) == Some(pid));
    let Some(p) = entry else {
        return Ok(ProcessState::Lost);
    };
    let ended = p.text_at("endTime").is_some_and(|t| !t.trim().is_empty());
    if !ended {
        return Ok(ProcessState::Running);
    }
    let code = match p.text_at("exitCode").map(str::trim) {
        None | Some("") => 0,
        Some(t) => t
            .parse()
            .map_err(|_| protocol("ListProcessesInGuest", format!("exit code {t:?}")))?,
    };
    Ok(ProcessState::Exited(code))
}

/// Arguments of `StartProgramInGuest`.
pub fn start_args(vm: &Moref, auth: &GuestAuth, p: &GuestProgram) -> String {
    format!("{}{}", vm_auth(vm, auth), program_spec(p))
}

/// Arguments of `ListProcessesInGuest` for one pid.
pub fn list_args(vm: &Moref, auth: &GuestAuth, pid: i64) -> String {
    format!("{}{}", vm_auth(vm, auth), el("pids", &pid.to_string()))
}

/// Arguments of `TerminateProcessInGuest`.
pub fn terminate_args(vm: &Moref, auth: &GuestAuth, pid: i64) -> String {
    format!("{}{}", vm_auth(vm, auth), el("pid", &pid.to_string()))
}

/// Arguments of `InitiateFileTransferToGuest` (always overwriting).
pub fn upload_args(vm: &Moref, auth: &GuestAuth, guest_path: &str, size: usize) -> String {
    format!(
        "{}{}<fileAttributes xsi:type=\"GuestFileAttributes\"></fileAttributes>{}<overwrite>true</overwrite>",
        vm_auth(vm, auth),
        el("guestFilePath", guest_path),
        el("fileSize", &size.to_string()),
    )
}

/// Arguments of `MakeDirectoryInGuest` (vim25 `MakeDirectoryInGuestRequestType`: `vm`, `auth`,
/// `directoryPath`, `createParentDirectories`, in that order).
pub fn mkdir_args(vm: &Moref, auth: &GuestAuth, path: &str, create_parents: bool) -> String {
    format!(
        "{}{}{}",
        vm_auth(vm, auth),
        el("directoryPath", path),
        el(
            "createParentDirectories",
            if create_parents { "true" } else { "false" }
        ),
    )
}

/// Arguments of `InitiateFileTransferFromGuest`.
pub fn download_args(vm: &Moref, auth: &GuestAuth, guest_path: &str) -> String {
    format!("{}{}", vm_auth(vm, auth), el("guestFilePath", guest_path))
}

pub async fn start(
    s: &Session,
    m: &Managers,
    vm: &Moref,
    auth: &GuestAuth,
    p: &GuestProgram,
) -> Result<i64> {
    if !p.path.starts_with('/') {
        return Err(VsphereError::Fault {
            method: "StartProgramInGuest".into(),
            kind: "InvalidArgument".into(),
            message: format!("program path {:?} must be absolute", p.path),
        });
    }
    let args = start_args(vm, auth, p);
    let resp = s
        .call("StartProgramInGuest", &m.process, &args, Idem::Once)
        .await?;
    parse_pid(&resp)
}

pub async fn state(
    s: &Session,
    m: &Managers,
    vm: &Moref,
    auth: &GuestAuth,
    pid: i64,
) -> Result<ProcessState> {
    let args = list_args(vm, auth, pid);
    let resp = s
        .call("ListProcessesInGuest", &m.process, &args, Idem::Safe)
        .await?;
    parse_process_state(&resp, pid)
}

pub async fn terminate(
    s: &Session,
    m: &Managers,
    vm: &Moref,
    auth: &GuestAuth,
    pid: i64,
) -> Result<()> {
    let args = terminate_args(vm, auth, pid);
    s.call("TerminateProcessInGuest", &m.process, &args, Idem::Once)
        .await
        .map(|_| ())
}

/// The URL to transfer with: a `*` host (and its port) replaced by `authority`.
pub fn transfer_url(url: &str, authority: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(end);
    if host == "*" || host.starts_with("*:") {
        format!("{scheme}://{authority}{tail}")
    } else {
        url.to_string()
    }
}

/// The `url` of a `FileTransferInformation`, with its announced size.
pub fn parse_transfer_info(resp: &Element) -> Result<(String, Option<u64>)> {
    let rv = resp
        .child("returnval")
        .ok_or_else(|| protocol("InitiateFileTransferFromGuest", "no returnval"))?;
    let url = rv
        .text_at("url")
        .ok_or_else(|| protocol("InitiateFileTransferFromGuest", "no url in the answer"))?;
    let size = rv.text_at("size").and_then(|t| t.trim().parse().ok());
    Ok((url.trim().to_string(), size))
}

async fn transfer_request(
    s: &Session,
    req: reqwest::RequestBuilder,
    what: &str,
) -> Result<reqwest::Response> {
    let mut req = req.timeout(s.timeouts.transfer());
    if let Some(c) = s.cookie().await {
        req = req.header("Cookie", c);
    }
    // `without_url`: the guestFile URL carries a transfer token.
    let resp = req.send().await.map_err(|e| VsphereError::Transport {
        url: s.url().to_string(),
        message: format!("{what}: {}", e.without_url()),
    })?;
    if !resp.status().is_success() {
        return Err(VsphereError::Http {
            method: what.to_string(),
            status: resp.status().as_u16(),
        });
    }
    Ok(resp)
}

/// `MakeDirectoryInGuest`; an existing directory (`FileAlreadyExists`) is success.
pub async fn make_directory(
    s: &Session,
    m: &Managers,
    vm: &Moref,
    auth: &GuestAuth,
    path: &str,
    create_parents: bool,
) -> Result<()> {
    let args = mkdir_args(vm, auth, path, create_parents);
    // Safe to resend: a second try of a call that did run meets `FileAlreadyExists`.
    match s
        .call("MakeDirectoryInGuest", &m.file, &args, Idem::Safe)
        .await
    {
        Ok(_) => Ok(()),
        Err(VsphereError::Fault { kind, .. }) if kind == "FileAlreadyExists" => {
            tracing::debug!(path, "guest directory already exists");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

pub async fn upload(
    s: &Session,
    m: &Managers,
    vm: &Moref,
    auth: &GuestAuth,
    guest_path: &str,
    data: Vec<u8>,
) -> Result<()> {
    let args = upload_args(vm, auth, guest_path, data.len());
    let resp = s
        // Initiating changes nothing in the guest until the PUT: safe to resend.
        .call("InitiateFileTransferToGuest", &m.file, &args, Idem::Safe)
        .await?;
    let url = resp
        .text_at("returnval")
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| protocol("InitiateFileTransferToGuest", "no URL in the answer"))?;
    let url = transfer_url(url, s.authority());
    let len = data.len();
    transfer_request(
        s,
        s.http().put(&url).header("Content-Length", len).body(data),
        "PUT guestFile",
    )
    .await?;
    tracing::debug!(path = guest_path, bytes = len, "uploaded to the guest");
    Ok(())
}

pub async fn download(
    s: &Session,
    m: &Managers,
    vm: &Moref,
    auth: &GuestAuth,
    guest_path: &str,
) -> Result<Vec<u8>> {
    let args = download_args(vm, auth, guest_path);
    let resp = s
        .call("InitiateFileTransferFromGuest", &m.file, &args, Idem::Safe)
        .await?;
    let (url, size) = parse_transfer_info(&resp)?;
    let url = transfer_url(&url, s.authority());
    let resp = transfer_request(s, s.http().get(&url), "GET guestFile").await?;
    let bytes = resp.bytes().await.map_err(|e| VsphereError::Transport {
        url: s.url().to_string(),
        message: format!("GET guestFile: {}", e.without_url()),
    })?;
    if let Some(size) = size {
        if size != bytes.len() as u64 {
            return Err(protocol(
                "GET guestFile",
                format!(
                    "{} announced {size} bytes, got {}",
                    esc(guest_path),
                    bytes.len()
                ),
            ));
        }
    }
    Ok(bytes.to_vec())
}

/// Streams `guest_path` into the host file `dest`, at most `max_bytes` of it: the answer is read
/// chunk by chunk and the transfer dropped at the cap, so a huge guest file never sits in memory.
pub async fn download_to(
    s: &Session,
    m: &Managers,
    vm: &Moref,
    auth: &GuestAuth,
    guest_path: &str,
    dest: &std::path::Path,
    max_bytes: u64,
) -> Result<Downloaded> {
    use tokio::io::AsyncWriteExt;
    let args = download_args(vm, auth, guest_path);
    let resp = s
        .call("InitiateFileTransferFromGuest", &m.file, &args, Idem::Safe)
        .await?;
    let (url, size) = parse_transfer_info(&resp)?;
    let url = transfer_url(&url, s.authority());
    let mut resp = transfer_request(s, s.http().get(&url), "GET guestFile").await?;
    let local = |e: std::io::Error| VsphereError::Config {
        message: format!("writing {}: {e}", dest.display()),
    };
    let mut file = tokio::fs::File::create(dest).await.map_err(local)?;
    let mut written: u64 = 0;
    let mut truncated = false;
    loop {
        let chunk = resp.chunk().await.map_err(|e| VsphereError::Transport {
            url: s.url().to_string(),
            message: format!("GET guestFile: {}", e.without_url()),
        })?;
        let Some(chunk) = chunk else { break };
        let room = max_bytes - written;
        if chunk.len() as u64 > room {
            let keep = usize::try_from(room).unwrap_or(usize::MAX).min(chunk.len());
            file.write_all(&chunk[..keep]).await.map_err(local)?;
            written += keep as u64;
            truncated = true;
            break;
        }
        file.write_all(&chunk).await.map_err(local)?;
        written += chunk.len() as u64;
    }
    file.flush().await.map_err(local)?;
    if let Some(size) = size {
        if !truncated && size != written {
            return Err(protocol(
                "GET guestFile",
                format!("{} announced {size} bytes, got {written}", esc(guest_path)),
            ));
        }
        truncated |= size > written;
    }
    Ok(Downloaded {
        bytes: written,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmltree::parse;

    #[test]
    fn a_star_host_with_or_without_port_becomes_the_connected_host() {
        assert_eq!(
            transfer_url("https://*:8989/guestFile?id=1&token=t", "10.0.0.5:443"),
            "https://10.0.0.5:443/guestFile?id=1&token=t"
        );
        assert_eq!(
            transfer_url("https://*/guestFile?id=1&token=1234", "esx:443"),
            "https://esx:443/guestFile?id=1&token=1234"
        );
        assert_eq!(
            transfer_url("https://esx-07.lab:443/guestFile?id=1", "vc:443"),
            "https://esx-07.lab:443/guestFile?id=1"
        );
    }

    #[test]
    fn ended_without_exit_code_is_zero_running_and_lost_are_told_apart() {
        let ended = parse(
            "<r><returnval><pid>5</pid><endTime>2026-01-01T00:00:00Z</endTime></returnval></r>",
        )
        .unwrap();
        assert_eq!(
            parse_process_state(&ended, 5).unwrap(),
            ProcessState::Exited(0)
        );
        let running =
            parse("<r><returnval><pid>5</pid><startTime>x</startTime></returnval></r>").unwrap();
        assert_eq!(
            parse_process_state(&running, 5).unwrap(),
            ProcessState::Running
        );
        let empty = parse("<r></r>").unwrap();
        assert_eq!(parse_process_state(&empty, 5).unwrap(), ProcessState::Lost);
        let failed = parse(
            "<r><returnval><pid>5</pid><endTime>t</endTime><exitCode>3</exitCode></returnval></r>",
        )
        .unwrap();
        assert_eq!(
            parse_process_state(&failed, 5).unwrap(),
            ProcessState::Exited(3)
        );
    }
}
