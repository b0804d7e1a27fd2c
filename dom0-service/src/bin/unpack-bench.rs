//! Benchmark: the hardened unpacker beside `zstd -d | tar -x`, on the same archives, in the same
//! run. Two trees: SDW-shaped (220 files, ~7 MB) and bulk (~200 MB, 2000 files, half text, half
//! incompressible). Each archive is made with GNU `tar -c` and `zstd -3`.
//!
//! Both sides run as child processes (the unpacker re-executes this binary with `--child`), so
//! wall time includes process start-up for both and peak RSS comes from `wait4` per process. The
//! runs alternate; the median is reported. Targets (issue #4): wall time within 1.2× of the
//! pipeline's, peak RSS under 32 MiB.
//!
//! `cargo run --release -p sdci-dom0 --bin unpack-bench [-- --runs N]`

use sdci_dom0::fixture;
use sdci_dom0::unpack::{unpack, Limits};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let (Some(archive), Some(dest)) = (args.get(2), args.get(3)) else {
            anyhow::bail!("usage: unpack-bench --child ARCHIVE DEST");
        };
        let file = std::fs::File::open(archive)?;
        unpack(file, Path::new(dest), &Limits::default())?;
        return Ok(());
    }
    let runs: usize = match args.iter().position(|a| a == "--runs") {
        Some(i) => args.get(i + 1).map_or(Ok(5), |s| s.parse())?,
        None => 5,
    };
    for tool in ["tar", "zstd"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            anyhow::bail!("{tool} is not installed (scripts/install-deps installs it)");
        }
    }
    let work = std::env::temp_dir().join(format!("sdci-unpack-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = bench_all(&work, runs);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn bench_all(work: &Path, runs: usize) -> anyhow::Result<()> {
    println!(
        "unpack-bench: median of {runs} alternating runs; RSS is peak resident set per process"
    );
    println!(
        "{:<22} {:>9} {:>9} | {:>9} {:>10} {:>9} | {:>9} {:>10} {:>16} | {:>6}",
        "archive",
        "tar MB",
        "zst MB",
        "ours s",
        "ours MB/s",
        "ours RSS",
        "pipe s",
        "pipe MB/s",
        "pipe RSS z+t",
        "ratio"
    );
    let sdw = work.join("src-sdw");
    std::fs::create_dir_all(&sdw)?;
    let shape = fixture::sdw_tree(&sdw, 7_000_000)?;
    bench_one(work, "sdw (220 files, 7 MB)", &sdw, runs, shape)?;
    let bulk = work.join("src-bulk");
    std::fs::create_dir_all(&bulk)?;
    let shape = fixture::bulk_tree(&bulk, 200_000_000, 2000)?;
    bench_one(work, "bulk (2000 files, 200 MB)", &bulk, runs, shape)?;
    Ok(())
}

struct Sample {
    wall: Duration,
    rss_kib: Vec<i64>,
}

fn bench_one(
    work: &Path,
    label: &str,
    src: &Path,
    runs: usize,
    _shape: fixture::TreeShape,
) -> anyhow::Result<()> {
    let tar = work.join("archive.tar");
    let zst = work.join("archive.tar.zst");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(src)
        .arg(".")
        .status()?;
    anyhow::ensure!(st.success(), "tar -c failed");
    let st = Command::new("zstd")
        .args(["-3", "-q", "-f", "-T1", "-o"])
        .arg(&zst)
        .arg(&tar)
        .status()?;
    anyhow::ensure!(st.success(), "zstd failed");
    let tar_bytes = std::fs::metadata(&tar)?.len();
    let zst_bytes = std::fs::metadata(&zst)?.len();
    std::fs::remove_file(&tar)?;

    let me = std::env::current_exe()?;
    let mut ours = Vec::new();
    let mut pipe = Vec::new();
    for i in 0..runs + 1 {
        // Run 0 of each side is a warm-up and not counted.
        let d1 = work.join(format!("out-ours-{i}"));
        let d2 = work.join(format!("out-pipe-{i}"));
        std::fs::create_dir_all(&d2)?;
        let (a, b) = if i % 2 == 0 {
            let a = run_ours(&me, &zst, &d1)?;
            let b = run_pipeline(&zst, &d2)?;
            (a, b)
        } else {
            let b = run_pipeline(&zst, &d2)?;
            let a = run_ours(&me, &zst, &d1)?;
            (a, b)
        };
        std::fs::remove_dir_all(&d1)?;
        std::fs::remove_dir_all(&d2)?;
        if i > 0 {
            ours.push(a);
            pipe.push(b);
        }
    }
    std::fs::remove_file(&zst)?;
    let med = |v: &mut Vec<Sample>| {
        v.sort_by_key(|s| s.wall);
        v[v.len() / 2].wall
    };
    let (o, p) = (med(&mut ours), med(&mut pipe));
    let rss_ours = ours.iter().map(|s| s.rss_kib[0]).max().unwrap_or(0);
    let rss_z = pipe.iter().map(|s| s.rss_kib[0]).max().unwrap_or(0);
    let rss_t = pipe.iter().map(|s| s.rss_kib[1]).max().unwrap_or(0);
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "{:<22} {:>9.1} {:>9.1} | {:>9.3} {:>10.0} {:>6.1}MiB | {:>9.3} {:>10.0} {:>5.1}+{:.1}MiB | {:>5.2}x",
        label,
        mb(tar_bytes),
        mb(zst_bytes),
        o.as_secs_f64(),
        mb(tar_bytes) / o.as_secs_f64(),
        rss_ours as f64 / 1024.0,
        p.as_secs_f64(),
        mb(tar_bytes) / p.as_secs_f64(),
        rss_z as f64 / 1024.0,
        rss_t as f64 / 1024.0,
        o.as_secs_f64() / p.as_secs_f64()
    );
    Ok(())
}

/// Waits for `pid` and returns its exit status and peak RSS (KiB).
fn wait4(pid: u32) -> anyhow::Result<(i32, i64)> {
    let mut status = 0;
    // SAFETY: rusage is plain data written by wait4.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals.
    let r = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut ru) };
    anyhow::ensure!(
        r == pid as i32,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    Ok((status, ru.ru_maxrss))
}

fn sync() {
    // SAFETY: sync has no arguments.
    unsafe { libc::sync() };
}

fn run_ours(me: &Path, zst: &Path, dest: &PathBuf) -> anyhow::Result<Sample> {
    sync();
    let start = Instant::now();
    let child = Command::new(me).arg("--child").arg(zst).arg(dest).spawn()?;
    let (status, rss) = wait4(child.id())?;
    let wall = start.elapsed();
    anyhow::ensure!(status == 0, "the unpacker failed (status {status})");
    Ok(Sample {
        wall,
        rss_kib: vec![rss],
    })
}

fn run_pipeline(zst: &Path, dest: &Path) -> anyhow::Result<Sample> {
    sync();
    let start = Instant::now();
    let mut z = Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .arg(zst)
        .stdout(Stdio::piped())
        .spawn()?;
    let out = z
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no zstd stdout"))?;
    let t = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dest)
        .stdin(Stdio::from(out))
        .spawn()?;
    let (sz, rz) = wait4(z.id())?;
    let (st, rt) = wait4(t.id())?;
    let wall = start.elapsed();
    anyhow::ensure!(sz == 0 && st == 0, "zstd -d | tar -x failed ({sz}, {st})");
    Ok(Sample {
        wall,
        rss_kib: vec![rz, rt],
    })
}
