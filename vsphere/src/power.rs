//! Power: on, hard off, guest shutdown with a deadline, and waiting for VMware Tools.
//!
//! Invariants:
//! - "Already in the wanted state" is success: `InvalidPowerState` from a power-on of a running
//!   VM or a power-off of a stopped one is not an error (a shutdown may race the power-off).
//! - A guest shutdown never waits longer than its grace: then the VM is powered off hard.
//! - Waits are change notifications (see `wait`), never sleeps.

use crate::hypervisor::{Result, VsphereError};
use crate::session::{Idem, Session};
use crate::soap::Moref;
use crate::tasks;
use crate::wait::Waiter;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

fn is_invalid_power_state(e: &VsphereError) -> bool {
    matches!(e, VsphereError::Fault { kind, .. } if kind == "InvalidPowerState")
}

/// Powers on and waits for the task; already on is success.
pub async fn power_on(s: &Arc<Session>, vm: &Moref, name: &str) -> Result<()> {
    let timeout = s.timeouts.task();
    match tasks::run(s, "PowerOnVM_Task", vm, "", Some((vm, name)), timeout).await {
        Ok(_) => Ok(()),
        Err(e) if is_invalid_power_state(&e) => {
            tracing::info!(vm = name, "already powered on");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Hard power-off; already off is success.
pub async fn power_off(s: &Arc<Session>, vm: &Moref, name: &str) -> Result<()> {
    let timeout = s.timeouts.task();
    match tasks::run(s, "PowerOffVM_Task", vm, "", Some((vm, name)), timeout).await {
        Ok(_) => Ok(()),
        Err(e) if is_invalid_power_state(&e) => {
            tracing::info!(vm = name, "already powered off");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Waits until `runtime.powerState` is `poweredOff`; `false` if the deadline came first.
pub async fn wait_powered_off(s: &Arc<Session>, vm: &Moref, deadline: Instant) -> Result<bool> {
    let mut w = Waiter::new(s.clone()).await?;
    let outcome = async {
        w.watch(vm, &["runtime.powerState"]).await?;
        loop {
            if w.text(vm, "runtime.powerState") == Some("poweredOff") {
                return Ok(true);
            }
            if !w.next(deadline).await? {
                return Ok(false);
            }
        }
    }
    .await;
    w.close().await;
    outcome
}

/// Guest shutdown, wait up to `grace` for power-off, then hard power-off.
pub async fn shutdown(s: &Arc<Session>, vm: &Moref, name: &str, grace: Duration) -> Result<()> {
    let deadline = Instant::now() + grace;
    match s.call("ShutdownGuest", vm, "", Idem::Once).await {
        Ok(_) => {
            if wait_powered_off(s, vm, deadline).await? {
                tracing::info!(vm = name, "guest shut down");
                return Ok(());
            }
            tracing::warn!(
                vm = name,
                ?grace,
                "guest did not shut down in time; powering off"
            );
        }
        Err(e) if is_invalid_power_state(&e) => {
            tracing::info!(vm = name, "shutdown: not running");
        }
        Err(e @ VsphereError::Fault { .. }) => {
            tracing::warn!(vm = name, error = %e, "guest shutdown refused; powering off");
        }
        Err(e) => return Err(e),
    }
    power_off(s, vm, name).await
}

/// What the tools watcher concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolsState {
    Ready,
    Waiting,
    /// The VM is not running: tools will never come.
    NotRunning(String),
    Question(String),
}

/// Whether guest operations can run, from the watched properties.
pub fn tools_state(
    power: Option<&str>,
    running: Option<&str>,
    ops_ready: Option<&str>,
    question: Option<String>,
) -> ToolsState {
    if let Some(q) = question {
        return ToolsState::Question(q);
    }
    match power {
        Some("poweredOn") | None => {}
        Some(other) => return ToolsState::NotRunning(other.to_string()),
    }
    let running = running == Some("guestToolsRunning");
    match ops_ready {
        Some("true") if power.is_some() => ToolsState::Ready,
        // A host that does not report guestOperationsReady: running tools are enough.
        None if running && power.is_some() => ToolsState::Ready,
        _ => ToolsState::Waiting,
    }
}

/// Waits until VMware Tools run and guest operations are ready.
pub async fn wait_guest_ready(
    s: &Arc<Session>,
    vm: &Moref,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut w = Waiter::new(s.clone()).await?;
    let outcome = async {
        w.watch(
            vm,
            &[
                "runtime.powerState",
                "guest.toolsRunningStatus",
                "guest.guestOperationsReady",
                "runtime.question",
            ],
        )
        .await?;
        loop {
            {
                let state = tools_state(
                    w.text(vm, "runtime.powerState"),
                    w.text(vm, "guest.toolsRunningStatus"),
                    w.text(vm, "guest.guestOperationsReady"),
                    w.value(vm, "runtime.question")
                        .and_then(tasks::question_text),
                );
                match state {
                    ToolsState::Ready => {
                        tracing::info!(vm = name, waited = ?started.elapsed(), "guest operations ready");
                        return Ok(());
                    }
                    ToolsState::Waiting => {}
                    ToolsState::NotRunning(p) => {
                        return Err(VsphereError::Fault {
                            method: "WaitForUpdatesEx".into(),
                            kind: "InvalidPowerState".into(),
                            message: format!(
                                "{name} is {p} while waiting for VMware Tools; power it on first"
                            ),
                        })
                    }
                    ToolsState::Question(q) => {
                        return Err(VsphereError::VmQuestion {
                            vm: name.to_string(),
                            question: q,
                        })
                    }
                }
            }
            if !w.next(deadline).await? {
                return Err(VsphereError::ToolsNotReady {
                    vm: name.to_string(),
                    waited: started.elapsed(),
                });
            }
        }
    }
    .await;
    w.close().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_ready_only_on_a_running_vm_with_guest_operations() {
        use ToolsState::*;
        let on = Some("poweredOn");
        assert_eq!(
            tools_state(on, Some("guestToolsRunning"), Some("true"), None),
            Ready
        );
        assert_eq!(
            tools_state(on, Some("guestToolsRunning"), Some("false"), None),
            Waiting
        );
        assert_eq!(
            tools_state(on, Some("guestToolsRunning"), None, None),
            Ready
        );
        assert_eq!(
            tools_state(on, Some("guestToolsNotRunning"), None, None),
            Waiting
        );
        assert_eq!(
            tools_state(Some("poweredOff"), None, None, None),
            NotRunning("poweredOff".into())
        );
        assert_eq!(
            tools_state(on, None, None, Some("msg.uuid.altered".into())),
            Question("msg.uuid.altered".into())
        );
    }
}
