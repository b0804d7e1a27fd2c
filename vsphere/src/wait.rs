//! Waiting for property changes without polling: one dedicated PropertyCollector per waiter,
//! filters on the watched objects, and a `WaitForUpdatesEx` long-poll loop.
//!
//! Invariants:
//! - A waiter owns its collector: concurrent waiters never share one, so their versions and
//!   pending waits cannot interfere. The collector is destroyed when the waiter finishes, and,
//!   if the waiter is dropped mid-wait (cancelled), by a background task.
//! - The first `WaitForUpdatesEx` (no version) reports the current values, so a condition that
//!   already holds (vcsim finishes tasks before answering) is seen at once.
//! - An absent `returnval` means "nothing changed before maxWaitSeconds": ask again with the same
//!   version. No sleep anywhere; the caller's deadline bounds the whole wait.

use crate::hypervisor::{Result, VsphereError};
use crate::session::{Idem, Session};
use crate::soap::{el, mor, returnval_moref, Moref};
use crate::xmltree::Element;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One property change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub obj: Moref,
    pub name: String,
    /// `assign`, `add`, `remove` or `indirectRemove`.
    pub op: String,
    pub val: Option<Element>,
}

/// What one `WaitForUpdatesEx` answer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateSet {
    pub version: String,
    pub changes: Vec<Change>,
}

/// Reads a `WaitForUpdatesEx` (or `WaitForUpdates`) response; `None` when it timed out.
pub fn parse_update_set(resp: &Element) -> Option<UpdateSet> {
    let rv = resp.child("returnval")?;
    let mut changes = Vec::new();
    for fs in rv.children_named("filterSet") {
        for os in fs.children_named("objectSet") {
            let Some(obj) = os.child("obj").and_then(Moref::from_element) else {
                continue;
            };
            let leaving = os.text_at("kind") == Some("leave");
            for cs in os.children_named("changeSet") {
                let Some(name) = cs.text_at("name") else {
                    continue;
                };
                changes.push(Change {
                    obj: obj.clone(),
                    name: name.to_string(),
                    op: if leaving {
                        "remove".into()
                    } else {
                        cs.text_at("op").unwrap_or("assign").to_string()
                    },
                    val: cs.child("val").cloned(),
                });
            }
        }
    }
    Some(UpdateSet {
        version: rv.text_at("version").unwrap_or("").to_string(),
        changes,
    })
}

/// Arguments of `CreateFilter` watching `paths` of `obj`.
pub fn filter_args(obj: &Moref, paths: &[&str]) -> String {
    format!(
        "<spec>{}<objectSet>{}<skip>false</skip></objectSet></spec><partialUpdates>false</partialUpdates>",
        crate::inventory::prop_spec(&obj.kind, paths),
        mor("obj", obj)
    )
}

/// Arguments of `WaitForUpdatesEx`; an empty version asks for the current values.
pub fn wait_args(version: &str, max_wait_secs: u64) -> String {
    let mut args = String::new();
    if !version.is_empty() {
        args.push_str(&el("version", version));
    }
    args.push_str(&format!(
        "<options>{}</options>",
        el("maxWaitSeconds", &max_wait_secs.to_string())
    ));
    args
}

/// The current values of the watched properties, per object.
pub type Values = BTreeMap<(Moref, String), Element>;

/// Folds a change into the current values.
pub fn apply(values: &mut Values, c: Change) {
    let key = (c.obj, c.name);
    match (c.op.as_str(), c.val) {
        ("remove" | "indirectRemove", _) | (_, None) => {
            values.remove(&key);
        }
        (_, Some(v)) => {
            values.insert(key, v);
        }
    }
}

/// A dedicated property collector with its filters.
pub struct Waiter {
    session: Arc<Session>,
    pc: Moref,
    version: String,
    values: Values,
    /// What is watched, to rebuild the collector if the server lost it.
    filters: Vec<(Moref, Vec<String>)>,
    closed: bool,
}

async fn create_collector(session: &Session) -> Result<Moref> {
    let root_pc = session.content().property_collector.clone();
    let resp = session
        .call("CreatePropertyCollector", &root_pc, "", Idem::Once)
        .await?;
    returnval_moref(&resp).ok_or_else(|| VsphereError::Protocol {
        method: "CreatePropertyCollector".into(),
        message: "no collector in the answer".into(),
    })
}

impl Waiter {
    /// Creates the collector.
    pub async fn new(session: Arc<Session>) -> Result<Self> {
        let pc = create_collector(&session).await?;
        Ok(Self {
            session,
            pc,
            version: String::new(),
            values: Values::new(),
            filters: Vec::new(),
            closed: false,
        })
    }

    /// Watches `paths` of `obj`.
    pub async fn watch(&mut self, obj: &Moref, paths: &[&str]) -> Result<()> {
        let spec = filter_args(obj, paths);
        self.session
            .call("CreateFilter", &self.pc, &spec, Idem::Once)
            .await?;
        self.filters
            .push((obj.clone(), paths.iter().map(|p| p.to_string()).collect()));
        Ok(())
    }

    /// A collector belongs to its session: after a re-login the old one is gone. Builds a new
    /// one with the same filters; the next wait reports the current values again.
    async fn rebuild(&mut self) -> Result<()> {
        tracing::info!(collector = %self.pc, "property collector lost; creating a new one");
        self.pc = create_collector(&self.session).await?;
        self.version.clear();
        for (obj, paths) in std::mem::take(&mut self.filters) {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            self.watch(&obj, &paths).await?;
        }
        Ok(())
    }

    /// The value of `path` on `obj` as last reported.
    pub fn value(&self, obj: &Moref, path: &str) -> Option<&Element> {
        self.values.get(&(obj.clone(), path.to_string()))
    }

    /// Text of `path` on `obj` as last reported.
    pub fn text(&self, obj: &Moref, path: &str) -> Option<&str> {
        self.value(obj, path).map(|e| e.text.trim())
    }

    /// Waits for the next batch of changes and folds it in. `Ok(false)` when the deadline
    /// passed first.
    pub async fn next(&mut self, deadline: Instant) -> Result<bool> {
        let mut rebuilt = false;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let remaining = deadline - now;
            let poll = self.session.timeouts.wait_poll();
            let max_wait = remaining.min(poll).as_secs_f64().ceil().max(1.0) as u64;
            let args = wait_args(&self.version, max_wait);
            let http_timeout = Duration::from_secs(max_wait) + self.session.timeouts.call();
            let call = self.session.call_with_timeout(
                "WaitForUpdatesEx",
                &self.pc,
                &args,
                Idem::Safe,
                http_timeout,
            );
            let resp = match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(r)) => r,
                Ok(Err(VsphereError::Fault { kind, .. }))
                    if kind == "ManagedObjectNotFound" && !rebuilt =>
                {
                    rebuilt = true;
                    self.rebuild().await?;
                    continue;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(false),
            };
            if let Some(set) = parse_update_set(&resp) {
                self.version = set.version;
                for c in set.changes {
                    apply(&mut self.values, c);
                }
                return Ok(true);
            }
        }
    }

    /// Destroys the collector (and with it its filters).
    pub async fn close(mut self) {
        self.closed = true;
        destroy(&self.session, &self.pc).await;
    }
}

async fn destroy(session: &Session, pc: &Moref) {
    if let Err(e) = session
        .call("DestroyPropertyCollector", pc, "", Idem::Safe)
        .await
    {
        tracing::warn!(collector = %pc, error = %e, "could not destroy a property collector");
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let session = self.session.clone();
            let pc = self.pc.clone();
            handle.spawn(async move { destroy(&session, &pc).await });
        }
    }
}
