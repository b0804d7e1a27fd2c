//! `git-fetch-bench`: P7 (issue 17): bytes and time of the agent's shallow fetch of one sha
//! against a full clone of an SDW-sized repository, both over the GitHub stand-in's smart HTTP
//! (`sdci_tests::github`, the real `git http-backend`) on loopback.
//!
//! The repository: `--commits` commits (default 3,000; SDW's main has about that many) over a
//! tree of `--files` files (default 400), each commit rewriting two files with fresh
//! pseudo-random text of `--blob-kib` KiB (default 6), so the history packs to about 30 MB
//! while one commit's tree stays a few MB, as SDW's does. Built with `git fast-import` into
//! `target/git-fetch-bench/` and kept for the next run (its parameters name the folder).
//!
//! Measured, `--runs` times each (default 3; the median is printed):
//! 1. the agent's fetch (`sd-dev-agent/src/checkout.rs`, the same commands): `git init`,
//!    `remote add`, `git -c protocol.version=2 fetch -q --no-tags --depth 1 origin <sha>` of the
//!    tip of `main`, then `checkout --detach`; the token through `GIT_ASKPASS`;
//! 2. the same of an older commit (`--depth 1` of `main~1000`, unadvertised);
//! 3. a full clone (`git clone -q`, every commit, with checkout);
//! 4. the agent's fallback full fetch (`+refs/heads/*`, `+refs/pull/*/head`) and checkout.
//!
//! Bytes are what the stand-in's `git http-backend` answered (ref advertisement and pack, after
//! git's framing; `GitHub::git_bytes_sent`), time is the wall time of the git commands. Prints a
//! table and writes `target/git-fetch-bench.json`. A benchmark, not a test: nothing asserts.
#![allow(clippy::unwrap_used)]

use anyhow::{bail, Context, Result};
use sdci_tests::github::GitHub;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = "freedomofpress/securedrop-workstation";
const TOKEN: &str = "ghs_bench_reader";

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn git(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "credential.helper=",
            "-c",
            "advice.detachedHead=false",
        ])
        .args(args)
        .envs(envs.iter().copied())
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .output()
        .with_context(|| format!("git {args:?}"))?;
    if !out.status.success() {
        bail!(
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// xorshift64*: reproducible pseudo-random text without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// `n` bytes of lines of base64-alphabet text (compresses as source code roughly does).
    fn text(&mut self, n: usize) -> Vec<u8> {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let r = self.next();
            for i in 0..8 {
                v.push(A[((r >> (i * 8)) & 63) as usize]);
            }
            if v.len() % 72 < 8 {
                v.push(b'\n');
            }
        }
        v.truncate(n);
        v
    }
}

/// Builds (once) the SDW-sized repository; returns its path.
fn build_repo(commits: u64, files: u64, blob_kib: u64) -> Result<PathBuf> {
    let dir = sdci_tests::workspace_root()
        .join("target/git-fetch-bench")
        .join(format!("repo-{commits}c-{files}f-{blob_kib}k"));
    if dir.join("done").exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    git(&dir, &["init", "-q", "--bare"], &[])?;
    eprintln!(
        "building {commits} commits over {files} files in {}",
        dir.display()
    );
    let t = Instant::now();
    let mut fi = Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()?;
    let mut w = std::io::BufWriter::new(fi.stdin.take().context("fast-import stdin")?);
    let mut rng = Rng(0x5d_c1_5d_c1);
    let blob = (blob_kib * 1024) as usize;
    for c in 0..commits {
        let msg = format!("commit {c}\n");
        let when = 1_600_000_000 + c * 3600;
        write!(
            w,
            "commit refs/heads/main\ncommitter SecureDrop <dev@securedrop.invalid> {when} +0000\ndata {}\n{msg}",
            msg.len()
        )?;
        // The first commit writes every file; later ones rewrite two.
        let touched: Vec<u64> = if c == 0 {
            (0..files).collect()
        } else {
            vec![rng.next() % files, rng.next() % files]
        };
        for f in touched {
            let body = rng.text(blob);
            let path = format!("dir{}/file{f}.py", f % 20);
            write!(w, "M 100644 inline {path}\ndata {}\n", body.len())?;
            w.write_all(&body)?;
            w.write_all(b"\n")?;
        }
    }
    drop(w);
    if !fi.wait()?.success() {
        bail!("git fast-import failed");
    }
    git(&dir, &["repack", "-adq"], &[])?;
    std::fs::write(dir.join("done"), "")?;
    eprintln!("built in {:.1?}", t.elapsed());
    Ok(dir)
}

fn du(path: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => n += du(&p),
                Ok(m) => n += m.len(),
                Err(_) => {}
            }
        }
    }
    n
}

struct Sample {
    bytes: u64,
    time: Duration,
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by_key(|s| s.time);
    let m = v.len() / 2;
    v.swap_remove(m)
}

fn main() -> Result<()> {
    let commits = arg("--commits", 3000);
    let files = arg("--files", 400);
    let blob_kib = arg("--blob-kib", 6);
    let runs = arg("--runs", 3).max(1);
    let src = build_repo(commits, files, blob_kib)?;
    // HEAD names main, so the clone checks it out as the agent's fetch does.
    git(&src, &["symbolic-ref", "HEAD", "refs/heads/main"], &[])?;
    let pack_bytes = du(&src.join("objects"));
    let tip = git(&src, &["rev-parse", "main"], &[])?;
    let old = git(&src, &["rev-parse", &format!("main~{}", commits / 3)], &[])?;

    let gh = GitHub::start();
    gh.add_installation_token(TOKEN, &["securedrop-workstation"], &[("contents", "read")]);
    gh.serve_git(REPO, &src);
    let url = gh.clone_url(REPO);
    let scratch = tempfile::tempdir()?;
    let askpass = scratch.path().join("askpass");
    // The agent's askpass (checkout.rs), the token from the environment.
    std::fs::write(
        &askpass,
        "#!/bin/sh\ncase \"$1\" in\n  [Uu]sername*) printf '%s\\n' x-access-token ;;\n  *) printf '%s\\n' \"$SDCI_GIT_TOKEN\" ;;\nesac\n",
    )?;
    std::fs::set_permissions(
        &askpass,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let askpass_s = askpass.to_string_lossy().into_owned();
    let env = [
        ("GIT_ASKPASS", askpass_s.as_str()),
        ("SDCI_GIT_TOKEN", TOKEN),
    ];

    let measure = |name: &str, f: &dyn Fn(&Path) -> Result<()>| -> Result<Sample> {
        let mut samples = Vec::new();
        for i in 0..runs {
            let dir = scratch.path().join(format!("{name}-{i}"));
            std::fs::create_dir_all(&dir)?;
            let before = gh.git_bytes_sent();
            let t = Instant::now();
            f(&dir)?;
            let time = t.elapsed();
            samples.push(Sample {
                bytes: gh.git_bytes_sent() - before,
                time,
            });
            std::fs::remove_dir_all(&dir)?;
        }
        Ok(median(samples))
    };
    let agent_shallow = |sha: String| {
        let (url, env) = (url.clone(), env);
        move |dir: &Path| -> Result<()> {
            git(dir, &["init", "-q", "--object-format=sha1"], &env)?;
            git(dir, &["remote", "add", "origin", &url], &env)?;
            git(
                dir,
                &[
                    "-c",
                    "protocol.version=2",
                    "fetch",
                    "-q",
                    "--no-tags",
                    "--depth",
                    "1",
                    "origin",
                    &sha,
                ],
                &env,
            )?;
            git(dir, &["cat-file", "-e", &format!("{sha}^{{commit}}")], &env)?;
            git(dir, &["checkout", "-q", "--detach", &sha], &env)?;
            Ok(())
        }
    };
    let shallow_tip = measure("shallow-tip", &agent_shallow(tip.clone()))?;
    let shallow_old = measure("shallow-old", &agent_shallow(old.clone()))?;
    let clone = measure("clone", &|dir: &Path| {
        git(dir, &["clone", "-q", &url, "r"], &env)?;
        Ok(())
    })?;
    let fallback = measure("full-fetch", &|dir: &Path| {
        git(dir, &["init", "-q"], &env)?;
        git(dir, &["remote", "add", "origin", &url], &env)?;
        git(
            dir,
            &[
                "fetch",
                "-q",
                "--no-tags",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/pull/*/head:refs/remotes/origin/pull/*",
            ],
            &env,
        )?;
        git(dir, &["checkout", "-q", "--detach", &tip], &env)?;
        Ok(())
    })?;
    let shallow_fetches = gh
        .git_fetches()
        .iter()
        .filter(|f| f.request.deepen == Some(1))
        .count();
    if shallow_fetches < 2 * runs as usize {
        bail!(
            "the stand-in saw {shallow_fetches} shallow fetches, expected {}",
            2 * runs
        );
    }
    drop(gh);

    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "repository: {commits} commits, {files} files, objects {:.1} MB on disk; median of {runs}",
        mb(pack_bytes)
    );
    println!(
        "{:<44} {:>10} {:>9} {:>8} {:>8}",
        "", "MB sent", "time", "bytes ×", "time ×"
    );
    let row = |name: &str, s: &Sample| {
        println!(
            "{name:<44} {:>10.2} {:>8.2}s {:>8.3} {:>8.3}",
            mb(s.bytes),
            s.time.as_secs_f64(),
            s.bytes as f64 / clone.bytes as f64,
            s.time.as_secs_f64() / clone.time.as_secs_f64()
        )
    };
    row("agent: shallow fetch of the tip (depth 1)", &shallow_tip);
    row(
        &format!("agent: shallow fetch of main~{}", commits / 3),
        &shallow_old,
    );
    row("full clone (git clone)", &clone);
    row("agent's fallback: full fetch + checkout", &fallback);
    let j = |s: &Sample| json!({"bytes": s.bytes, "secs": s.time.as_secs_f64()});
    let report = json!({
        "commits": commits, "files": files, "blob_kib": blob_kib, "runs": runs,
        "objects_bytes": pack_bytes,
        "shallow_tip": j(&shallow_tip), "shallow_old": j(&shallow_old),
        "clone": j(&clone), "full_fetch": j(&fallback),
        "bytes_ratio": shallow_tip.bytes as f64 / clone.bytes as f64,
        "time_ratio": shallow_tip.time.as_secs_f64() / clone.time.as_secs_f64(),
    });
    let out = sdci_tests::workspace_root().join("target/git-fetch-bench.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
    println!("written {}", out.display());
    Ok(())
}
