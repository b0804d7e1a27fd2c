//! VM leases written on the VMs themselves (contracts §9), so several `sdci-host` instances
//! (each with its own data directory) can share one vSphere without touching each other's VMs.
//!
//! A lease is one line of the VM's note (vSphere: its annotation, "Notes"; other lines are the
//! operators' and are kept):
//!
//! ```text
//! sdci-lease: instance=<16 hex> job=<job or rotation id> renewed=<unix ms> ttl=<secs> host=<name>
//! ```
//!
//! Invariants:
//! - Every write is a compare-and-set on the note's version (`Hypervisor::set_note`): two
//!   instances racing for a VM cannot both win.
//! - A lease is taken when a job (or rotation) has claimed the VM in its own store and before
//!   anything is done to the VM; it is renewed every quarter of `jobs.lease_ttl_secs` while the
//!   holder lives in this process, and removed once the VM is off again.
//! - An instance never reverts, powers on, powers off or claims a VM whose lease names another
//!   instance and was renewed within its `ttl`. A lease older than that is abandoned (its
//!   instance died or lost vSphere for that long): the next instance that wants the VM takes it
//!   over by overwriting the line — its reconciler powers the VM off if it is on, its scheduler
//!   claims it. So "how to take over": stop the other instance, wait `lease_ttl_secs`.
//! - The instance id lives in the data directory (`store::meta`): a restarted process keeps its
//!   leases. Clocks of the instances must agree to well within `lease_ttl_secs`.

use crate::now_ms;
use sdci_vsphere::{Hypervisor, VsphereError};

/// The note line's prefix.
pub const PREFIX: &str = "sdci-lease:";

/// Compare-and-set tries before a VM counts as contended (someone else keeps writing).
const CAS_TRIES: u32 = 4;

/// Who this process is, as written into its leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseOwner {
    pub instance: String,
    pub host: String,
    pub ttl_secs: u64,
}

impl LeaseOwner {
    pub fn new(instance: String, ttl_secs: u64) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let host: String = host
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            .collect();
        Self {
            instance,
            host: if host.is_empty() { "?".into() } else { host },
            ttl_secs,
        }
    }

    fn lease(&self, holder: &str) -> Lease {
        Lease {
            instance: self.instance.clone(),
            holder: holder.to_owned(),
            renewed_ms: now_ms(),
            ttl_secs: self.ttl_secs,
            host: self.host.clone(),
        }
    }
}

/// A lease as read from a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub instance: String,
    /// The job or rotation id holding the VM.
    pub holder: String,
    pub renewed_ms: i64,
    pub ttl_secs: u64,
    pub host: String,
}

impl Lease {
    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms > self.renewed_ms + (self.ttl_secs as i64) * 1000
    }

    /// Held by another instance and not expired: hands off.
    pub fn blocks(&self, me: &LeaseOwner, now_ms: i64) -> bool {
        self.instance != me.instance && !self.expired(now_ms)
    }

    pub fn to_line(&self) -> String {
        format!(
            "{PREFIX} instance={} job={} renewed={} ttl={} host={}",
            self.instance, self.holder, self.renewed_ms, self.ttl_secs, self.host
        )
    }

    fn from_line(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix(PREFIX)?;
        let (mut instance, mut holder, mut renewed, mut ttl, mut host) =
            (None, None, None, None, String::new());
        for word in rest.split_whitespace() {
            match word.split_once('=') {
                Some(("instance", v)) => instance = Some(v.to_owned()),
                Some(("job", v)) => holder = Some(v.to_owned()),
                Some(("renewed", v)) => renewed = v.parse().ok(),
                Some(("ttl", v)) => ttl = v.parse().ok(),
                Some(("host", v)) => host = v.to_owned(),
                _ => {}
            }
        }
        Some(Self {
            instance: instance?,
            holder: holder?,
            renewed_ms: renewed?,
            ttl_secs: ttl?,
            host,
        })
    }

    /// Describes the holder for messages.
    pub fn describe(&self) -> String {
        format!(
            "sdci-host instance {} on {} ({}), renewed {}s ago",
            self.instance,
            self.host,
            self.holder,
            (now_ms() - self.renewed_ms).max(0) / 1000
        )
    }
}

/// The lease in a note, if any (a malformed line counts as none).
pub fn parse(note: &str) -> Option<Lease> {
    note.lines().find_map(Lease::from_line)
}

/// The note with its lease line replaced by `lease` (or removed), other lines kept.
pub fn with_lease(note: &str, lease: Option<&Lease>) -> String {
    let mut lines: Vec<String> = note
        .lines()
        .filter(|l| !l.trim().starts_with(PREFIX))
        .map(str::to_owned)
        .collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    if let Some(l) = lease {
        lines.push(l.to_line());
    }
    lines.join("\n")
}

/// How taking a lease went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// The VM is ours now (free before, ours already, or abandoned and taken over).
    Taken { took_over: Option<Lease> },
    /// Another live instance holds it.
    Held(Lease),
}

/// Writes `holder`'s lease on `vm` unless another live instance holds it.
pub async fn take<H: Hypervisor>(
    hv: &H,
    me: &LeaseOwner,
    vm: &str,
    holder: &str,
) -> Result<Take, VsphereError> {
    let mut last = None;
    for _ in 0..CAS_TRIES {
        let note = hv.note(vm).await?;
        let current = parse(&note.text);
        if let Some(l) = &current {
            if l.blocks(me, now_ms()) {
                return Ok(Take::Held(l.clone()));
            }
        }
        let text = with_lease(&note.text, Some(&me.lease(holder)));
        if hv.set_note(vm, &text, &note.version).await? {
            let took_over = current.filter(|l| l.instance != me.instance);
            return Ok(Take::Taken { took_over });
        }
        last = current;
    }
    // Someone else kept writing: treat it as held.
    Ok(Take::Held(last.unwrap_or_else(|| Lease {
        instance: "?".into(),
        holder: "?".into(),
        renewed_ms: now_ms(),
        ttl_secs: me.ttl_secs,
        host: "?".into(),
    })))
}

/// Renews `holder`'s lease on `vm`. `Ok(false)`: the note no longer names this instance and
/// `holder` (another instance took the VM over).
pub async fn renew<H: Hypervisor>(
    hv: &H,
    me: &LeaseOwner,
    vm: &str,
    holder: &str,
) -> Result<bool, VsphereError> {
    let ours = |note: &str| match parse(note) {
        Some(l) => l.instance == me.instance && l.holder == holder,
        // Never written (a backend without notes) or removed by a person: write it again.
        None => true,
    };
    Ok(write_lease(hv, me, vm, holder, ours).await?.unwrap_or(true))
}

/// Writes `holder`'s lease on `vm` over whatever lease line its note has: only for a VM this
/// instance has just created for `holder` (a linked clone copies its source's note, whose lease
/// names the source's job, contracts §12). `Ok(false)`: others kept writing the note.
pub async fn rewrite<H: Hypervisor>(
    hv: &H,
    me: &LeaseOwner,
    vm: &str,
    holder: &str,
) -> Result<bool, VsphereError> {
    Ok(write_lease(hv, me, vm, holder, |_| true)
        .await?
        .unwrap_or(false))
}

/// The one compare-and-set loop of a lease write (contracts §9): `Some(true)` written,
/// `Some(false)` the note is not `may_write`'s to overwrite, `None` the note kept changing
/// under us for [`CAS_TRIES`] rounds.
async fn write_lease<H: Hypervisor>(
    hv: &H,
    me: &LeaseOwner,
    vm: &str,
    holder: &str,
    may_write: impl Fn(&str) -> bool,
) -> Result<Option<bool>, VsphereError> {
    for _ in 0..CAS_TRIES {
        let note = hv.note(vm).await?;
        if !may_write(&note.text) {
            return Ok(Some(false));
        }
        let text = with_lease(&note.text, Some(&me.lease(holder)));
        if hv.set_note(vm, &text, &note.version).await? {
            return Ok(Some(true));
        }
    }
    Ok(None)
}

/// Removes `holder`'s lease from `vm` (a lease of another holder or instance is left alone).
pub async fn release<H: Hypervisor>(
    hv: &H,
    me: &LeaseOwner,
    vm: &str,
    holder: &str,
) -> Result<(), VsphereError> {
    for _ in 0..CAS_TRIES {
        let note = hv.note(vm).await?;
        match parse(&note.text) {
            Some(l) if l.instance == me.instance && l.holder == holder => {}
            _ => return Ok(()),
        }
        if hv
            .set_note(vm, &with_lease(&note.text, None), &note.version)
            .await?
        {
            return Ok(());
        }
    }
    Ok(())
}

/// The lease on `vm`, if any.
pub async fn read<H: Hypervisor>(hv: &H, vm: &str) -> Result<Option<Lease>, VsphereError> {
    Ok(parse(&hv.note(vm).await?.text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> LeaseOwner {
        LeaseOwner {
            instance: "aaaa".into(),
            host: "bastion-1".into(),
            ttl_secs: 60,
        }
    }

    #[test]
    fn a_lease_line_round_trips_and_other_lines_of_the_note_are_kept() {
        let l = me().lease("0123456-abcdef0123");
        let note = with_lease("Owner: the SDW team\nDo not delete\n", Some(&l));
        assert_eq!(parse(&note), Some(l.clone()));
        assert!(note.starts_with("Owner: the SDW team\nDo not delete\nsdci-lease: "));
        let renewed = with_lease(&note, Some(&me().lease("other-job")));
        assert_eq!(renewed.matches(PREFIX).count(), 1);
        assert_eq!(
            with_lease(&note, None),
            "Owner: the SDW team\nDo not delete"
        );
        assert_eq!(parse("sdci-lease: instance=x job=y"), None, "incomplete");
    }

    #[test]
    fn a_lease_blocks_other_instances_until_it_expires() {
        let mut l = me().lease("j");
        let other = LeaseOwner {
            instance: "bbbb".into(),
            ..me()
        };
        let now = l.renewed_ms;
        assert!(!l.blocks(&me(), now), "never against its own instance");
        assert!(l.blocks(&other, now + 59_000));
        assert!(!l.blocks(&other, now + 61_000), "expired");
        l.renewed_ms -= 120_000;
        assert!(l.expired(now));
    }
}
