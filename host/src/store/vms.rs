//! VMs, pools and rotations: the `vms`, `pools` and `rotation_runs` tables. Every lease of a VM
//! — by a job (a claim) or by a golden-snapshot rotation — is taken and released here, so "one
//! VM, one lease" is decided in one file.
//!
//! Invariants:
//! - A lease is `vms.job_id`: a job id, or a rotation id (`rotation-…`). It is taken in one
//!   `BEGIN IMMEDIATE` transaction and only while nothing else holds the VM.
//! - A job claims a VM only if the hypervisor just reported it off, no lease holds it, it is not
//!   quarantined and no running rotation has reserved it (`vms.reserved_by`); FIFO by `jobs.seq`;
//!   never a VM the job already failed on while the pool has untried VMs left.
//! - A stage re-run takes the VM holding its snapshot when it is free; else, only when the caller
//!   says the hypervisor can clone, another free VM's *slot* (leased to it like any claim, kept
//!   off) with the clone it runs on recorded on the attempt; else it waits (contracts §12).
//! - A rotation's reservation counts only while the rotation runs (not ended, within its
//!   deadline); the leases of a rotation whose process died or whose deadline passed are
//!   released by [`Store::release_stale_rotations`].

use super::jobs::{job_from_row, transition, JobRow, JOB_COLS};
use super::stages::{pinned_rerun, record_clone, RerunClone};
use super::{exec, qrow, qrows, sha256_hex, Store};
use crate::{now_ms, HostError, Result};
use rusqlite::{params, OptionalExtension};
use std::path::Path;

/// A successful claim: the job now holds the VM.
#[derive(Debug, Clone)]
pub struct Claim {
    pub job: JobRow,
    /// The VM leased to the job (on a clone: the VM whose slot it takes, kept off).
    pub vm: String,
    pub attempt: u32,
    /// A stage re-run whose snapshot's VM was busy: the linked clone it runs on instead.
    pub clone: Option<RerunClone>,
}

impl Claim {
    /// The VM the attempt runs on: the clone, if it has one, else the claimed VM.
    pub fn runs_on(&self) -> &str {
        self.clone.as_ref().map_or(&self.vm, |c| &c.name)
    }
}

/// A VM as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    pub name: String,
    pub pool: String,
    pub job_id: Option<String>,
    pub consecutive_failures: u32,
    pub quarantined: bool,
    pub last_error: Option<String>,
}

impl VmRow {
    /// `quarantined`, `leased` (a job or a rotation holds it) or `free`.
    pub fn state(&self) -> &'static str {
        if self.quarantined {
            "quarantined"
        } else if self.job_id.is_some() {
            "leased"
        } else {
            "free"
        }
    }
}

/// A golden-snapshot rotation starting (`rotation_runs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationRun {
    pub id: String,
    pub version: String,
    pub snapshot: String,
    pub from_snapshot: String,
    pub base: String,
    pub owner_pid: u32,
    pub started_ms: i64,
    pub deadline_ms: i64,
}

/// Whether process `pid` exists on this machine (rotations run on the host itself).
fn pid_alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl Store {
    /// Makes sure every VM of a pool has a row (VMs found in vSphere by prefix).
    pub fn register_vms(&self, pool: &str, names: &[String]) -> Result<()> {
        self.tx(|tx| {
            for n in names {
                exec(
                    tx,
                    "INSERT INTO vms (name, pool) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
                    params![n, pool],
                )?;
            }
            Ok(())
        })
    }

    pub fn vms(&self) -> Result<Vec<VmRow>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT name, pool, job_id, consecutive_failures, quarantined, last_error \
                 FROM vms ORDER BY pool, name",
                [],
                |r| {
                    Ok(VmRow {
                        name: r.get(0)?,
                        pool: r.get(1)?,
                        job_id: r.get(2)?,
                        consecutive_failures: r.get(3)?,
                        quarantined: r.get(4)?,
                        last_error: r.get(5)?,
                    })
                },
            )
        })
    }

    /// Lifts a VM's quarantine and clears its failure count. `false` if no such VM.
    pub fn unquarantine(&self, vm: &str) -> Result<bool> {
        self.with(|c| {
            exec(
                c,
                "UPDATE vms SET quarantined = 0, consecutive_failures = 0 WHERE name = ?1",
                params![vm],
            )
            .map(|n| n > 0)
        })
    }

    /// The pool's current golden snapshot, seeding it from the configuration the first time.
    pub fn golden_snapshot(&self, version: &str, configured: &str) -> Result<String> {
        self.tx(|tx| {
            exec(
                tx,
                "INSERT INTO pools (version, golden_snapshot, updated_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(version) DO NOTHING",
                params![version, configured, now_ms()],
            )?;
            qrow(
                tx,
                "SELECT golden_snapshot FROM pools WHERE version = ?1",
                params![version],
                |r| r.get(0),
            )
        })
    }

    pub fn set_golden_snapshot(&self, version: &str, snapshot: &str) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "INSERT INTO pools (version, golden_snapshot, updated_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(version) DO UPDATE SET golden_snapshot = ?2, updated_ms = ?3",
                params![version, snapshot, now_ms()],
            )
            .map(drop)
        })
    }

    /// Claims the oldest claimable queued job of `version` and a free VM for it, in one
    /// transaction. `powered_off` are the pool VMs vSphere reports powered off right now; a VM
    /// is taken only from that list, and only if no job holds it, it is not quarantined and no
    /// running rotation has reserved it (`vms.reserved_by`, see `rotation`). A job
    /// is not given a VM it already failed on while it has untried VMs left in the pool.
    /// `event_secret` is stored hashed for the attempt's event stream. No clones: see
    /// [`Store::claim_with`].
    pub fn claim(
        &self,
        version: &str,
        powered_off: &[String],
        pool_size: usize,
        event_secret: &str,
        job_deadline_ms: i64,
    ) -> Result<Option<Claim>> {
        self.claim_with(
            version,
            powered_off,
            pool_size,
            event_secret,
            job_deadline_ms,
            false,
        )
    }

    /// [`Store::claim`], where `clones` says whether the hypervisor can run a stage re-run on a
    /// linked clone of its snapshot (`Hypervisor::can_clone`; the store knows no hypervisor). A
    /// re-run whose snapshot's VM is free takes that VM; otherwise, with `clones`, it takes the
    /// slot of any other free VM (the claim records the clone, contracts §12), and without, it
    /// waits for the snapshot's VM.
    pub fn claim_with(
        &self,
        version: &str,
        powered_off: &[String],
        pool_size: usize,
        event_secret: &str,
        job_deadline_ms: i64,
        clones: bool,
    ) -> Result<Option<Claim>> {
        self.tx(|tx| {
            let mut free: Vec<String> = Vec::new();
            let now = now_ms();
            for name in powered_off {
                // Reserved: a running rotation (not ended, within its deadline) waits for it.
                let ok: Option<(Option<String>, bool, bool)> = qrow(
                    tx,
                    "SELECT v.job_id, v.quarantined, EXISTS (SELECT 1 FROM rotation_runs r \
                     WHERE r.id = v.reserved_by AND r.ended_ms IS NULL AND r.deadline_ms >= ?2) \
                     FROM vms v WHERE v.name = ?1",
                    params![name, now],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
                if let Some((None, false, false)) = ok {
                    free.push(name.clone());
                }
            }
            if free.is_empty() {
                return Ok(None);
            }
            let queued: Vec<JobRow> = qrows(
                tx,
                &format!(
                    "SELECT {JOB_COLS} FROM jobs WHERE state = 'queued' AND version = ?1 \
                     AND cancel_requested IS NULL \
                     AND (not_before_ms IS NULL OR not_before_ms <= ?2) ORDER BY seq"
                ),
                params![version, now],
                job_from_row,
            )?;
            for job in queued {
                let failed: Vec<String> = qrows(
                    tx,
                    "SELECT DISTINCT vm FROM attempts WHERE job_id = ?1 AND result = 'infra'",
                    params![job.id.as_str()],
                    |r| r.get(0),
                )?;
                let slot = match free.iter().find(|v| !failed.contains(v)) {
                    Some(v) => Some(v.clone()),
                    // Every pool VM was tried: any free one will do.
                    None if failed.len() >= pool_size => Some(free[0].clone()),
                    None => None,
                };
                // A stage re-run runs on the VM holding its snapshot, or in another VM's slot
                // on a linked clone of it (issue 18, contracts §12).
                let (vm, clone) = match (pinned_rerun(tx, job.id.as_str())?, slot) {
                    (Some((p, _)), _) if free.contains(&p) => (p, None),
                    (Some((source, snapshot)), Some(v)) if clones => (
                        v,
                        Some(RerunClone {
                            name: RerunClone::name_for(job.id.as_str()),
                            source,
                            snapshot,
                        }),
                    ),
                    (Some(_), _) => continue,
                    (None, Some(v)) => (v, None),
                    (None, None) => continue,
                };
                let now = now_ms();
                let attempt = job.attempts + 1;
                exec(tx,
                    "UPDATE vms SET job_id = ?1, leased_ms = ?2 WHERE name = ?3",
                    params![job.id.as_str(), now, vm],
                )?;
                exec(tx,
                    "UPDATE jobs SET state = 'assigned', vm = ?1, attempts = ?2, pid = NULL, \
                     event_secret_hash = ?3, event_next_seq = 0, updated_ms = ?4, \
                     deadline_ms = ?5, note = NULL WHERE id = ?6",
                    params![
                        vm,
                        attempt,
                        sha256_hex(event_secret),
                        now,
                        job_deadline_ms,
                        job.id.as_str()
                    ],
                )?;
                exec(tx,
                    "INSERT INTO attempts (job_id, attempt, vm, started_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![job.id.as_str(), attempt, vm, now],
                )?;
                if let Some(c) = &clone {
                    record_clone(tx, job.id.as_str(), attempt, c)?;
                }
                let on = clone.as_ref().map_or_else(|| vm.clone(), |c| c.describe(&vm));
                transition(
                    tx,
                    &job.id,
                    Some("queued"),
                    "assigned",
                    Some(&format!("attempt {attempt} on {on}")),
                    now,
                )?;
                let job = qrow(tx,
                    &format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"),
                    params![job.id.as_str()],
                    job_from_row,
                )?;
                return Ok(Some(Claim {
                    job,
                    vm,
                    attempt,
                    clone,
                }));
            }
            Ok(None)
        })
    }

    /// The earliest time a queued job waits for (`not_before_ms` in the future), to wake the
    /// scheduler then.
    pub fn next_not_before(&self) -> Result<Option<i64>> {
        self.with(|c| {
            qrow(
                c,
                "SELECT MIN(not_before_ms) FROM jobs WHERE state = 'queued' \
                 AND not_before_ms > ?1",
                params![now_ms()],
                |r| r.get(0),
            )
        })
    }

    /// Pools whose every registered VM is quarantined: (pool, VMs).
    pub fn fully_quarantined_pools(&self) -> Result<Vec<(String, u32)>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT pool, COUNT(*) FROM vms GROUP BY pool \
                 HAVING COUNT(*) > 0 AND SUM(quarantined) = COUNT(*)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }

    /// Releases a VM's lease without touching the job (used once a VM is known off).
    pub fn release_vm(&self, vm: &str) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE vms SET job_id = NULL, leased_ms = NULL WHERE name = ?1",
                params![vm],
            )
            .map(drop)
        })
    }

    /// Records a rotation as running.
    pub fn rotation_begin(&self, run: &RotationRun) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "INSERT INTO rotation_runs (id, version, snapshot, from_snapshot, base, \
                 owner_pid, started_ms, deadline_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    run.id,
                    run.version,
                    run.snapshot,
                    run.from_snapshot,
                    run.base,
                    i64::from(run.owner_pid),
                    run.started_ms,
                    run.deadline_ms
                ],
            )
            .map(drop)
        })
    }

    /// Releases the leases of rotations that can no longer be running (their process is gone, or
    /// their deadline passed) and marks those runs abandoned. Returns (rotation, VMs released,
    /// why) for each.
    pub fn release_stale_rotations(&self) -> Result<Vec<(String, Vec<String>, &'static str)>> {
        self.tx(|tx| {
            let now = now_ms();
            let runs: Vec<(String, i64, i64)> = qrows(
                tx,
                "SELECT id, owner_pid, deadline_ms FROM rotation_runs WHERE ended_ms IS NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let mut released = Vec::new();
            for (id, pid, deadline) in runs {
                let ours = i64::from(std::process::id()) == pid;
                if (ours || pid_alive(pid)) && now <= deadline {
                    continue;
                }
                let why = if now > deadline {
                    "its deadline passed"
                } else {
                    "its process is gone"
                };
                let vms: Vec<String> = qrows(
                    tx,
                    "SELECT name FROM vms WHERE job_id = ?1",
                    params![id],
                    |r| r.get(0),
                )?;
                unlease(tx, &id)?;
                exec(
                    tx,
                    "UPDATE rotation_runs SET ended_ms = ?1, result = 'abandoned', error = ?2 \
                     WHERE id = ?3",
                    params![now, why, id],
                )?;
                released.push((id, vms, why));
            }
            Ok(released)
        })
    }

    /// Whether a live rotation holds `vm` (the reconciler must not power it off).
    pub fn rotation_holds(&self, vm: &str) -> Result<bool> {
        let row: Option<(i64, i64)> = self.with(|c| {
            qrow(
                c,
                "SELECT r.owner_pid, r.deadline_ms FROM vms v JOIN rotation_runs r \
                 ON r.id = v.job_id WHERE v.name = ?1 AND r.ended_ms IS NULL",
                params![vm],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })?;
        Ok(row.is_some_and(|(pid, deadline)| pid_alive(pid) && now_ms() <= deadline))
    }

    /// Rotations by (version, result), `running` for those not ended; for `/metrics`.
    pub fn rotation_counts(&self) -> Result<Vec<(String, String, i64)>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT version, COALESCE(result, 'running'), COUNT(*) FROM rotation_runs \
                 GROUP BY version, result",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
        })
    }

    /// Tries to lease `vm` for rotation `id`: only if no job or rotation holds it and it is not
    /// quarantined. `Err` with a message if it is quarantined (waiting cannot help).
    pub fn rotation_try_lease(&self, vm: &str, id: &str) -> Result<bool> {
        let leased = self.tx(|tx| {
            let row: Option<(Option<String>, bool)> = qrow(
                tx,
                "SELECT job_id, quarantined FROM vms WHERE name = ?1",
                params![vm],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
            match row {
                None => Ok(None),
                Some((_, true)) => Ok(Some(None)),
                Some((Some(_), false)) => Ok(Some(Some(false))),
                Some((None, false)) => exec(
                    tx,
                    "UPDATE vms SET job_id = ?1, leased_ms = ?2, reserved_by = NULL \
                     WHERE name = ?3 AND job_id IS NULL",
                    params![id, now_ms(), vm],
                )
                .map(|n| Some(Some(n == 1))),
            }
        })?;
        match leased {
            None => Err(HostError::Invalid(format!(
                "{vm} is not registered in the store"
            ))),
            Some(None) => Err(HostError::Invalid(format!(
                "{vm} is quarantined: lift it (sdci-host vms unquarantine {vm}) or take it out \
                 of the pool, then save again"
            ))),
            Some(Some(leased)) => Ok(leased),
        }
    }

    /// Reserves `vm` for rotation `id` while it waits for the VM (a claim gives a reserved VM to
    /// no job), unless another running rotation reserved it first. Cleared by the lease, by
    /// [`Store::rotation_unreserve`], and with the rotation's leases.
    pub fn rotation_reserve(&self, vm: &str, id: &str) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE vms SET reserved_by = ?1 WHERE name = ?2 AND (reserved_by IS NULL \
                 OR reserved_by NOT IN (SELECT id FROM rotation_runs WHERE ended_ms IS NULL))",
                params![id, vm],
            )
            .map(drop)
        })
    }

    /// Drops rotation `id`'s reservation of `vm` (it gave up waiting).
    pub fn rotation_unreserve(&self, vm: &str, id: &str) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE vms SET reserved_by = NULL WHERE name = ?1 AND reserved_by = ?2",
                params![vm, id],
            )
            .map(drop)
        })
    }

    /// Ends rotation `id` with `result` (`ok`, `failed`): its leases and reservations go.
    pub fn rotation_end(&self, id: &str, result: &str, error: Option<&str>) -> Result<()> {
        self.tx(|tx| {
            unlease(tx, id)?;
            exec(
                tx,
                "UPDATE rotation_runs SET ended_ms = ?1, result = ?2, error = ?3 WHERE id = ?4",
                params![now_ms(), result, error, id],
            )
            .map(drop)
        })
    }
}

/// Drops rotation `id`'s leases and reservations.
fn unlease(tx: &rusqlite::Connection, id: &str) -> rusqlite::Result<()> {
    exec(
        tx,
        "UPDATE vms SET job_id = NULL, leased_ms = NULL WHERE job_id = ?1",
        params![id],
    )?;
    exec(
        tx,
        "UPDATE vms SET reserved_by = NULL WHERE reserved_by = ?1",
        params![id],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{test_job as job, test_store as open};
    use super::*;

    #[test]
    fn a_vm_reserved_by_a_running_rotation_is_given_to_no_job() {
        let (_dir, s) = open();
        s.register_vms("4.2", &["a".into()]).unwrap();
        s.insert_job(&job('1', "main")).unwrap();
        s.rotation_begin(&RotationRun {
            id: "rotation-x".into(),
            version: "4.2".into(),
            snapshot: "update_1".into(),
            from_snapshot: "g".into(),
            base: "g".into(),
            owner_pid: 1,
            started_ms: 0,
            deadline_ms: now_ms() + 3_600_000,
        })
        .unwrap();
        s.rotation_reserve("a", "rotation-x").unwrap();
        let off = ["a".to_string()];
        assert!(
            s.claim("4.2", &off, 1, "s", i64::MAX).unwrap().is_none(),
            "claimed a VM the rotation waits for"
        );
        // Once the rotation has ended, its reservation no longer counts.
        s.with(|c| c.execute("UPDATE rotation_runs SET ended_ms = 1", []))
            .unwrap();
        assert!(s.claim("4.2", &off, 1, "s", i64::MAX).unwrap().is_some());
    }

    /// A finished job with its provisioned snapshot on VM `a`, and a queued re-run of it.
    fn rerun_of_a_snapshot_on_a(s: &Store) -> (String, String) {
        s.register_vms("4.2", &["a".into(), "b".into()]).unwrap();
        let origin = s.insert_job(&job('1', "main")).unwrap().to_string();
        s.finish(&origin, crate::domain::JobState::Success, "passed", true)
            .unwrap();
        let snapshot = crate::domain::stages::snapshot_name(&origin);
        s.record_stage_snapshot(&crate::store::StageSnapshot {
            job_id: origin.clone(),
            vm: "a".into(),
            version: "4.2".into(),
            branch: Some("main".into()),
            name: snapshot.clone(),
            created_ms: 1,
            bytes: None,
        })
        .unwrap();
        let rerun = match s.rerun_from(None, &origin, "test", "test").unwrap() {
            crate::store::RerunFrom::Created(id) => id.to_string(),
            other => panic!("{other:?}"),
        };
        (rerun, snapshot)
    }

    #[test]
    fn a_rerun_whose_snapshots_vm_is_busy_takes_another_vms_slot_on_a_clone_only_if_clones_are_allowed(
    ) {
        let (_d, s) = open();
        let (rerun, snapshot) = rerun_of_a_snapshot_on_a(&s);
        let only_b = ["b".to_string()];
        assert!(
            s.claim_with("4.2", &only_b, 2, "s", i64::MAX, false)
                .unwrap()
                .is_none(),
            "without clones the re-run waits for a"
        );
        let c = s
            .claim_with("4.2", &only_b, 2, "s", i64::MAX, true)
            .unwrap()
            .unwrap();
        let clone = RerunClone {
            name: format!("sdci-clone-{rerun}"),
            source: "a".into(),
            snapshot,
        };
        assert_eq!((c.job.id.as_str(), c.vm.as_str()), (rerun.as_str(), "b"));
        assert_eq!(c.clone.as_ref(), Some(&clone));
        assert_eq!(c.runs_on(), clone.name);
        assert_eq!(s.attempt_clone(&rerun).unwrap(), Some(clone.clone()));
        assert_eq!(s.live_clones().unwrap(), vec![(rerun.clone(), clone.name)]);
        assert_eq!(s.vms().unwrap()[1].job_id.as_deref(), Some(rerun.as_str()));
    }

    #[test]
    fn an_infrastructure_failure_on_a_clone_is_not_counted_against_the_vm_whose_slot_it_took() {
        let (_d, s) = open();
        let (rerun, _) = rerun_of_a_snapshot_on_a(&s);
        let only_b = ["b".to_string()];
        let c = s
            .claim_with("4.2", &only_b, 2, "s", i64::MAX, true)
            .unwrap()
            .unwrap();
        assert!(c.clone.is_some());
        s.infra_failure(&rerun, "the clone would not power on", 3, 1)
            .unwrap();
        let b = s
            .vms()
            .unwrap()
            .into_iter()
            .find(|v| v.name == "b")
            .unwrap();
        assert_eq!(
            (b.consecutive_failures, b.quarantined, b.job_id),
            (0, false, None),
            "b lent its slot and was never touched"
        );
        // The same failure of a job that ran on b itself counts (and, at 1, quarantines).
        let other = s.insert_job(&job('2', "main")).unwrap().to_string();
        let c = s
            .claim_with("4.2", &only_b, 2, "s", i64::MAX, true)
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.job.id.as_str(), c.clone.is_none()),
            (other.as_str(), true)
        );
        s.infra_failure(&other, "b would not power on", 3, 1)
            .unwrap();
        let b = s
            .vms()
            .unwrap()
            .into_iter()
            .find(|v| v.name == "b")
            .unwrap();
        assert_eq!((b.consecutive_failures, b.quarantined), (1, true));
    }

    #[test]
    fn a_rerun_whose_snapshots_vm_is_free_takes_that_vm_without_a_clone() {
        let (_d, s) = open();
        let (rerun, _) = rerun_of_a_snapshot_on_a(&s);
        let both = ["b".to_string(), "a".to_string()];
        let c = s
            .claim_with("4.2", &both, 2, "s", i64::MAX, true)
            .unwrap()
            .unwrap();
        assert_eq!((c.job.id.as_str(), c.vm.as_str()), (rerun.as_str(), "a"));
        assert_eq!(c.clone, None);
        assert_eq!(s.attempt_clone(&rerun).unwrap(), None);
        assert!(s.live_clones().unwrap().is_empty());
    }

    #[test]
    fn a_vm_is_claimed_by_one_job_only() {
        let (_d, s) = open();
        s.register_vms("4.2", &["a".into()]).unwrap();
        s.insert_job(&job('a', "x")).unwrap();
        s.insert_job(&job('b', "y")).unwrap();
        let c = s.claim("4.2", &["a".into()], 1, "sec", 0).unwrap().unwrap();
        assert_eq!(c.vm, "a");
        assert!(s
            .claim("4.2", &["a".into()], 1, "sec", 0)
            .unwrap()
            .is_none());
    }

    #[test]
    fn claims_are_fifo_within_a_version() {
        let (_d, s) = open();
        s.register_vms("4.2", &["a".into(), "b".into()]).unwrap();
        let first = s.insert_job(&job('a', "x")).unwrap();
        let second = s.insert_job(&job('b', "y")).unwrap();
        let vms = ["a".to_string(), "b".to_string()];
        assert_eq!(
            s.claim("4.2", &vms, 2, "s", 0).unwrap().unwrap().job.id,
            first
        );
        assert_eq!(
            s.claim("4.2", &vms[1..], 2, "s", 0)
                .unwrap()
                .unwrap()
                .job
                .id,
            second
        );
    }

    #[test]
    fn a_stale_lease_of_a_dead_process_is_released() {
        let (_dir, store) = open();
        store.register_vms("4.2", &["a".into()]).unwrap();
        // A pid that cannot exist (above the kernel's pid_max).
        store
            .rotation_begin(&RotationRun {
                id: "rotation-x".into(),
                version: "4.2".into(),
                snapshot: "update_1".into(),
                from_snapshot: "g".into(),
                base: "g".into(),
                owner_pid: 99_999_999,
                started_ms: 0,
                deadline_ms: now_ms() + 3_600_000,
            })
            .unwrap();
        assert!(store.rotation_try_lease("a", "rotation-x").unwrap());
        assert!(
            !store.rotation_try_lease("a", "rotation-y").unwrap(),
            "leased twice"
        );
        assert!(
            !store.rotation_holds("a").unwrap(),
            "a dead rotation holds nothing"
        );
        let released = store.release_stale_rotations().unwrap();
        assert_eq!(released[0].1, vec!["a".to_string()]);
        assert_eq!(store.vms().unwrap()[0].job_id, None);
    }
}
