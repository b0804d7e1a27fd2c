//! Orchestration: everything that drives VMs and jobs over time, generic over the
//! `Hypervisor` contract (the vim25 client in production, VMware's govmomi simulator through
//! that same client in tests).
//!
//! - [`orchestrator`]: the [`Orchestrator`] — scheduler (claims, dispatch the moment a VM frees)
//!   and the version intake.
//! - [`matrix`]: the commit's `.github/sdci.yml` → one job per cell; a cell's steps, snapshot
//!   and check-run / status name (issue 20).
//! - [`lifecycle`]: one attempt of one job on one VM, phase by phase (and re-adopting one a
//!   previous process left running).
//! - [`leases`]: VM leases written on the VMs, so instances sharing a vSphere keep apart.
//! - [`vm_power`]: the shared VM procedures (boot from a snapshot, shut down with the power-off
//!   fallback, power off quietly), written once.
//! - [`dom0_script`]: commands run in dom0 through guest operations, their output in dom0's log.
//! - [`updates`]: a job's update phase (Qubes updates, then a reboot).
//! - [`holds`]: a job's VM held on after its end for debugging, with a TTL (issue 18).
//! - [`reconcile`]: start-up and periodic repair.
//! - [`rotation`]: golden-snapshot rotation (`save` and its schedules).
//! - [`nightly`]: nightly jobs and the schedule loop.
//! - [`results`]: a job's `results.tar.zst` downloaded after its log, read as hostile input
//!   into test cases and a list of evidence files (issue 19).
//! - [`stages`]: a job's stages in its attempt, the provisioned snapshot, a stage re-run's
//!   steps, the retention of provisioned snapshots (issue 18).
//! - [`statuses`]: the status outbox drained through the GitHub gateway.
//! - [`checks`]: the check-run outbox (contracts §10) and what a check run shows.
//! - [`notifier`]: the Slack outbox.
//!
//! Boundary: this layer uses the store, the gateways and the hub; it never reads an HTTP request
//! (that is `surface`).

pub mod checks;
pub mod dom0_script;
pub mod holds;
pub mod leases;
pub mod lifecycle;
pub mod matrix;
pub mod nightly;
pub mod notifier;
pub mod orchestrator;
pub mod reconcile;
pub mod results;
pub mod rotation;
pub mod stages;
pub mod statuses;
pub mod updates;
pub mod vm_power;

pub use orchestrator::{intake_loop, intake_once, Orchestrator};
