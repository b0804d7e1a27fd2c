//! Reading the inventory: properties of objects (`RetrievePropertiesEx` with its continuation
//! token) and every VM under a container, in all datacenters and nested folders
//! (`CreateContainerView` … `DestroyView`).
//!
//! Invariants:
//! - Properties are read as leaf paths (`runtime.powerState`), never whole objects: vcsim and
//!   real hosts omit fields, and an unset property is simply absent from the answer.
//! - A result set is read to its end: every `token` is followed with
//!   `ContinueRetrievePropertiesEx`.
//! - A view is destroyed after use, also when reading it failed.

use crate::hypervisor::{PowerState, Result, VmInfo, VsphereError};
use crate::session::{Idem, Session};
use crate::soap::{el, mor, returnval_moref, Moref};
use crate::xmltree::Element;
use std::collections::BTreeMap;

/// Objects fetched per page.
pub const PAGE: u32 = 100;

/// VM properties the inventory reads.
pub const VM_PATHS: &[&str] = &[
    "name",
    "runtime.powerState",
    "config.uuid",
    "guest.toolsRunningStatus",
    "guest.guestOperationsReady",
];

/// One object and the properties that were set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectContent {
    pub obj: Moref,
    pub props: BTreeMap<String, Element>,
    /// Properties the server could not read: (path, fault kind).
    pub missing: Vec<(String, String)>,
}

impl ObjectContent {
    pub fn text(&self, path: &str) -> Option<&str> {
        self.props.get(path).map(|e| e.text.trim())
    }
}

/// One page of a `RetrieveResult`: its objects and the continuation token, if any.
pub fn parse_retrieve_result(resp: &Element) -> (Vec<ObjectContent>, Option<String>) {
    let Some(rv) = resp.child("returnval") else {
        return (Vec::new(), None);
    };
    let objects = rv
        .children_named("objects")
        .filter_map(object_content)
        .collect();
    let token = rv
        .text_at("token")
        .map(str::to_string)
        .filter(|t| !t.is_empty());
    (objects, token)
}

/// One `ObjectContent` (also the shape of each `returnval` of the legacy `RetrieveProperties`).
pub fn object_content(e: &Element) -> Option<ObjectContent> {
    let obj = e.child("obj").and_then(Moref::from_element)?;
    let props = e
        .children_named("propSet")
        .filter_map(|p| {
            let name = p.text_at("name")?.to_string();
            Some((name, p.child("val").cloned().unwrap_or_default()))
        })
        .collect();
    let missing = e
        .children_named("missingSet")
        .map(|m| {
            let path = m.text_at("path").unwrap_or("").to_string();
            let kind = m
                .path("fault/fault")
                .and_then(|f| f.xsi_type.clone())
                .unwrap_or_else(|| "MethodFault".into());
            (path, kind)
        })
        .collect();
    Some(ObjectContent {
        obj,
        props,
        missing,
    })
}

/// `PropertySpec` for `kind` with these paths.
pub fn prop_spec(kind: &str, paths: &[&str]) -> String {
    let paths: String = paths.iter().map(|p| el("pathSet", p)).collect();
    format!("<propSet>{}{paths}</propSet>", el("type", kind))
}

/// Arguments of `RetrievePropertiesEx` for a `specSet` body.
pub fn retrieve_args(spec_set: &str) -> String {
    format!(
        "<specSet>{spec_set}</specSet><options>{}</options>",
        el("maxObjects", &PAGE.to_string())
    )
}

/// Arguments of `CreateContainerView` (recursive).
pub fn container_view_args(container: &Moref, kind: &str) -> String {
    format!(
        "{}{}<recursive>true</recursive>",
        mor("container", container),
        el("type", kind)
    )
}

/// The `specSet` body reading `paths` of every `kind` object in a container view.
pub fn view_spec(view: &Moref, kind: &str, paths: &[&str]) -> String {
    format!(
        concat!(
            "{props}<objectSet>{obj}<skip>true</skip>",
            "<selectSet xsi:type=\"TraversalSpec\"><name>view</name><type>ContainerView</type>",
            "<path>view</path><skip>false</skip></selectSet></objectSet>"
        ),
        props = prop_spec(kind, paths),
        obj = mor("obj", view)
    )
}

/// Reads a whole result set, following continuation tokens.
pub async fn retrieve(s: &Session, spec_set: &str) -> Result<Vec<ObjectContent>> {
    let pc = s.content().property_collector.clone();
    let args = retrieve_args(spec_set);
    let resp = s
        .call("RetrievePropertiesEx", &pc, &args, Idem::Safe)
        .await?;
    let (mut all, mut token) = parse_retrieve_result(&resp);
    while let Some(t) = token {
        let resp = s
            .call(
                "ContinueRetrievePropertiesEx",
                &pc,
                &el("token", &t),
                Idem::Safe,
            )
            .await?;
        let (more, next) = parse_retrieve_result(&resp);
        all.extend(more);
        token = next;
    }
    Ok(all)
}

/// Properties of one object; `ManagedObjectNotFound` if it no longer exists.
pub async fn retrieve_one(s: &Session, obj: &Moref, paths: &[&str]) -> Result<ObjectContent> {
    let spec = format!(
        "{}<objectSet>{}<skip>false</skip></objectSet>",
        prop_spec(&obj.kind, paths),
        mor("obj", obj)
    );
    let found = retrieve(s, &spec).await?;
    let o = found
        .into_iter()
        .find(|o| o.obj == *obj)
        .ok_or_else(|| VsphereError::Fault {
            method: "RetrievePropertiesEx".into(),
            kind: "ManagedObjectNotFound".into(),
            message: format!("{obj} is gone from the inventory"),
        })?;
    if o.props.is_empty() {
        if let Some((path, kind)) = o.missing.first() {
            return Err(VsphereError::Fault {
                method: "RetrievePropertiesEx".into(),
                kind: kind.clone(),
                message: format!("cannot read {path} of {obj}"),
            });
        }
    }
    Ok(o)
}

/// Every object of `kind` under `container` (recursively), with `paths`.
pub async fn list_in(
    s: &Session,
    container: &Moref,
    kind: &str,
    paths: &[&str],
) -> Result<Vec<ObjectContent>> {
    let vm = s.content().view_manager.clone();
    let args = container_view_args(container, kind);
    let resp = s
        .call("CreateContainerView", &vm, &args, Idem::Once)
        .await?;
    let view = returnval_moref(&resp).ok_or_else(|| VsphereError::Protocol {
        method: "CreateContainerView".into(),
        message: "no view in the answer".into(),
    })?;
    let spec = view_spec(&view, kind, paths);
    let result = retrieve(s, &spec).await;
    if let Err(e) = s.call("DestroyView", &view, "", Idem::Safe).await {
        tracing::warn!(view = %view, error = %e, "could not destroy a container view");
    }
    result
}

/// Parses `runtime.powerState`.
pub fn power_state(text: &str) -> Option<PowerState> {
    match text {
        "poweredOn" => Some(PowerState::On),
        "poweredOff" => Some(PowerState::Off),
        "suspended" => Some(PowerState::Suspended),
        _ => None,
    }
}

/// A [`VmInfo`] from the properties in [`VM_PATHS`].
pub fn vm_info(o: &ObjectContent) -> Option<VmInfo> {
    Some(VmInfo {
        name: o.text("name")?.to_string(),
        id: o.obj.value.clone(),
        uuid: o.text("config.uuid").unwrap_or("").to_string(),
        power: power_state(o.text("runtime.powerState")?)?,
        agent_running: o.text("guest.toolsRunningStatus") == Some("guestToolsRunning"),
        guest_ready: o.text("guest.guestOperationsReady") == Some("true"),
    })
}

/// The containers to search: the root folder, or the named datacenters.
pub async fn scopes(s: &Session, datacenters: Option<&[String]>) -> Result<Vec<Moref>> {
    let Some(wanted) = datacenters else {
        return Ok(vec![s.content().root_folder.clone()]);
    };
    let root = s.content().root_folder.clone();
    let dcs = list_in(s, &root, "Datacenter", &["name"]).await?;
    Ok(dcs
        .into_iter()
        .filter(|d| {
            d.text("name")
                .is_some_and(|n| wanted.iter().any(|w| w == n))
        })
        .map(|d| d.obj)
        .collect())
}

/// Every VM whose name starts with `prefix`, in the given scopes, sorted by name.
pub async fn list_vms(s: &Session, scopes: &[Moref], prefix: &str) -> Result<Vec<VmInfo>> {
    let mut out = Vec::new();
    for scope in scopes {
        for o in list_in(s, scope, "VirtualMachine", VM_PATHS).await? {
            if !o.text("name").is_some_and(|n| n.starts_with(prefix)) {
                continue;
            }
            match vm_info(&o) {
                Some(info) => out.push(info),
                None => tracing::warn!(vm = %o.obj, "VM without a name or power state skipped"),
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
