//! Stages (issue 18): `job_stages` (the stage of each step of a job, written with its job
//! file), `stage_snapshots` (a job's provisioned snapshot: which VM holds it, when, its size
//! if the hypervisor told, when it was removed), `stage_reruns` (a job that runs only the
//! stages after `provision` from its origin's snapshot, pinned to the VM holding it) and the
//! VM holds (`vm_holds`, `hold_requests`: a VM kept on after its job, out of dispatch, until).
//!
//! Invariants:
//! - A stage re-run is created only while its origin's snapshot is recorded and not removed;
//!   otherwise [`RerunFrom::NoSnapshot`] says why (the caller offers a full run).
//! - A snapshot is *in use* while a job re-running from it is not terminal; the retention
//!   ([`Store::stage_snapshots_to_keep`]) always keeps those, and the newest per branch.
//! - A stage re-run is claimed on the VM that holds its snapshot (vSphere and libvirt
//!   snapshots belong to one VM) when that VM is free: `pinned_rerun`, read by the claim in
//!   `vms`. When it is not and the hypervisor can clone, the claim takes another free VM's
//!   slot and records the attempt's [`RerunClone`] (`attempts.clone_*`, contracts §12).
//! - An attempt's clone is named [`RerunClone::name_for`] its job: a VM with that prefix that
//!   no active job's current attempt runs on is an orphan ([`Store::live_clones`]).
//! - A held VM has `vms.job_id` = its ended job, so no claim takes it and the reconciler
//!   (which treats a VM with a job as leased) never powers it off as a stray; the hold's row
//!   survives a restart with the rest of the store.

use super::checks::{delivery_seen, record_delivery};
use super::jobs::{insert_job, job_in, new_job_id, NewJob};
use super::{exec, qrow, qrows, Store};
use crate::{now_ms, Result};
use rusqlite::{params, Connection, OptionalExtension};
use sdci_protocol::JobId;

/// A recorded stage snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSnapshot {
    pub job_id: String,
    pub vm: String,
    pub version: String,
    pub branch: Option<String>,
    pub name: String,
    pub created_ms: i64,
    /// Bytes on the datastore, when the hypervisor reports it.
    pub bytes: Option<i64>,
}

/// What [`Store::rerun_from`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RerunFrom {
    Created(JobId),
    /// The origin's snapshot is gone (or was never taken): why, for the refusal.
    NoSnapshot(String),
    /// No such job.
    NoSuchJob,
    /// This `X-GitHub-Delivery` was seen before.
    DuplicateDelivery,
}

/// A stage re-run's link to its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RerunLink {
    pub job_id: String,
    pub origin: String,
    pub from_stage: String,
    pub snapshot: String,
    pub vm: String,
}

/// The linked clone a stage re-run's attempt runs on, in the slot of the VM it claimed
/// (contracts §12).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RerunClone {
    /// The clone, `sdci-clone-<job id>`.
    pub name: String,
    /// The VM holding the snapshot (busy or held when the attempt was claimed).
    pub source: String,
    /// The provisioned snapshot it is a linked clone of.
    pub snapshot: String,
}

impl RerunClone {
    /// What every clone's name starts with.
    pub const PREFIX: &'static str = "sdci-clone-";

    /// The clone's name for job `job_id`.
    pub fn name_for(job_id: &str) -> String {
        format!("{}{job_id}", Self::PREFIX)
    }

    /// For people: `sdci-clone-<id> (a linked clone of <snapshot> of <source>, in <slot>'s
    /// slot)`.
    pub fn describe(&self, slot: &str) -> String {
        format!(
            "{} (a linked clone of {} of {}, in {slot}'s slot)",
            self.name, self.snapshot, self.source
        )
    }
}

/// A held VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hold {
    pub vm: String,
    pub job_id: String,
    pub who: String,
    pub automatic: bool,
    pub until_ms: i64,
    pub created_ms: i64,
    /// How to reach it (a console URL or ticket), when the hypervisor gave one.
    pub console: Option<String>,
}

fn snap_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StageSnapshot> {
    Ok(StageSnapshot {
        job_id: r.get(0)?,
        vm: r.get(1)?,
        version: r.get(2)?,
        branch: r.get(3)?,
        name: r.get(4)?,
        created_ms: r.get(5)?,
        bytes: r.get(6)?,
    })
}

const SNAP_COLS: &str = "job_id, vm, version, branch, name, created_ms, bytes";

fn hold_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Hold> {
    Ok(Hold {
        vm: r.get(0)?,
        job_id: r.get(1)?,
        who: r.get(2)?,
        automatic: r.get(3)?,
        until_ms: r.get(4)?,
        created_ms: r.get(5)?,
        console: r.get(6)?,
    })
}

const HOLD_COLS: &str = "vm, job_id, who, automatic, until_ms, created_ms, console";

/// A stage re-run's (VM holding its snapshot, snapshot), if job `job_id` is one.
pub(super) fn pinned_rerun(
    tx: &Connection,
    job_id: &str,
) -> rusqlite::Result<Option<(String, String)>> {
    qrow(
        tx,
        "SELECT vm, snapshot FROM stage_reruns WHERE job_id = ?1",
        params![job_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// Records that attempt `attempt` of job `job_id` runs on `clone` (its row exists).
pub(super) fn record_clone(
    tx: &Connection,
    job_id: &str,
    attempt: u32,
    clone: &RerunClone,
) -> rusqlite::Result<()> {
    exec(
        tx,
        "UPDATE attempts SET clone_vm = ?1, clone_source = ?2, clone_snapshot = ?3 \
         WHERE job_id = ?4 AND attempt = ?5",
        params![clone.name, clone.source, clone.snapshot, job_id, attempt],
    )
    .map(drop)
}

impl Store {
    /// Records the stage of each step of job `id`'s job file: (step index, name, stage).
    pub fn set_job_stages(&self, id: &str, steps: &[(String, String)]) -> Result<()> {
        self.tx(|tx| {
            exec(tx, "DELETE FROM job_stages WHERE job_id = ?1", params![id])?;
            for (i, (name, stage)) in steps.iter().enumerate() {
                exec(
                    tx,
                    "INSERT INTO job_stages (job_id, step, name, stage) VALUES (?1, ?2, ?3, ?4)",
                    params![id, i as i64, name, stage],
                )?;
            }
            Ok(())
        })
    }

    /// (step, name, stage) of job `id`'s steps, in order; empty when none were recorded.
    pub fn job_stages(&self, id: &str) -> Result<Vec<(u32, String, String)>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT step, name, stage FROM job_stages WHERE job_id = ?1 ORDER BY step",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
        })
    }

    /// Records job `snap.job_id`'s provisioned snapshot (a second record replaces the first:
    /// a retried attempt snapshots again on its own VM).
    pub fn record_stage_snapshot(&self, snap: &StageSnapshot) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "INSERT INTO stage_snapshots (job_id, vm, version, branch, name, created_ms, bytes) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(job_id) DO UPDATE SET \
                 vm = ?2, version = ?3, branch = ?4, name = ?5, created_ms = ?6, bytes = ?7, \
                 removed_ms = NULL",
                params![
                    snap.job_id,
                    snap.vm,
                    snap.version,
                    snap.branch,
                    snap.name,
                    snap.created_ms,
                    snap.bytes
                ],
            )
            .map(drop)
        })
    }

    /// Job `id`'s provisioned snapshot, if recorded and not removed.
    pub fn stage_snapshot(&self, id: &str) -> Result<Option<StageSnapshot>> {
        self.with(|c| {
            qrow(
                c,
                &format!(
                    "SELECT {SNAP_COLS} FROM stage_snapshots WHERE job_id = ?1 AND removed_ms IS NULL"
                ),
                params![id],
                snap_from_row,
            )
            .optional()
        })
    }

    /// Every stage snapshot not removed, oldest first.
    pub fn stage_snapshots(&self) -> Result<Vec<StageSnapshot>> {
        self.with(|c| {
            qrows(
                c,
                &format!(
                    "SELECT {SNAP_COLS} FROM stage_snapshots WHERE removed_ms IS NULL \
                     ORDER BY created_ms, job_id"
                ),
                [],
                snap_from_row,
            )
        })
    }

    /// Marks job `id`'s snapshot removed (by the retention, or found gone).
    pub fn stage_snapshot_removed(&self, id: &str) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE stage_snapshots SET removed_ms = ?2 WHERE job_id = ?1",
                params![id, now_ms()],
            )
            .map(drop)
        })
    }

    /// The snapshots of pool `version` the retention keeps: those a live job re-runs from, the
    /// newest per branch, then the newest up to `max_count` and no older than `max_age_ms`.
    /// Returns (keep, remove) by name.
    pub fn stage_snapshots_to_keep(
        &self,
        version: &str,
        max_count: usize,
        max_age_ms: i64,
        now: i64,
    ) -> Result<(Vec<StageSnapshot>, Vec<StageSnapshot>)> {
        let all: Vec<StageSnapshot> = self
            .stage_snapshots()?
            .into_iter()
            .filter(|s| s.version == version)
            .collect();
        let in_use: Vec<String> = self.with(|c| {
            qrows(
                c,
                "SELECT DISTINCT r.snapshot FROM stage_reruns r JOIN jobs j ON j.id = r.job_id \
                 WHERE j.state NOT IN ('success','failure','error','canceled')",
                [],
                |r| r.get(0),
            )
        })?;
        Ok(retain(&all, &in_use, max_count, max_age_ms, now))
    }

    /// Queues a re-run of job `source` that runs only the steps from stage `from` on (their
    /// names and stages in `steps`), from `source`'s provisioned snapshot on the VM holding it.
    /// `delivery` (a check-run button) makes a redelivery a no-op.
    pub fn rerun_from(
        &self,
        delivery: Option<&str>,
        source: &str,
        from: &str,
        why: &str,
    ) -> Result<RerunFrom> {
        self.tx(|tx| {
            let now = now_ms();
            let Some(src) = job_in(tx, source)? else {
                return Ok(RerunFrom::NoSuchJob);
            };
            if delivery_seen(tx, delivery)? {
                return Ok(RerunFrom::DuplicateDelivery);
            }
            // A re-run of a re-run starts from the same snapshot (the one its origin took).
            let origin_snapshot: Option<(String, String, String, Option<i64>)> = qrow(
                tx,
                "SELECT s.job_id, s.name, s.vm, s.removed_ms FROM stage_snapshots s \
                 WHERE s.job_id = COALESCE((SELECT origin FROM stage_reruns WHERE job_id = ?1), ?1)",
                params![source],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
            let (origin, snapshot, vm) = match origin_snapshot {
                Some((o, name, vm, None)) => (o, name, vm),
                Some((o, name, _, Some(_))) => {
                    return Ok(RerunFrom::NoSnapshot(format!(
                        "job {o}'s provisioned snapshot {name} was removed by the retention"
                    )))
                }
                None => {
                    return Ok(RerunFrom::NoSnapshot(format!(
                        "job {source} has no provisioned snapshot (its provision stage did not \
                         succeed, or it ran before stages)"
                    )))
                }
            };
            let job = NewJob {
                snapshot: Some(snapshot.clone()),
                update_first: false,
                ..NewJob::again(&src)
            };
            let id = new_job_id(tx, &job.sha)?;
            insert_job(tx, id.as_str(), &job, now)?;
            exec(
                tx,
                "INSERT INTO stage_reruns (job_id, origin, from_stage, snapshot, vm) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id.as_str(), origin, from, snapshot, vm],
            )?;
            let note = format!("re-run of {source} from stage {from} on {vm} ({why})");
            exec(
                tx,
                "UPDATE transitions SET note = ?1 WHERE job_id = ?2",
                params![note, id.as_str()],
            )?;
            record_delivery(tx, delivery, "check_run", Some(&id), now)?;
            Ok(RerunFrom::Created(id))
        })
    }

    /// Job `id`'s link to its origin, when it is a stage re-run.
    pub fn rerun_link(&self, id: &str) -> Result<Option<RerunLink>> {
        self.with(|c| {
            qrow(
                c,
                "SELECT job_id, origin, from_stage, snapshot, vm FROM stage_reruns WHERE job_id = ?1",
                params![id],
                |r| {
                    Ok(RerunLink {
                        job_id: r.get(0)?,
                        origin: r.get(1)?,
                        from_stage: r.get(2)?,
                        snapshot: r.get(3)?,
                        vm: r.get(4)?,
                    })
                },
            )
            .optional()
        })
    }

    /// The clone job `id`'s current attempt runs on, if it runs on one (contracts §12).
    pub fn attempt_clone(&self, id: &str) -> Result<Option<RerunClone>> {
        self.with(|c| {
            qrow(
                c,
                "SELECT a.clone_vm, a.clone_source, a.clone_snapshot FROM attempts a \
                 JOIN jobs j ON j.id = a.job_id AND a.attempt = j.attempts \
                 WHERE a.job_id = ?1 AND a.clone_vm IS NOT NULL",
                params![id],
                |r| {
                    Ok(RerunClone {
                        name: r.get(0)?,
                        source: r.get(1)?,
                        snapshot: r.get(2)?,
                    })
                },
            )
            .optional()
        })
    }

    /// (job, clone) of every active job whose current attempt runs on a clone: the clones the
    /// reconciler keeps (any other `sdci-clone-*` VM of this instance is an orphan).
    pub fn live_clones(&self) -> Result<Vec<(String, String)>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT j.id, a.clone_vm FROM jobs j JOIN attempts a \
                 ON a.job_id = j.id AND a.attempt = j.attempts \
                 WHERE a.clone_vm IS NOT NULL \
                 AND j.state IN ('assigned','booting','running','finishing') ORDER BY j.seq",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }

    /// The stage re-runs of job `id` (re-runs that started from its snapshot), oldest first.
    pub fn reruns_of(&self, id: &str) -> Result<Vec<String>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT r.job_id FROM stage_reruns r JOIN jobs j ON j.id = r.job_id \
                 WHERE r.origin = ?1 ORDER BY j.seq",
                params![id],
                |r| r.get(0),
            )
        })
    }

    /// Asks that job `id`'s VM be held when the job ends, for `secs`, by `who`.
    pub fn request_hold(&self, id: &str, who: &str, secs: u64) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "INSERT INTO hold_requests (job_id, who, secs, requested_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT(job_id) DO UPDATE SET who = ?2, secs = ?3, requested_ms = ?4",
                params![id, who, secs as i64, now_ms()],
            )
            .map(drop)
        })
    }

    /// A hold asked for job `id`: (who, seconds).
    pub fn hold_request(&self, id: &str) -> Result<Option<(String, u64)>> {
        self.with(|c| {
            qrow(
                c,
                "SELECT who, secs FROM hold_requests WHERE job_id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()
        })
    }

    /// Holds `hold.vm` for its ended job: the VM keeps `vms.job_id` (out of dispatch).
    pub fn start_hold(&self, hold: &Hold) -> Result<()> {
        self.tx(|tx| {
            exec(
                tx,
                "INSERT INTO vm_holds (vm, job_id, who, automatic, until_ms, created_ms, console) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(vm) DO UPDATE SET job_id = ?2, \
                 who = ?3, automatic = ?4, until_ms = ?5, created_ms = ?6, console = ?7",
                params![
                    hold.vm,
                    hold.job_id,
                    hold.who,
                    hold.automatic,
                    hold.until_ms,
                    hold.created_ms,
                    hold.console
                ],
            )?;
            exec(
                tx,
                "UPDATE vms SET job_id = ?1, leased_ms = ?2 WHERE name = ?3",
                params![hold.job_id, now_ms(), hold.vm],
            )?;
            Ok(())
        })
    }

    /// Every current hold.
    pub fn holds(&self) -> Result<Vec<Hold>> {
        self.with(|c| {
            qrows(
                c,
                &format!("SELECT {HOLD_COLS} FROM vm_holds ORDER BY until_ms"),
                [],
                hold_from_row,
            )
        })
    }

    /// The hold of job `id`'s VM, if held.
    pub fn hold_of_job(&self, id: &str) -> Result<Option<Hold>> {
        self.with(|c| {
            qrow(
                c,
                &format!("SELECT {HOLD_COLS} FROM vm_holds WHERE job_id = ?1"),
                params![id],
                hold_from_row,
            )
            .optional()
        })
    }

    /// Moves job `id`'s hold to `until_ms` (extend or shorten); false if not held.
    pub fn set_hold_until(&self, id: &str, until_ms: i64) -> Result<bool> {
        self.with(|c| {
            exec(
                c,
                "UPDATE vm_holds SET until_ms = ?2 WHERE job_id = ?1",
                params![id, until_ms],
            )
            .map(|n| n > 0)
        })
    }

    /// Ends the hold of `vm` (after it was powered off): the VM is free again.
    pub fn end_hold(&self, vm: &str) -> Result<()> {
        self.tx(|tx| {
            let job: Option<String> = qrow(
                tx,
                "SELECT job_id FROM vm_holds WHERE vm = ?1",
                params![vm],
                |r| r.get(0),
            )
            .optional()?;
            exec(tx, "DELETE FROM vm_holds WHERE vm = ?1", params![vm])?;
            if let Some(j) = job {
                exec(
                    tx,
                    "UPDATE vms SET job_id = NULL, leased_ms = NULL WHERE name = ?1 AND job_id = ?2",
                    params![vm, j],
                )?;
            }
            Ok(())
        })
    }
}

/// The retention rule (pure): in use and the newest per branch always kept; of the rest, the
/// newest `max_count` no older than `max_age_ms`. Returns (keep, remove), oldest first.
pub fn retain(
    all: &[StageSnapshot],
    in_use: &[String],
    max_count: usize,
    max_age_ms: i64,
    now: i64,
) -> (Vec<StageSnapshot>, Vec<StageSnapshot>) {
    let mut newest_per_branch: std::collections::HashMap<Option<&str>, &StageSnapshot> =
        std::collections::HashMap::new();
    for s in all {
        let e = newest_per_branch.entry(s.branch.as_deref()).or_insert(s);
        if (s.created_ms, &s.job_id) > (e.created_ms, &e.job_id) {
            *e = s;
        }
    }
    let pinned = |s: &StageSnapshot| {
        in_use.contains(&s.name)
            || newest_per_branch
                .get(&s.branch.as_deref())
                .is_some_and(|n| n.job_id == s.job_id)
    };
    let mut by_age: Vec<&StageSnapshot> = all.iter().collect();
    by_age.sort_by_key(|s| std::cmp::Reverse((s.created_ms, s.job_id.clone())));
    let mut keep = Vec::new();
    let mut remove = Vec::new();
    // The kept-anyway ones fill the count first.
    let mut counted = all.iter().filter(|s| pinned(s)).count();
    for s in by_age {
        if pinned(s) {
            keep.push(s.clone());
        } else if counted < max_count && now - s.created_ms <= max_age_ms {
            keep.push(s.clone());
            counted += 1;
        } else {
            remove.push(s.clone());
        }
    }
    keep.reverse();
    remove.reverse();
    (keep, remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(job: &str, branch: &str, at: i64) -> StageSnapshot {
        StageSnapshot {
            job_id: job.into(),
            vm: "Qubes_4.2_a".into(),
            version: "4.2".into(),
            branch: Some(branch.into()),
            name: crate::domain::stages::snapshot_name(job),
            created_ms: at,
            bytes: None,
        }
    }

    fn names(v: &[StageSnapshot]) -> Vec<&str> {
        v.iter().map(|s| s.job_id.as_str()).collect()
    }

    #[test]
    fn retention_removes_by_count_and_age_but_never_one_in_use_or_a_branchs_newest() {
        let all = vec![
            snap("a1", "main", 10),
            snap("a2", "main", 20),
            snap("a3", "main", 30),
            snap("b1", "fix", 15),
        ];
        // Count 2: a3 (newest of main) and b1 (newest of fix) are pinned and fill it.
        let (keep, gone) = retain(&all, &[], 2, 1_000, 40);
        assert_eq!(names(&keep), ["b1", "a3"]);
        assert_eq!(names(&gone), ["a1", "a2"]);
        // In use: a1 stays whatever the limits.
        let (keep, gone) = retain(&all, &[snap("a1", "main", 0).name], 0, 0, 40);
        assert_eq!(names(&keep), ["a1", "b1", "a3"]);
        assert_eq!(names(&gone), ["a2"]);
        // Age: only what is younger than 15 ms (besides the pinned) stays.
        let (keep, gone) = retain(&all, &[], 10, 15, 40);
        assert_eq!(names(&keep), ["b1", "a3"]);
        assert_eq!(names(&gone), ["a1", "a2"]);
        let (keep, _) = retain(&all, &[], 10, 25, 40);
        assert_eq!(names(&keep), ["b1", "a2", "a3"]);
    }
}
