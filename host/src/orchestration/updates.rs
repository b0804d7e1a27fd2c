//! The update phase of a job with `update = true`: the Qubes updates in dom0 (`[updates]`, run
//! as dom0 scripts whose output heads the job's dom0 log), then a reboot, before the job file is
//! uploaded — the only place a job's updates run (never as job-file steps).

use super::dom0_script::{run_steps, GuestStep, ScriptError};
use super::vm_power;
use super::Orchestrator;
use crate::config::{Config, UpdatesConfig};
use crate::joblog::append_log;
use sdci_vsphere::{GuestAuth, Hypervisor};
use std::time::{Duration, Instant};

/// The update steps, in the order they run: dom0 first, then templates and standalones.
pub fn update_steps(cfg: &UpdatesConfig) -> Vec<GuestStep> {
    let t = Duration::from_secs(cfg.step_timeout_secs);
    vec![
        GuestStep {
            name: "update-dom0".into(),
            argv: cfg.dom0.clone(),
            timeout: t,
            direct: false,
        },
        GuestStep {
            name: "update-templates".into(),
            argv: cfg.templates.clone(),
            timeout: t,
            direct: false,
        },
    ]
}

/// Reboots the VM after updates: guest shutdown (hard power-off after the grace), power on, and
/// wait until guest operations answer again — the shared VM procedures, no revert.
pub async fn reboot<H: Hypervisor>(hv: &H, vm: &str, cfg: &Config) -> Result<(), ScriptError> {
    let d = &cfg.deadlines;
    vm_power::shut_down(hv, vm, d).await?;
    vm_power::boot(hv, vm, None, d, &mut |_, _| {}).await?;
    Ok(())
}

/// The whole update phase of a job with `update = true`, for the lifecycle to call after guest
/// operations are ready and before it uploads the job file: the update steps (their output in
/// the job's dom0 `log.txt`, which `sdci-dom0 launch` appends to later), then the reboot.
/// `sink` receives the log text as it grows, for the host's live copy.
pub async fn update_job_vm<H: Hypervisor>(
    hv: &H,
    vm: &str,
    auth: &GuestAuth,
    cfg: &Config,
    job_id: &sdci_protocol::JobId,
    sink: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<(), ScriptError> {
    let log_dir = sdci_protocol::paths::JobPaths::relative(job_id)
        .dir()
        .to_owned();
    run_steps(
        hv,
        vm,
        auth,
        cfg,
        &log_dir,
        &update_steps(&cfg.updates),
        sink,
    )
    .await?;
    reboot(hv, vm, cfg).await
}

/// The whole budget of a job's update phase (both update steps, the reboot), seconds: the
/// deadline the lifecycle gives [`Orchestrator::update_phase`].
pub fn update_budget_secs(cfg: &Config) -> u64 {
    let d = &cfg.deadlines;
    2 * cfg.updates.step_timeout_secs + d.shutdown_secs + d.power_on_secs + d.guest_ready_secs + 60
}

impl<H: Hypervisor> Orchestrator<H> {
    /// The update phase of a job with `update = true`, for the lifecycle: call it after guest
    /// operations are ready and before the job file is uploaded, under its own deadline
    /// ([`update_budget_secs`]), e.g. through the lifecycle's `phase("updates", ...)`. The
    /// steps' output goes to the job's dom0 `log.txt` (which `sdci-dom0 launch` appends to, so
    /// dom0's log shows the updates before the build steps) and, as it grows, to the host's log
    /// of the job. A failure is returned as a vSphere-style fault (`UpdateFailed`): an
    /// infrastructure failure of the attempt, never the project's `failure`.
    pub async fn update_phase(
        &self,
        vm: &str,
        job_id: &sdci_protocol::JobId,
    ) -> sdci_vsphere::hypervisor::Result<()> {
        let log_dir = self.hub.cfg.log_dir();
        let _ = append_log(
            &log_dir,
            job_id,
            &format!("=== applying Qubes updates on {vm}, then rebooting it\n"),
        );
        let mut sink = |b: &[u8]| {
            let _ = append_log(&log_dir, job_id, &String::from_utf8_lossy(b));
        };
        let started = Instant::now();
        let r = update_job_vm(&*self.hv, vm, &self.auth, &self.hub.cfg, job_id, &mut sink).await;
        self.hub
            .metrics
            .observe_phase("updates", started.elapsed().as_secs_f64());
        match r {
            Ok(()) => {
                self.hub.metrics.count("job_updates_ok");
                Ok(())
            }
            Err(e) => {
                self.hub.metrics.count("job_updates_failed");
                let _ = append_log(
                    &self.hub.cfg.log_dir(),
                    job_id,
                    &format!("=== updates failed: {e}\n"),
                );
                Err(sdci_vsphere::VsphereError::Fault {
                    method: "updates".into(),
                    kind: "UpdateFailed".into(),
                    message: e.to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_update_steps_are_the_qubes_salt_states_dom0_first() {
        let s = update_steps(&UpdatesConfig::default());
        assert_eq!(s[0].name, "update-dom0");
        assert_eq!(
            s[0].argv.join(" "),
            "sudo qubesctl --show-output state.sls update.qubes-dom0"
        );
        assert_eq!(
            s[1].argv.join(" "),
            "sudo qubesctl --show-output --skip-dom0 --templates --standalones state.sls \
             update.qubes-vm"
        );
    }
}
