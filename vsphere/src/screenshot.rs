//! Console screenshots (issue 19): `CreateScreenshot_Task` on a powered-on VM makes ESXi write a
//! PNG of the console into the VM's folder on its datastore and answer its datastore path
//! (`[datastore1] Qubes_4.2_a/Qubes_4.2_a-1.png`); the image is then fetched over the datastore's
//! HTTP access (`GET /folder/<path>?dcPath=<datacenter>&dsName=<datastore>` with the session
//! cookie), streamed into a host file and cut at a cap. The VM's datacenter (which `dcPath` needs
//! on vCenter) is found by walking the VM's `parent` chain.
//!
//! The image stays in the VM's folder (as one taken in the vSphere client does); it is small, and
//! the next screenshot gets the next number.

use crate::hypervisor::{Downloaded, Result, VsphereError};
use crate::inventory;
use crate::session::Session;
use crate::soap::Moref;
use crate::tasks;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A datastore path `[name] folder/file` as (datastore, path in it).
pub fn parse_datastore_path(s: &str) -> Option<(String, String)> {
    let rest = s.trim().strip_prefix('[')?;
    let (ds, path) = rest.split_once(']')?;
    let path = path.trim_start();
    if ds.is_empty() || path.is_empty() || path.split('/').any(|c| c == "..") {
        return None;
    }
    Some((ds.to_string(), path.to_string()))
}

/// Percent-encodes everything but unreserved characters (and `/` when `slash`).
fn encode(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The datastore HTTP address of `path` on datastore `ds` in datacenter `dc`.
pub fn folder_url(origin: &str, dc: &str, ds: &str, path: &str) -> String {
    format!(
        "{origin}/folder/{}?dcPath={}&dsName={}",
        encode(path, true),
        encode(dc, false),
        encode(ds, false)
    )
}

/// The name of the datacenter `obj` is in (its `parent` chain, at most 32 steps).
pub async fn datacenter_of(s: &Session, obj: &Moref) -> Result<String> {
    let mut at = obj.clone();
    for _ in 0..32 {
        if at.kind == "Datacenter" {
            let o = inventory::retrieve_one(s, &at, &["name"]).await?;
            return Ok(o.text("name").unwrap_or_default().to_string());
        }
        let o = inventory::retrieve_one(s, &at, &["parent"]).await?;
        at = o
            .props
            .get("parent")
            .and_then(Moref::from_element)
            .ok_or_else(|| VsphereError::Protocol {
                method: "RetrievePropertiesEx".into(),
                message: format!("{at} has no parent and is not in a datacenter"),
            })?;
    }
    Err(VsphereError::Protocol {
        method: "RetrievePropertiesEx".into(),
        message: format!("no datacenter above {obj}"),
    })
}

/// Takes a screenshot of `vm` (named `name`) and streams it into `dest`, at most `max_bytes`.
pub async fn take(
    s: &Arc<Session>,
    vm: &Moref,
    name: &str,
    dest: &Path,
    max_bytes: u64,
    timeout: Duration,
) -> Result<Downloaded> {
    use tokio::io::AsyncWriteExt;
    let method = "CreateScreenshot_Task";
    let result = tasks::run(s, method, vm, "", Some((vm, name)), timeout).await?;
    let text = result
        .map(|r| r.text.trim().to_string())
        .unwrap_or_default();
    let (ds, path) = parse_datastore_path(&text).ok_or_else(|| VsphereError::Protocol {
        method: method.into(),
        message: format!("the task's result {text:?} is not a datastore path"),
    })?;
    let dc = datacenter_of(s, vm).await?;
    let url = folder_url(&s.origin(), &dc, &ds, &path);
    let mut req = s.http().get(&url).timeout(s.timeouts.transfer());
    if let Some(c) = s.cookie().await {
        req = req.header("Cookie", c);
    }
    let transport = |e: reqwest::Error| VsphereError::Transport {
        url: s.url().to_string(),
        message: format!("GET {ds} {path}: {}", e.without_url()),
    };
    let mut resp = req.send().await.map_err(transport)?;
    if !resp.status().is_success() {
        return Err(VsphereError::Http {
            method: "GET /folder (screenshot)".into(),
            status: resp.status().as_u16(),
        });
    }
    let local = |e: std::io::Error| VsphereError::Config {
        message: format!("writing {}: {e}", dest.display()),
    };
    let mut file = tokio::fs::File::create(dest).await.map_err(local)?;
    let (mut written, mut truncated) = (0u64, false);
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
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
    Ok(Downloaded {
        bytes: written,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datastore_paths_parse_and_refuse_escapes() {
        assert_eq!(
            parse_datastore_path("[datastore 1] Qubes_4.2_a/Qubes_4.2_a-1.png"),
            Some(("datastore 1".into(), "Qubes_4.2_a/Qubes_4.2_a-1.png".into()))
        );
        for bad in ["", "no brackets", "[] x", "[ds]", "[ds] ../etc/passwd"] {
            assert_eq!(parse_datastore_path(bad), None, "{bad}");
        }
        assert_eq!(
            folder_url("https://h:443", "DC 0", "ds&1", "vm a/vm a-1.png"),
            "https://h:443/folder/vm%20a/vm%20a-1.png?dcPath=DC%200&dsName=ds%261"
        );
    }
}
