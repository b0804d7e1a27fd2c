//! One job's worth of vSphere calls against the govmomi simulator over https, timed: revert,
//! power on, wait for Tools (2 s simulated boot), 15 guest programs, upload, download, guest
//! shutdown (1 s simulated shutdown). Prints the time beyond the simulated delays.
//!
//! `cargo bench -p sdci-vsphere --bench job_calls` runs 5 rounds (pass `--rounds N` after
//! `--` to change); without `--bench` (e.g. under `cargo test --benches`) it runs one round as
//! a smoke test. Target: < 1 s beyond the delays; the original runner spends ~140 s of fixed
//! sleeps and polls on the same sequence (60 s after Tools, 30 s after shutdown, 10 s Tools
//! polls, 5 s per guest command still running at its first check).
#![allow(clippy::unwrap_used)]

use sdci_protocol::job::Secret;
use sdci_tests::vsphere_sim::{SimOptions, SimVm, VsphereSim};
use sdci_vsphere::{
    GuestAuth, GuestProgram, Hypervisor, ProcessState, Timeouts, TlsPolicy, VsphereClient,
    VsphereConfig,
};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(2);
const SHUTDOWN: Duration = Duration::from_secs(1);
const PROGRAMS: usize = 15;
const VM: &str = "Qubes_4.2_bench";
const ORIGINAL_SECS: f64 = 140.0;

#[derive(Default, Clone)]
struct Round {
    phases: Vec<(&'static str, Duration)>,
}

impl Round {
    fn total(&self) -> Duration {
        self.phases.iter().map(|(_, d)| *d).sum()
    }
    fn overhead(&self) -> Duration {
        self.total().saturating_sub(BOOT + SHUTDOWN)
    }
}

async fn timed<T>(
    round: &mut Round,
    name: &'static str,
    f: impl std::future::Future<Output = T>,
) -> T {
    let t = Instant::now();
    let out = f.await;
    round.phases.push((name, t.elapsed()));
    out
}

async fn one_round(c: &VsphereClient, auth: &GuestAuth, job: &[u8]) -> Round {
    let mut r = Round::default();
    timed(&mut r, "revert", c.revert(VM, "clean"))
        .await
        .unwrap();
    timed(&mut r, "power on", c.power_on(VM)).await.unwrap();
    timed(
        &mut r,
        "tools (2 s boot)",
        c.wait_guest_ready(VM, Duration::from_secs(60)),
    )
    .await
    .unwrap();
    timed(&mut r, "upload job file", async {
        c.upload(
            VM,
            auth,
            "/home/user/.sdci/jobs/bench/job.json",
            job.to_vec(),
        )
        .await
        .unwrap()
    })
    .await;
    timed(&mut r, "15 guest programs", async {
        for i in 0..PROGRAMS {
            let p = GuestProgram {
                path: "/usr/local/bin/step".into(),
                arguments: format!("{i}"),
                env: vec![],
                working_directory: Some("/home/user".into()),
            };
            let pid = c.start_program(VM, auth, &p).await.unwrap();
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
        c.download(VM, auth, "/home/user/.sdci/jobs/bench/log.txt"),
    )
    .await
    .unwrap();
    assert_eq!(log.len(), 64 * 1024);
    timed(
        &mut r,
        "shutdown (1 s)",
        c.shutdown(VM, Duration::from_secs(60)),
    )
    .await
    .unwrap();
    r
}

fn ms(d: Duration) -> String {
    format!("{:8.1} ms", d.as_secs_f64() * 1000.0)
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
        .unwrap_or(if benching { 5 } else { 1 });

    let step =
        "#!/bin/sh\necho \"step $1\" >> \"$SDCI_GUEST_ROOT/home/user/.sdci/jobs/bench/steps\"\n";
    let log = vec![b'x'; 64 * 1024];
    let sim = VsphereSim::start(SimOptions::esx().tls(true).vms(vec![SimVm::new(VM)
            .snapshots(&["clean"])
            .tools_delay(Some(BOOT))
            .shutdown_delay(SHUTDOWN)
            .file("/usr/local/bin/step", step, 0o755)
            .file("/home/user/.sdci/jobs/bench/log.txt", log, 0o644)]))
    .unwrap();
    let cfg = VsphereConfig {
        url: sim.url(),
        user: sim.username().into(),
        password: Secret::new(sim.password()),
        tls: TlsPolicy::CaFile {
            ca_file: sim.ca_cert_path().unwrap().to_path_buf(),
        },
        datacenters: None,
        timeouts: Timeouts::default(),
    };
    let t = Instant::now();
    let c = VsphereClient::connect(cfg).await.unwrap();
    let login = t.elapsed();
    let auth = GuestAuth {
        user: sim.guest_username().into(),
        password: Secret::new(sim.guest_password()),
    };
    let job = vec![b'{'; 4096];

    println!(
        "vsphere job_calls: {rounds} round(s) against the govmomi simulator (ESXi model, https)"
    );
    println!("  login (once per host process): {}", ms(login));
    let mut all = Vec::new();
    for i in 0..rounds {
        let r = one_round(&c, &auth, &job).await;
        println!(
            "  round {}: total {}  beyond simulated delays {}",
            i + 1,
            ms(r.total()),
            ms(r.overhead())
        );
        all.push(r);
    }
    let mut overheads: Vec<Duration> = all.iter().map(Round::overhead).collect();
    overheads.sort();
    let median = overheads[overheads.len() / 2];
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
        "  time beyond the simulated {:.0} s of boot + shutdown: median {}, min {}, max {}",
        (BOOT + SHUTDOWN).as_secs_f64(),
        ms(median),
        ms(overheads[0]),
        ms(overheads[overheads.len() - 1])
    );
    println!(
        "  reference (original runner, same sequence): ~{ORIGINAL_SECS:.0} s of sleeps and polls; target < 1000 ms"
    );
    c.logout().await.unwrap();
}
