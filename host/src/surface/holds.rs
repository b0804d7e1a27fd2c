//! `sdci-host jobs hold ID [--for 4h]`, `jobs release ID` and what `sdci-host vms` shows of
//! holds and provisioned snapshots (issue 18). A running job's hold is a request applied when it
//! ends (`orchestration::holds`); an ended, held job's hold is extended (or, by `release`, ended:
//! its TTL set to now). Both write the store only: the caller then wakes the running service
//! (`cli::wake`, i.e. `POST /api/v1/wake`; in-process, `Hub::wake_all`), whose holds' loop powers
//! the VM off at once.

use crate::orchestration::holds::left;
use crate::store::Store;
use crate::{now_ms, HostError, Result};
use std::fmt::Write;

/// `4h`, `30m`, `90s`, `1h30m` or bare seconds; at least a second, at most a week.
pub fn parse_for(text: &str) -> std::result::Result<u64, String> {
    let bad = || format!("--for {text:?}: a duration such as 4h, 30m, 1h30m or 900 (seconds)");
    if let Ok(n) = text.parse::<u64>() {
        return (1..=7 * 86_400).contains(&n).then_some(n).ok_or_else(bad);
    }
    let (mut total, mut num) = (0u64, String::new());
    for c in text.chars() {
        match c {
            '0'..='9' => num.push(c),
            'h' | 'm' | 's' if !num.is_empty() => {
                let n: u64 = num.parse().map_err(|_| bad())?;
                total += n * match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                num.clear();
            }
            _ => return Err(bad()),
        }
    }
    if !num.is_empty() || !(1..=7 * 86_400).contains(&total) {
        return Err(bad());
    }
    Ok(total)
}

/// Holds (or asks to hold) job `id`'s VM for `secs`, by `who`; what to print.
pub fn hold(store: &Store, id: &str, secs: u64, who: &str) -> Result<String> {
    let job = store
        .job(id)?
        .ok_or_else(|| HostError::NoSuchJob(id.to_owned()))?;
    let now = now_ms();
    if !job.state.is_terminal() {
        store.request_hold(id, who, secs)?;
        return Ok(format!(
            "{id}: its VM will be held for {} when the job ends",
            left(now + secs as i64 * 1000, now)
        ));
    }
    match store.hold_of_job(id)? {
        Some(h) => {
            let until = now + secs as i64 * 1000;
            store.set_hold_until(id, until)?;
            Ok(format!(
                "{id}: VM {} held until {} ({})",
                h.vm,
                sdci_protocol::time::Utc::from_unix_millis(until).rfc3339(),
                left(until, now)
            ))
        }
        None => Err(HostError::Invalid(format!(
            "job {id} already ended ({}) and its VM was not kept on; a hold applies when a \
             job ends (ask while it runs, or set hold_on_failure for its pool)",
            job.state.as_str()
        ))),
    }
}

/// Ends job `id`'s hold now (the service's holds' loop powers the VM off once woken).
pub fn release(store: &Store, id: &str) -> Result<String> {
    match store.hold_of_job(id)? {
        Some(h) => {
            store.set_hold_until(id, now_ms())?;
            Ok(format!(
                "{id}: released; the running service powers VM {} off at once",
                h.vm
            ))
        }
        None if store.hold_request(id)?.is_some() => {
            store.request_hold(id, "released", 0)?;
            Ok(format!("{id}: the hold asked for is withdrawn"))
        }
        None => Err(HostError::Invalid(format!("job {id} holds no VM"))),
    }
}

/// The lines `sdci-host vms` adds: each hold (who, until, how to reach it) and each pool's
/// provisioned snapshots with their disk cost when the hypervisor told it.
pub fn vms_lines(store: &Store, pools: &[String]) -> Result<String> {
    let mut out = String::new();
    let now = now_ms();
    let snaps = store.stage_snapshots()?;
    for p in pools {
        let mine: Vec<_> = snaps.iter().filter(|s| &s.version == p).collect();
        let known: Vec<i64> = mine.iter().filter_map(|s| s.bytes).collect();
        let cost = if mine.is_empty() {
            String::new()
        } else if known.len() == mine.len() {
            format!(", {} MiB", known.iter().sum::<i64>() / (1 << 20))
        } else {
            ", disk cost not reported by the hypervisor".to_owned()
        };
        let _ = writeln!(
            out,
            "pool {p}: {} provisioned snapshot(s){cost}",
            mine.len()
        );
    }
    for h in store.holds()? {
        let _ = writeln!(
            out,
            "held VM {} for job {} by {} until {} ({}){}",
            h.vm,
            h.job_id,
            h.who,
            sdci_protocol::time::Utc::from_unix_millis(h.until_ms).rfc3339(),
            left(h.until_ms, now),
            h.console
                .as_deref()
                .map(|c| format!("; console {c}"))
                .unwrap_or_default()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_for("4h"), Ok(14_400));
        assert_eq!(parse_for("1h30m"), Ok(5_400));
        assert_eq!(parse_for("90s"), Ok(90));
        assert_eq!(parse_for("900"), Ok(900));
        for bad in ["", "0", "4d", "h", "8days", "1h3", "999999999"] {
            assert!(parse_for(bad).is_err(), "{bad}");
        }
    }
}
