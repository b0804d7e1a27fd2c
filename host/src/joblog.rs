//! The job logs on disk: one text file per job, `{data_dir}/logs/{id}.log`, grown by the event
//! ingest as lines arrive and replaced by dom0's own copy (the authoritative one) when the
//! attempt ends and the two differ.
//!
//! Invariant: `id` is a valid job id (checked by every caller), so it is a safe file name.

use sdci_protocol::{Event, EventKind};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The log file of a job. `id` must already be a valid job id (checked by the caller).
pub fn log_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.log"))
}

/// Appends text to a job's log.
pub fn append_log(dir: &Path, id: &str, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir, id))?;
    f.write_all(text.as_bytes())
}

/// Replaces the streamed log with dom0's copy if they differ. Returns whether it replaced.
pub fn replace_log(dir: &Path, id: &str, authoritative: &[u8]) -> std::io::Result<bool> {
    let path = log_path(dir, id);
    if std::fs::read(&path).ok().as_deref() == Some(authoritative) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{id}.log.tmp"));
    std::fs::write(&tmp, authoritative)?;
    std::fs::rename(&tmp, &path)?;
    Ok(true)
}

/// One event as a line of the text log.
pub fn render(ev: &Event) -> String {
    match &ev.kind {
        EventKind::StepStarted { step, name, argv } => {
            format!("==> step {step} {name}: {}\n", argv.join(" "))
        }
        EventKind::Log { text, .. } => format!("{text}\n"),
        EventKind::StepFinished {
            step,
            status,
            timed_out,
            duration_ms,
        } => format!(
            "<== step {step} exit {status}{} after {:.1}s\n",
            if *timed_out { " (timed out)" } else { "" },
            *duration_ms as f64 / 1000.0
        ),
        EventKind::Result { outcome, reason } => {
            format!("=== result: {}: {reason}\n", outcome.as_str())
        }
    }
}
