//! Tasks (`*_Task` methods): start one, then wait for `info.state` to reach `success` or
//! `error` through a dedicated waiter, watching the VM's `runtime.question` on the way.
//!
//! Invariants:
//! - A task error is the `LocalizedMethodFault` in `info.error`, turned into
//!   [`VsphereError::Fault`] with the task's method name, fault kind and message.
//! - A pending VM question ends the wait with [`VsphereError::VmQuestion`] instead of hanging
//!   until the deadline: nobody will answer it.
//! - The deadline bounds the whole wait; running out is [`VsphereError::Timeout`].

use crate::hypervisor::{Result, VsphereError};
use crate::session::{Idem, Session};
use crate::soap::{parse_localized_fault, returnval_moref, Moref};
use crate::wait::Waiter;
use crate::xmltree::Element;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Where a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEnd {
    /// `info.result`, if the task has one (e.g. the new snapshot).
    Success(Option<Element>),
    Error {
        kind: String,
        message: String,
    },
}

/// Reads a `TaskInfo`: `None` while it is queued or running.
pub fn task_end(info: &Element) -> Option<TaskEnd> {
    match info.text_at("state")? {
        "success" => Some(TaskEnd::Success(info.child("result").cloned())),
        "error" => {
            let f = info
                .child("error")
                .map(parse_localized_fault)
                .unwrap_or_else(|| crate::soap::Fault {
                    kind: "MethodFault".into(),
                    message: "the task failed without saying why".into(),
                    detail: None,
                });
            Some(TaskEnd::Error {
                kind: f.kind,
                message: f.message,
            })
        }
        _ => None,
    }
}

/// The text of a pending question (`runtime.question`), if any.
pub fn question_text(q: &Element) -> Option<String> {
    let text = q.text_at("text").unwrap_or("").trim();
    if q.children.is_empty() && text.is_empty() {
        return None;
    }
    Some(if text.is_empty() {
        "(a question without text)".to_string()
    } else {
        text.to_string()
    })
}

/// Calls a `*_Task` method on `this` and waits for the task. `vm` names the VM concerned, whose
/// pending questions end the wait.
pub async fn run(
    session: &Arc<Session>,
    method: &str,
    this: &Moref,
    args: &str,
    vm: Option<(&Moref, &str)>,
    timeout: Duration,
) -> Result<Option<Element>> {
    let resp = session.call(method, this, args, Idem::Once).await?;
    let task = returnval_moref(&resp).ok_or_else(|| VsphereError::Protocol {
        method: method.into(),
        message: "no task in the answer".into(),
    })?;
    wait(session, method, &task, vm, timeout).await
}

/// Waits for `task` (started by `method`) to finish.
pub async fn wait(
    session: &Arc<Session>,
    method: &str,
    task: &Moref,
    vm: Option<(&Moref, &str)>,
    timeout: Duration,
) -> Result<Option<Element>> {
    let deadline = Instant::now() + timeout;
    let mut w = Waiter::new(session.clone()).await?;
    let outcome = async {
        w.watch(task, &["info"]).await?;
        if let Some((vm, _)) = vm {
            w.watch(vm, &["runtime.question"]).await?;
        }
        loop {
            if let Some(end) = w.value(task, "info").and_then(task_end) {
                return match end {
                    TaskEnd::Success(r) => Ok(r),
                    TaskEnd::Error { kind, message } => Err(VsphereError::Fault {
                        method: method.into(),
                        kind,
                        message,
                    }),
                };
            }
            if let Some((vm, name)) = vm {
                if let Some(q) = w.value(vm, "runtime.question").and_then(question_text) {
                    return Err(VsphereError::VmQuestion {
                        vm: name.to_string(),
                        question: q,
                    });
                }
            }
            if !w.next(deadline).await? {
                return Err(VsphereError::Timeout {
                    what: format!("{method} ({task})"),
                    waited: timeout,
                });
            }
        }
    }
    .await;
    w.close().await;
    outcome
}
