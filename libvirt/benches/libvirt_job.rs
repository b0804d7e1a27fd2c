//! One job's worth of libvirt calls against a private libvirtd and the small real guest
//! (`sdci_libvirt::testenv`), timed, in the same sequence as `sdci-vsphere`'s `job_calls`:
//! revert, power on, wait for the guest agent (the guest's own boot), make the job directory,
//! upload a 4 KiB job file, 15 guest programs, download a 64 KiB log, guest shutdown. Prints the
//! time beyond the guest's own boot (power-on → agent answers) and shutdown, and the cost of a
//! snapshot: create/revert/delete time and what it adds to the disk file.
//!
//! `cargo bench -p sdci-libvirt --bench libvirt_job` runs 3 rounds (`-- --rounds N`); without
//! `--bench` (e.g. `cargo test --benches`) one round. Needs root (it starts libvirtd).
#![allow(clippy::unwrap_used)]

use sdci_hypervisor::{GuestAuth, GuestProgram, Hypervisor, ProcessState};
use sdci_libvirt::testenv::{probe_accel, Image, Libvirtd};
use sdci_libvirt::{DomainType, LibvirtClient, LibvirtConfig};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

const VM: &str = "sdci-bench";
const PROGRAMS: usize = 15;

#[derive(Default, Clone)]
struct Round {
    phases: Vec<(&'static str, Duration)>,
    /// The guest's own part: booting until the agent answers, and shutting down.
    guest: Duration,
}

impl Round {
    fn total(&self) -> Duration {
        self.phases.iter().map(|(_, d)| *d).sum()
    }
    fn overhead(&self) -> Duration {
        self.total().saturating_sub(self.guest)
    }
}

async fn timed<T>(r: &mut Round, name: &'static str, f: impl std::future::Future<Output = T>) -> T {
    let t = Instant::now();
    let out = f.await;
    r.phases.push((name, t.elapsed()));
    out
}

fn program(script: String) -> GuestProgram {
    GuestProgram {
        path: "/bin/sh".into(),
        arguments: format!("-c '{script}'"),
        env: vec![],
        working_directory: Some("/home/user".into()),
    }
}

async fn one_round(c: &LibvirtClient, auth: &GuestAuth, job: &[u8]) -> Round {
    let mut r = Round::default();
    timed(&mut r, "revert", c.revert(VM, "golden"))
        .await
        .unwrap();
    timed(&mut r, "power on", c.power_on(VM)).await.unwrap();
    timed(
        &mut r,
        "agent (guest boot)",
        c.wait_guest_ready(VM, Duration::from_secs(120)),
    )
    .await
    .unwrap();
    let dir = "/home/user/.sdci/jobs/bench";
    timed(
        &mut r,
        "make directory",
        c.make_directory(VM, auth, dir, true),
    )
    .await
    .unwrap();
    timed(
        &mut r,
        "upload job file",
        c.upload(VM, auth, &format!("{dir}/job.json"), job.to_vec()),
    )
    .await
    .unwrap();
    timed(&mut r, "15 guest programs", async {
        for i in 0..PROGRAMS {
            let s = if i == 0 {
                format!("dd if=/dev/zero of={dir}/log.txt bs=1024 count=64 2>/dev/null")
            } else {
                format!("echo step {i} >> {dir}/steps")
            };
            let pid = c.start_program(VM, auth, &program(s)).await.unwrap();
            let end = c
                .wait_program(VM, auth, pid, Duration::from_secs(60))
                .await
                .unwrap();
            assert_eq!(end, ProcessState::Exited(0));
        }
    })
    .await;
    let log = timed(
        &mut r,
        "download log",
        c.download(VM, auth, &format!("{dir}/log.txt")),
    )
    .await
    .unwrap();
    assert_eq!(log.len(), 64 * 1024);
    timed(
        &mut r,
        "shutdown (guest)",
        c.shutdown(VM, Duration::from_secs(60)),
    )
    .await
    .unwrap();
    r.guest = r.phases[2].1 + r.phases[r.phases.len() - 1].1;
    r
}

fn ms(d: Duration) -> String {
    format!("{:8.1} ms", d.as_secs_f64() * 1000.0)
}

/// (apparent size, allocated bytes) of a file.
fn size(p: &Path) -> (u64, u64) {
    let m = std::fs::metadata(p).unwrap();
    (m.len(), m.blocks() * 512)
}

fn kib(b: i64) -> String {
    format!("{:+.0} KiB", b as f64 / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if benching { 3 } else { 1 });

    let image = Image::ensure().unwrap();
    let ty = probe_accel(&image);
    let daemon = Libvirtd::start("bench").unwrap();
    let cfg: LibvirtConfig = toml::from_str(&format!(
        "uris = [{:?}]\ndomain_type = \"{}\"\n",
        daemon.uri(),
        if ty == DomainType::Kvm { "kvm" } else { "qemu" }
    ))
    .unwrap();
    let t = Instant::now();
    let c = LibvirtClient::connect(cfg).await.unwrap();
    let connect = t.elapsed();
    let spec = daemon.guest_spec(&image, VM, true).unwrap();
    let disk = spec.disk.clone();
    c.define_domain(&spec).await.unwrap();
    c.create_snapshot(VM, "golden", "bench").await.unwrap();
    let auth = GuestAuth {
        user: "user".into(),
        password: serde_json::from_str("\"unused\"").unwrap(),
    };
    let job = vec![b'{'; 4096];

    println!(
        "libvirt libvirt_job: {rounds} round(s), private libvirtd 9.x, domain type {}, 1 vCPU / 256 MiB guest",
        if ty == DomainType::Kvm { "kvm" } else { "qemu (TCG)" }
    );
    println!("  connect (once per host process): {}", ms(connect));
    let mut all = Vec::new();
    for i in 0..rounds {
        let r = one_round(&c, &auth, &job).await;
        println!(
            "  round {}: total {}  guest's own boot+shutdown {}  beyond them {}",
            i + 1,
            ms(r.total()),
            ms(r.guest),
            ms(r.overhead())
        );
        all.push(r);
    }
    let mut overheads: Vec<Duration> = all.iter().map(Round::overhead).collect();
    overheads.sort();
    let best = all
        .iter()
        .min_by_key(|r| r.overhead())
        .cloned()
        .unwrap_or_default();
    println!("  phases of the best round:");
    for (name, d) in &best.phases {
        println!("    {name:<20} {}", ms(*d));
    }
    println!(
        "  time beyond the guest's own boot + shutdown: median {}, min {}, max {}",
        ms(overheads[overheads.len() / 2]),
        ms(overheads[0]),
        ms(overheads[overheads.len() - 1])
    );

    // Snapshot cost on a disk a job has written to: internal qcow2 snapshots, domain off.
    c.revert(VM, "golden").await.unwrap();
    c.power_on(VM).await.unwrap();
    c.wait_guest_ready(VM, Duration::from_secs(120))
        .await
        .unwrap();
    let pid = c
        .start_program(
            VM,
            &auth,
            &program(
                "dd if=/dev/urandom of=/home/user/data bs=1M count=32 2>/dev/null; sync".into(),
            ),
        )
        .await
        .unwrap();
    c.wait_program(VM, &auth, pid, Duration::from_secs(120))
        .await
        .unwrap();
    c.shutdown(VM, Duration::from_secs(60)).await.unwrap();
    let before = size(&disk);
    let t = Instant::now();
    c.create_snapshot(VM, "update_bench", "bench")
        .await
        .unwrap();
    let create = t.elapsed();
    let after = size(&disk);
    let t = Instant::now();
    c.revert(VM, "golden").await.unwrap();
    let revert_dirty = t.elapsed();
    let t = Instant::now();
    c.revert(VM, "update_bench").await.unwrap();
    let revert_back = t.elapsed();
    let t = Instant::now();
    c.remove_snapshot(VM, "update_bench").await.unwrap();
    let remove = t.elapsed();
    let removed = size(&disk);
    println!("  snapshot cost (internal qcow2, domain off, 32 MiB written since golden):");
    println!(
        "    create            {}  disk file {} apparent, {} allocated",
        ms(create),
        kib(after.0 as i64 - before.0 as i64),
        kib(after.1 as i64 - before.1 as i64)
    );
    println!(
        "    revert to golden  {}  (discarding the 32 MiB)",
        ms(revert_dirty)
    );
    println!("    revert to it      {}", ms(revert_back));
    println!(
        "    delete            {}  disk file afterwards {} allocated vs before create",
        ms(remove),
        kib(removed.1 as i64 - before.1 as i64)
    );
    let _ = c.undefine_domain(VM).await;
}
