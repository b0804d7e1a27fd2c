//! The VM procedures every orchestration uses, written once: boot from a snapshot (revert →
//! power on → guest operations ready), shut down (guest shutdown, hard power-off at the grace),
//! shut down with the power-off fallback, and power off quietly.
//!
//! Invariants: every call runs under its `[deadlines]` bound; an error says which [`Phase`]
//! failed and keeps the hypervisor's error (so the caller can tell an outage from a bad VM by
//! its `ErrorClass`); nothing here records anything in the store.

use crate::config::Deadlines;
use sdci_vsphere::{ErrorClass, Hypervisor, VsphereError};
use std::future::Future;
use std::time::{Duration, Instant};

/// A step of a VM procedure; its name is also the phase's metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Revert,
    PowerOn,
    GuestReady,
    Shutdown,
    PowerOff,
}

impl Phase {
    /// The metric label (`sdci_phase_duration_seconds{phase=…}`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Revert => "revert",
            Self::PowerOn => "power_on",
            Self::GuestReady => "guest_ready",
            Self::Shutdown => "shutdown",
            Self::PowerOff => "power_off",
        }
    }
}

/// What went wrong in a phase.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{}: {error}", phase.name())]
    Hypervisor {
        phase: Phase,
        #[source]
        error: VsphereError,
    },
    #[error("{} did not finish within {secs}s", phase.name())]
    TimedOut { phase: Phase, secs: u64 },
}

impl VmError {
    /// Who must act: the hypervisor's own class, and a phase past its bound is the VM's fault.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Hypervisor { error, .. } => error.class(),
            Self::TimedOut { .. } => ErrorClass::RetryOtherVm,
        }
    }
}

/// Runs `fut` as `phase` within `secs`.
pub async fn bounded<T>(
    phase: Phase,
    secs: u64,
    fut: impl Future<Output = Result<T, VsphereError>>,
) -> Result<T, VmError> {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(error)) => Err(VmError::Hypervisor { phase, error }),
        Err(_) => Err(VmError::TimedOut { phase, secs }),
    }
}

/// Reverts `vm` to `snapshot` (when given), powers it on and waits until guest operations are
/// ready, each phase under its deadline. `observe` hears each phase's duration (metrics).
pub async fn boot<H: Hypervisor>(
    hv: &H,
    vm: &str,
    snapshot: Option<&str>,
    d: &Deadlines,
    observe: &mut (dyn FnMut(Phase, Duration) + Send),
) -> Result<(), VmError> {
    if let Some(snapshot) = snapshot {
        let t = Instant::now();
        let r = bounded(Phase::Revert, d.revert_secs, hv.revert(vm, snapshot)).await;
        observe(Phase::Revert, t.elapsed());
        r?;
    }
    let t = Instant::now();
    let r = bounded(Phase::PowerOn, d.power_on_secs, hv.power_on(vm)).await;
    observe(Phase::PowerOn, t.elapsed());
    r?;
    let t = Instant::now();
    let ready = Duration::from_secs(d.guest_ready_secs);
    let r = bounded(
        Phase::GuestReady,
        d.guest_ready_secs + 5,
        hv.wait_guest_ready(vm, ready),
    )
    .await;
    observe(Phase::GuestReady, t.elapsed());
    r
}

/// Guest shutdown, hard power-off after `shutdown_grace_secs`, all within `shutdown_secs`. For
/// where a clean disk matters (a snapshot is taken next): a failure is returned.
pub async fn shut_down<H: Hypervisor>(hv: &H, vm: &str, d: &Deadlines) -> Result<(), VmError> {
    let grace = Duration::from_secs(d.shutdown_grace_secs);
    bounded(Phase::Shutdown, d.shutdown_secs, hv.shutdown(vm, grace)).await
}

/// [`shut_down`], and if that fails or times out, a hard power-off ([`power_off_quietly`]):
/// the VM ends off either way (or the reconciler finishes the job).
pub async fn shut_down_or_power_off<H: Hypervisor>(hv: &H, vm: &str, d: &Deadlines) {
    if let Err(e) = shut_down(hv, vm, d).await {
        tracing::warn!(%vm, error = %e, "shutdown failed; powering off");
        power_off_quietly(hv, vm, d.shutdown_secs).await;
    }
}

/// Powers `vm` off within `secs`; a failure is only logged (the reconciler powers off stray
/// VMs).
pub async fn power_off_quietly<H: Hypervisor>(hv: &H, vm: &str, secs: u64) {
    if let Err(e) = bounded(Phase::PowerOff, secs, hv.power_off(vm)).await {
        tracing::warn!(%vm, error = %e, "power-off failed; the reconciler retries");
    }
}
