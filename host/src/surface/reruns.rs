//! Re-runs from a stage (issue 18), one rule for every surface that asks for one: `sdci-host
//! jobs rerun ID --from STAGE`, the check run's "Re-run tests" button (`webhook`) and the job
//! page. The job must have stages with `STAGE` right after `provision`, and its provisioned
//! snapshot (or its origin's, for a re-run of a re-run) must still exist; otherwise the answer
//! is a refusal that says why and offers the full run (`jobs rerun ID`, the "Re-run" button).
//! The full run ([`rerun`]) is here too, so the CLI and the job page call one rule.

use crate::domain::stages;
use crate::store::{Rerun, RerunFrom, Store};
use crate::Result;
use sdci_protocol::JobId;

/// What a stage re-run request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Queued(JobId),
    /// Refused: the text to show (it names the full run).
    Refused(String),
    NoSuchJob,
    DuplicateDelivery,
}

/// Queues a re-run of job `id` from stage `from`, or says why not.
pub fn rerun_from(
    store: &Store,
    delivery: Option<&str>,
    id: &str,
    from: &str,
    why: &str,
) -> Result<Answer> {
    let refuse = |what: String| {
        Answer::Refused(format!(
            "cannot re-run job {id} from stage {from:?}: {what}; a full run is `sdci-host jobs \
             rerun {id}` (the check run's \"Re-run\")"
        ))
    };
    // The stages the origin ran with (a re-run of a re-run: the first job's).
    let origin = match store.rerun_link(id)? {
        Some(l) => l.origin,
        None => id.to_owned(),
    };
    let of: Vec<String> = store
        .job_stages(&origin)?
        .into_iter()
        .map(|(_, _, s)| s)
        .collect();
    if store.job(id)?.is_none() {
        return Ok(Answer::NoSuchJob);
    }
    if let Err(e) = stages::steps_from(&of, from) {
        return Ok(refuse(e));
    }
    Ok(match store.rerun_from(delivery, id, from, why)? {
        RerunFrom::Created(j) => Answer::Queued(j),
        RerunFrom::NoSnapshot(w) => refuse(w),
        RerunFrom::NoSuchJob => Answer::NoSuchJob,
        RerunFrom::DuplicateDelivery => Answer::DuplicateDelivery,
    })
}

/// Queues a full re-run of job `id` (a new job like it, `store::checks::rerun_job`): `None` when
/// there is no such job.
pub fn rerun(store: &Store, event: &str, id: &str, why: &str) -> Result<Option<JobId>> {
    Ok(match store.rerun_job(None, event, id, why)? {
        Rerun::Created(mut ids) if !ids.is_empty() => Some(ids.remove(0)),
        _ => None,
    })
}
