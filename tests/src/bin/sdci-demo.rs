//! `sdci-demo` (run by `scripts/demo`): the whole system on loopback. Starts the vSphere
//! simulator with two Qubes VMs, the GitHub stand-in and the real `sdci-host`, sends one signed
//! push webhook for the fixture's commit, follows the job to its end, prints the statuses GitHub
//! received, and keeps the host running until Ctrl-C (or exits at once with `--once`).
//! It says what it is doing at each step (the first run builds the simulator with Go) and, at
//! the end, how to point `sdci-host`'s CLI at the demo's world; `SDCI_WORLD_KEEP=1` keeps the
//! world's directory (configuration, database, logs) after it exits.

use anyhow::{bail, Context, Result};
use sdci_tests::fixture::TestMode;
use sdci_tests::job_world::JobWorld;
use sdci_tests::libvirt_world::LibvirtWorld;
use sdci_tests::world::{World, WorldOptions, REPO};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: sdci-demo [--once] [--fail] [--backend vsphere|libvirt]

  --once   exit when the job has ended (CI and smoke tests); default: keep the host running
           until Ctrl-C so the job page can be opened in a browser
  --fail   demo a commit whose `make test` fails
  --backend libvirt   the VMs are real QEMU guests of a private libvirtd (KVM or TCG, as
           probed) instead of the vSphere simulator's

  SDCI_WORLD_KEEP=1 keeps the world's directory (host.toml, database, logs) after the demo";

fn main() -> Result<()> {
    let mut once = false;
    let mut mode = TestMode::Pass;
    let mut libvirt = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--backend" | "--backend=vsphere" | "--backend=libvirt" => {
                let b = match arg.split_once('=') {
                    Some((_, b)) => b.to_string(),
                    None => args.next().unwrap_or_default(),
                };
                libvirt = match b.as_str() {
                    "libvirt" => true,
                    "vsphere" => false,
                    other => bail!("unknown backend {other:?}\n{USAGE}"),
                };
            }
            "--once" => once = true,
            "--fail" => mode = TestMode::Fail,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }

    let opts = WorldOptions {
        mode,
        boot_delay: Duration::from_secs(1),
        shutdown_delay: Duration::from_millis(500),
        ..WorldOptions::default()
    };
    let starting = Instant::now();
    let w: Box<dyn JobWorld> = if libvirt {
        println!("sdci demo: [1/4] starting a private libvirtd with two QEMU guests (Qubes_4.2_a, Qubes_4.2_b; the first run builds the guest image, about 15 s), the GitHub stand-in and sdci-host...");
        Box::new(LibvirtWorld::start(opts).context("starting the demo world on libvirt (as root, after scripts/install-deps and cargo build --workspace --bins)")?)
    } else {
        println!("sdci demo: [1/4] starting the vSphere simulator (Qubes_4.2_a, Qubes_4.2_b; the first run builds it with Go, about a minute), the GitHub stand-in and sdci-host...");
        Box::new(World::start(opts).context("starting the demo world (as root, after scripts/install-deps and cargo build --workspace --bins)")?)
    };
    println!(
        "  started in {:.1}s\n  sdci-host:      {} (config {})",
        starting.elapsed().as_secs_f64(),
        w.host_url(),
        w.config_path().display()
    );
    println!("  host log:       {}", w.host_log_path().display());
    println!("  {}:  {}", w.backend(), w.hypervisor_url());
    println!("  GitHub (stand-in): {}", w.github().url());

    let sha = w.head()?;
    println!("\n[2/4] sending a signed push webhook: {REPO} main -> {sha}");
    let id = w.push(&sha)?;
    println!("job {id} queued\njob page: {}\n", w.job_url(&id));
    println!(
        "[3/4] following the job (revert, boot, upload, make clone/dev/test in dom0, shutdown):"
    );

    let started = Instant::now();
    let mut seen = 0;
    let job = loop {
        let j = w.job(&id)?;
        for t in &j.history[seen.min(j.history.len())..] {
            println!(
                "  {:>6.1}s  {:<9} -> {:<9} {}",
                started.elapsed().as_secs_f64(),
                t.from,
                t.to,
                t.note
            );
        }
        seen = j.history.len();
        if j.is_terminal() {
            break w.wait_job(&id)?;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "the job did not end within 10 minutes; see {}",
                w.host_log_path().display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    println!("\n[4/4] the job's log (as on its page):");
    for line in w.job_log(&id).lines() {
        println!("  | {line}");
    }
    println!("\njob {id} ended: {} ({})", job.state, job.note);
    println!("statuses GitHub received for {}:", &sha[..12]);
    for s in w.statuses(&sha) {
        println!(
            "  {:<8} {:<40} {}",
            s.state,
            s.description.unwrap_or_default(),
            s.target_url.unwrap_or_default()
        );
    }
    let on = w.vms_on()?;
    println!(
        "VMs powered on: {}",
        if on.is_empty() {
            "none".to_string()
        } else {
            on.join(", ")
        }
    );

    let cli = format!(
        "{} --config {}",
        sdci_tests::binary("sdci-host").display(),
        w.config_path().display()
    );
    let kept = std::env::var_os("SDCI_WORLD_KEEP").is_some();
    println!(
        "\nthe CLI on this world{}:\n  {cli} jobs list\n  {cli} jobs show {id}\n  {cli} vms",
        if once && !kept {
            " (while it runs; SDCI_WORLD_KEEP=1 keeps its directory after the demo)"
        } else {
            ""
        }
    );
    if once {
        return if job.state == "success" || mode == TestMode::Fail {
            Ok(())
        } else {
            bail!("the demo job ended {}", job.state)
        };
    }
    println!(
        "\nsdci-host keeps running: open {} (all jobs: {}/jobs). Ctrl-C stops everything.",
        w.job_url(&id),
        w.host_url()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(tokio::signal::ctrl_c())
        .context("waiting for Ctrl-C")?;
    println!("\nstopping sdci-host, the simulator and the stand-in...");
    drop(w);
    Ok(())
}
