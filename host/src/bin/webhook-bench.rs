//! Webhook intake benchmark: signed `push` deliveries over loopback into the real HTTP service
//! and a real SQLite file, measuring deliveries per second and the latency to the 2xx (the store
//! transaction — delivery, job, pending status, superseding — is inside that latency).
//!
//! Then checks that every delivery was stored exactly once: a share of the deliveries is sent a
//! second time with the same `X-GitHub-Delivery`, and the row counts must equal the unique count.
//!
//! Usage: `sdci-host-webhook-bench [DELIVERIES [CONCURRENCY [RATE]]]` (defaults 20000, 32, 0).
//! RATE 0 is a closed loop (each client sends its next delivery when the last is answered: the
//! maximum throughput); RATE > 0 paces request starts at RATE per second (an open loop: the
//! latency at that offered load, as GitHub would send it).
//! The server runs on its own runtime (2 worker threads) in this process; the client on another.

use anyhow::Context;
use sdci_host::config::Config;
use sdci_host::server;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "bench-secret";

/// CPU seconds (user + system) used so far by this process's threads whose name starts with
/// `prefix`, from /proc (clock ticks at 100 Hz). A load-independent cost figure: the machine is
/// shared, so wall-clock throughput also measures the neighbours.
fn cpu_secs(prefix: &str) -> f64 {
    let mut ticks = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if !comm.starts_with(prefix) {
                continue;
            }
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // Fields after the ")" of the command: state is field 3; utime 14, stime 15.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                ticks += f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
                ticks += f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    ticks as f64 / 100.0
}

fn body(n: usize) -> String {
    // n + 1: an all-zero sha is GitHub's "deleted ref" and rightly ignored.
    let n = n + 1;
    serde_json::json!({
        "ref": format!("refs/heads/branch-{}", n % 100),
        "after": format!("{n:040x}"),
        "deleted": false,
        "repository": {"full_name": "freedomofpress/securedrop-workstation",
                       "clone_url": "https://github.com/freedomofpress/securedrop-workstation.git"},
        "pusher": {"name": "bench"},
        "head_commit": {"id": format!("{n:040x}"), "message": "x".repeat(400)}
    })
    .to_string()
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let total: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let conc: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(32);
    let rate: f64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(0.0);
    let dupes = total / 10;

    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("secret"), SECRET)?;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-server")
        .enable_all()
        .build()?;
    let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let cfg = Config::parse(
        &format!(
            "data_dir = \"{}\"\n[webhook]\nsecret_file = \"{}\"\nrepos = [\"freedomofpress/securedrop-workstation\"]\n[agent]\nresolve_version = false\n",
            dir.path().join("data").display(),
            dir.path().join("secret").display()
        ),
        Path::new("bench.toml"),
    )?;
    let hub = server::hub_from_config(cfg)?;
    let store = hub.store.clone();
    server_rt.spawn(async move {
        if let Err(e) = server::serve_http(hub, listener).await {
            eprintln!("server: {e}");
        }
    });

    let bodies: Arc<Vec<(String, String)>> = Arc::new(
        (0..total)
            .map(|n| {
                let b = body(n);
                let sig = sdci_host::surface::webhook::sign(SECRET.as_bytes(), b.as_bytes());
                (b, sig)
            })
            .collect(),
    );
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    let url = format!("http://{addr}/hooks/github");
    let (elapsed, mut lat, codes) = client_rt.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(conc)
            .build()
            .context("client")?;
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..conc {
            let (client, url, bodies, next) =
                (client.clone(), url.clone(), bodies.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut codes = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total + dupes {
                        break;
                    }
                    // Open loop: latency counts from the scheduled start, so a late start (the
                    // clients were all busy) is charged to the server, not hidden.
                    let scheduled = if rate > 0.0 {
                        let at = started + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(at.into()).await;
                        Some(at)
                    } else {
                        None
                    };
                    // The last `dupes` requests resend earlier deliveries with the same id.
                    let n = if i < total {
                        i
                    } else {
                        (i - total) * 7 % total
                    };
                    let (b, sig) = &bodies[n];
                    let t = scheduled.unwrap_or_else(Instant::now);
                    let r = client
                        .post(&url)
                        .header("X-GitHub-Event", "push")
                        .header("X-GitHub-Delivery", format!("delivery-{n}"))
                        .header("X-Hub-Signature-256", sig)
                        .header("Content-Type", "application/json")
                        .body(b.clone())
                        .send()
                        .await;
                    let code = match r {
                        Ok(r) => {
                            let c = r.status().as_u16();
                            let text = r.text().await.unwrap_or_default();
                            if !(200..300).contains(&c) {
                                eprintln!("request {i}: HTTP {c}: {text}");
                            }
                            c
                        }
                        Err(e) => {
                            eprintln!("request {i} failed: {e:?}");
                            0
                        }
                    };
                    lat.push(t.elapsed());
                    codes.push(code);
                }
                (lat, codes)
            }));
        }
        let mut lat = Vec::new();
        let mut codes = Vec::new();
        for t in tasks {
            let (l, c) = t.await?;
            lat.extend(l);
            codes.extend(c);
        }
        anyhow::Ok((started.elapsed(), lat, codes))
    })?;

    // The server's runtime threads plus the store's group-commit writer and checkpoint threads.
    let server_cpu =
        cpu_secs("bench-server") + cpu_secs("sdci-ingest") + cpu_secs("sdci-checkpoint");
    let client_cpu = cpu_secs("bench-client");
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ok2xx = codes.iter().filter(|c| (200..300).contains(*c)).count();
    let requests = lat.len();
    let jobs = store.count_jobs()?;
    let deliveries = store.count_deliveries()?;
    println!(
        "webhook-bench: {requests} requests ({total} unique deliveries + {dupes} redeliveries), \
         concurrency {conc}, {}",
        if rate > 0.0 {
            format!("offered {rate}/s")
        } else {
            "closed loop".into()
        }
    );
    println!(
        "throughput: {:.0} deliveries/s over {:.2}s",
        requests as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "latency to 2xx: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(pct(1.0))
    );
    println!("2xx answers: {ok2xx}/{requests}");
    println!(
        "CPU: server {:.0} µs per delivery ({:.0} deliveries per server CPU-second), client {:.0} µs",
        server_cpu * 1e6 / requests as f64,
        requests as f64 / server_cpu.max(0.01),
        client_cpu * 1e6 / requests as f64
    );
    println!(
        "machine load while measuring: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let wal = std::fs::metadata(dir.path().join("data/sdci.sqlite3-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("WAL file at the end: {:.1} MiB", wal as f64 / 1048576.0);
    println!("stored: {jobs} jobs, {deliveries} deliveries (expected {total} each)");
    let exactly_once = jobs as usize == total && deliveries as usize == total && ok2xx == requests;
    println!(
        "every delivery stored exactly once: {}",
        if exactly_once { "yes" } else { "NO" }
    );
    drop(server_rt);
    if !exactly_once {
        anyhow::bail!("deliveries were lost or duplicated");
    }
    Ok(())
}
