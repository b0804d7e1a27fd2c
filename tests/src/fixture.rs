//! A git repository shaped like SecureDrop Workstation, built by the tests (issue "End to end").
//!
//! What it has, and why:
//! - a `Makefile` with SDW's targets (`clone`, `dev`, `test`, `test-prereqs`,
//!   `install-dom0-test-prereqs`); `clone` reads the tree back from the dev VM the way SDW's
//!   `scripts/clone-to-dom0` does (`qvm-run --pass-io $dev_vm "tar -c --exclude-vcs ..."`, then
//!   wipe and unpack into `~/securedrop-workstation`), so sd-dev must keep the checkout in place;
//! - three relative symlinks into sibling directories (`launcher/sdw_notify -> ../sdw_notify`, ...)
//!   and executable scripts, which the tarball must carry intact;
//! - `files/config.json.example` and `sd-journalist.sec.example`, which the agent copies;
//!   `make test` fails without the copies, as SDW's `test-prereqs` does;
//! - a knob, `ci/test-mode` (`pass`, `fail`, `hang`, `flood`, `slow`), to make `make test` pass,
//!   fail, hang, print a lot (`ci/flood`: how many lines, default 20,000) or print slowly: `slow`
//!   prints two hostile lines (markup that must stay text on the job page) and a coloured one,
//!   then `N` lines `slow line I at <Unix ns>` every `GAP` seconds (`ci/slow`: `N GAP`, default
//!   `100 0.02`), for the job page's live-log tests and the P3 benchmark;
//! - a snapshot check: `make dev` leaves `~/.fixture-ran-<sha>` in dom0, and `make test` fails if
//!   a marker of *another* commit is there, i.e. if the VM was not reverted between jobs;
//! - a JUnit file, as SDW's pytest writes it (`--junitxml=test-data.xml` in the checkout's root,
//!   contracts §11): five cases of which one passes with `file`/`line` attributes, in `fail` mode
//!   one fails (with `file`/`line`: `tests/test_vms_platform.py:41`) and one errors, one is always
//!   skipped ([`JUNIT_CASES`]); in `flaky` mode `test_sd_vm_apt_sources` fails on the first run of
//!   a commit and passes on every later run, keyed on a marker directory *outside* the VM (the
//!   path in `ci/flaky`, so a snapshot revert does not forget it; [`Fixture::commit_flaky`]); and
//!   `ci/junit`, when committed ([`Fixture::commit_junit`]), is written as the JUnit file
//!   verbatim (hostile JUnit input for the host's parser). `hang` writes none (pytest writes it at
//!   the end).

use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How `make test` behaves in the fixture's commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestMode {
    Pass,
    Fail,
    Hang,
    Flood,
    Slow,
    /// `make test` fails on the first run of a commit (`test_sd_vm_apt_sources`), passes after.
    Flaky,
}

/// One JUnit case of the fixture: classname, name, file and line if any, outcome in `fail` mode.
pub type JunitCase = (
    &'static str,
    &'static str,
    Option<(&'static str, u32)>,
    &'static str,
);

/// The fixture's JUnit cases. In `pass` mode every case but the skipped one passes; in `flaky`
/// mode as `pass` except the flaky case on a commit's first run, which fails as in `fail` mode.
pub const JUNIT_CASES: &[JunitCase] = &[
    (
        "tests.test_vms_exist",
        "test_sd_vms_exist",
        Some(("tests/test_vms_exist.py", 12)),
        "passed",
    ),
    (
        "tests.test_vms_platform",
        "test_sd_vm_apt_sources",
        Some(("tests/test_vms_platform.py", 41)),
        "failed",
    ),
    ("tests.test_gpg", "test_sd_gpg_has_key", None, "error"),
    (
        "tests.test_proxy_vm",
        "test_proxy_url",
        Some(("tests/test_proxy_vm.py", 20)),
        "skipped",
    ),
    ("launcher.tests.test_updater", "test_ok", None, "passed"),
];

/// The flaky case's name ([`TestMode::Flaky`]).
pub const FLAKY_TEST: &str = "test_sd_vm_apt_sources";

impl TestMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Hang => "hang",
            Self::Flood => "flood",
            Self::Slow => "slow",
            Self::Flaky => "flaky",
        }
    }
}

/// A fixture repository on disk; `path` is usable as a git clone URL.
pub struct Fixture {
    pub path: PathBuf,
}

const MAKEFILE: &str = r#"# Shaped like SecureDrop Workstation's Makefile (the targets sdci drives).
SHELL := /bin/bash
.PHONY: clone dev test test-prereqs install-dom0-test-prereqs assert-dom0

assert-dom0:
	@test "$$(hostname)" = dom0 || { echo "must run in dom0"; exit 1; }

clone: assert-dom0
	@scripts/clone-to-dom0

dev: assert-dom0
	@scripts/dev

install-dom0-test-prereqs:
	@echo "Installing dom0 test prerequisites"
	sudo qubes-dom0-update -y python3-pytest python3-pytest-cov python3-pytest-xdist

test-prereqs:
	@test -f config.json || { echo "config.json missing: copy files/config.json.example"; exit 1; }
	@test -f sd-journalist.sec || { echo "sd-journalist.sec missing"; exit 1; }

test: test-prereqs
	@scripts/run-tests
"#;

const CLONE_TO_DOM0: &str = r#"#!/bin/bash
# Like SDW's scripts/clone-to-dom0: read the checkout back from the dev VM, replace ours.
set -euo pipefail
dev_vm=${SECUREDROP_DEV_VM:-sd-dev}
dev_dir=${SECUREDROP_DEV_DIR:-/home/user/securedrop-workstation}
tarball=$(mktemp /tmp/sd-proj.XXXXXX.tar)
trap 'rm -f "$tarball"' EXIT
echo "Cloning $dev_dir from $dev_vm"
qvm-run --pass-io "$dev_vm" "tar -c --exclude-vcs -C $(dirname "$dev_dir") $(basename "$dev_dir")" > "$tarball"
mkdir -p ~/securedrop-workstation
rm -rf ~/securedrop-workstation/*
tar xf "$tarball" -C ~/securedrop-workstation --strip-components=1
echo "Cloned $(find ~/securedrop-workstation -type f | wc -l) files"
"#;

const DEV: &str = r#"#!/bin/bash
set -euo pipefail
echo "Provisioning the development environment"
for m in ~/.fixture-ran-*; do [ -e "$m" ] && echo "found earlier marker $m"; done
touch ~/.fixture-ran-"$(cat ci/commit-id)"
# `ci/dev-secs`: make dev takes this long (the stages benchmark, issue 18).
[ -f ci/dev-secs ] && sleep "$(cat ci/dev-secs)"
# What this provisioning left in dom0, with a nonce: a later `make test` that prints the same
# line ran on this provisioned state (a re-run from the provisioned snapshot), not a new one.
echo "commit $(cat ci/commit-id) nonce $(od -An -N8 -tx8 /dev/urandom | tr -d ' ') at $(date +%s%N)" > ~/.fixture-provisioned
echo "provisioned: $(cat ~/.fixture-provisioned)"
echo "dev done"
"#;

const RUN_TESTS: &str = r#"#!/bin/bash
set -uo pipefail
mine=~/.fixture-ran-"$(cat ci/commit-id)"
for m in ~/.fixture-ran-*; do
  if [ -e "$m" ] && [ "$m" != "$mine" ]; then
    echo "FAIL: $m exists: this VM was not reverted to a clean snapshot"; exit 1
  fi
done
test -L launcher/sdw_notify && test -f launcher/sdw_notify/__init__.py || { echo "FAIL: symlink lost"; exit 1; }
test -x scripts/run-tests || { echo "FAIL: exec bit lost"; exit 1; }
echo "CI=${CI:-unset}"
[ -f ~/.fixture-provisioned ] && echo "tree provisioned by: $(cat ~/.fixture-provisioned)"
# pytest's JUnit file, as SDW's pyproject.toml has it written: test-data.xml in the checkout.
junit() { # $1: pass, fail, or flaky (only the flaky case fails)
  if [ -f ci/junit ]; then cp ci/junit test-data.xml; return; fi
  case "$1" in
    fail) apt=failed gpg=error;;
    flaky) apt=failed gpg=passed;;
    *) apt=passed gpg=passed;;
  esac
  failures=0; errors=0
  [ "$apt" = failed ] && failures=1
  [ "$gpg" = error ] && errors=1
  {
    echo '<?xml version="1.0" encoding="utf-8"?>'
    echo "<testsuites><testsuite name=\"pytest\" errors=\"$errors\" failures=\"$failures\" skipped=\"1\" tests=\"5\" time=\"1.234\" timestamp=\"$(date -u +%Y-%m-%dT%H:%M:%S)\" hostname=\"$(hostname)\">"
    echo '<testcase classname="tests.test_vms_exist" name="test_sd_vms_exist" file="tests/test_vms_exist.py" line="12" time="0.250" />'
    if [ "$apt" = failed ]; then
      echo '<testcase classname="tests.test_vms_platform" name="test_sd_vm_apt_sources" file="tests/test_vms_platform.py" line="41" time="0.500"><failure message="AssertionError: assert &apos;deb https://apt.freedom.press bookworm main&apos; in sources">def test_sd_vm_apt_sources():
&gt;       assert expected in sources
E       AssertionError: sources of sd-app differ

tests/test_vms_platform.py:44: AssertionError</failure></testcase>'
    else
      echo '<testcase classname="tests.test_vms_platform" name="test_sd_vm_apt_sources" file="tests/test_vms_platform.py" line="41" time="0.500" />'
    fi
    if [ "$gpg" = error ]; then
      echo '<testcase classname="tests.test_gpg" name="test_sd_gpg_has_key" time="0.010"><error message="failed on setup with &quot;FileNotFoundError: sd-journalist.sec&quot;">FileNotFoundError: [Errno 2] No such file or directory: &apos;sd-journalist.sec&apos;</error></testcase>'
    else
      echo '<testcase classname="tests.test_gpg" name="test_sd_gpg_has_key" time="0.010" />'
    fi
    echo '<testcase classname="tests.test_proxy_vm" name="test_proxy_url" file="tests/test_proxy_vm.py" line="20" time="0.000"><skipped type="pytest.skip" message="requires sd-proxy">tests/test_proxy_vm.py:20: requires sd-proxy</skipped></testcase>'
    echo '<testcase classname="launcher.tests.test_updater" name="test_ok" time="0.001" />'
    echo '</testsuite></testsuites>'
  } > test-data.xml
}
case "$(cat ci/test-mode)" in
  pass)  echo "tests/test_vms.py::test_sd_vms PASSED"; echo "1 passed"; junit pass;;
  fail)  echo "tests/test_vms.py::test_sd_vms FAILED"; echo "1 failed"; junit fail; exit 1;;
  flaky) # fails on the first run of this commit: the marker lives outside the VM (ci/flaky)
         marks=$(cat ci/flaky)
         if mkdir -p "$marks" && mkdir "$marks/ran-$(cat ci/commit-id)" 2>/dev/null; then
           echo "tests/test_vms_platform.py::test_sd_vm_apt_sources FAILED"; echo "1 failed"
           junit flaky; exit 1
         fi
         echo "tests/test_vms_platform.py::test_sd_vm_apt_sources PASSED"; echo "1 passed"
         junit pass;;
  hang)  echo "hanging"; sleep 100000;;
  flood) n=$(cat ci/flood 2>/dev/null || echo 20000)
         for i in $(seq 1 "$n"); do echo "line $i of a very chatty test suite"; done; echo "1 passed"
         junit pass;;
  slow)  read -r n gap < ci/slow 2>/dev/null || { n=100; gap=0.02; }
         echo '<script>window.sdciPwned = 1</script>'
         echo '"><img src=x onerror="window.sdciPwned = 2">'
         printf '\033[1;31mFAILED\033[0m in red, \033[32mok\033[0m in green\n'
         i=0
         while [ "$i" -lt "$n" ]; do i=$((i + 1)); echo "slow line $i at $(date +%s%N)"; sleep "$gap"; done
         echo "1 passed"; junit pass;;
  *) echo "unknown test mode"; exit 2;;
esac
"#;

fn write(root: &Path, rel: &str, body: &str, exec: bool) -> Result<()> {
    let p = root.join(rel);
    if let Some(dir) = p.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&p, body)?;
    if exec {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Fixture")
        .env("GIT_AUTHOR_EMAIL", "fixture@example.org")
        .env("GIT_COMMITTER_NAME", "Fixture")
        .env("GIT_COMMITTER_EMAIL", "fixture@example.org")
        .output()
        .context("running git (install it with scripts/install-deps)")?;
    if !out.status.success() {
        bail!(
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Fixture {
    /// Creates the repository at `path` with one commit on `main` in the given test mode.
    pub fn create(path: &Path, mode: TestMode) -> Result<Self> {
        fs::create_dir_all(path)?;
        git(path, &["init", "-q", "-b", "main"])?;
        git(path, &["config", "uploadpack.allowAnySHA1InWant", "true"])?;
        write(path, "Makefile", MAKEFILE, false)?;
        write(path, "scripts/clone-to-dom0", CLONE_TO_DOM0, true)?;
        write(path, "scripts/dev", DEV, true)?;
        write(path, "scripts/run-tests", RUN_TESTS, true)?;
        write(
            path,
            "files/config.json.example",
            "{\"environment\": \"dev\"}\n",
            false,
        )?;
        write(
            path,
            "sd-journalist.sec.example",
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\nfixture\n",
            false,
        )?;
        write(
            path,
            ".github/workstation-ci.yml",
            "# see securedrop-workstation-ci\nqubes: \"4.2\"\n",
            false,
        )?;
        for pkg in ["sdw_notify", "sdw_updater", "sdw_util"] {
            write(path, &format!("{pkg}/__init__.py"), "", false)?;
            write(
                path,
                &format!("{pkg}/{pkg}.py"),
                "def main():\n    return 0\n",
                false,
            )?;
            fs::create_dir_all(path.join("launcher"))?;
            std::os::unix::fs::symlink(format!("../{pkg}"), path.join("launcher").join(pkg))?;
        }
        write(
            path,
            "launcher/tests/test_updater.py",
            "def test_ok():\n    pass\n",
            false,
        )?;
        write(path, "ci/test-mode", &format!("{}\n", mode.as_str()), false)?;
        write(path, "ci/commit-id", "1\n", false)?;
        git(path, &["add", "-A"])?;
        git(path, &["commit", "-q", "-m", "fixture: initial"])?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// Commits a new test mode (and a new commit id) and returns the new head sha.
    pub fn commit_mode(&self, mode: TestMode, message: &str) -> Result<String> {
        let n: u64 = fs::read_to_string(self.path.join("ci/commit-id"))?
            .trim()
            .parse()
            .unwrap_or(1);
        write(
            &self.path,
            "ci/test-mode",
            &format!("{}\n", mode.as_str()),
            false,
        )?;
        write(&self.path, "ci/commit-id", &format!("{}\n", n + 1), false)?;
        git(&self.path, &["commit", "-q", "-am", message])?;
        self.head()
    }

    /// Commits `make dev` taking `secs` seconds (`ci/dev-secs`; issue 18's benchmark).
    pub fn commit_dev_secs(&self, secs: f64, message: &str) -> Result<String> {
        write(&self.path, "ci/dev-secs", &format!("{secs}\n"), false)?;
        git(&self.path, &["add", "ci/dev-secs"])?;
        git(&self.path, &["commit", "-q", "-m", message])?;
        self.head()
    }

    /// Commits `make test` printing `lines` timestamped lines every `gap_secs` (mode `slow`);
    /// returns the new head sha.
    pub fn commit_slow(&self, lines: u32, gap_secs: f64, message: &str) -> Result<String> {
        write(
            &self.path,
            "ci/slow",
            &format!("{lines} {gap_secs}\n"),
            false,
        )?;
        git(&self.path, &["add", "ci/slow"])?;
        self.commit_mode(TestMode::Slow, message)
    }

    /// Commits `make test` printing `lines` lines at once (mode `flood`); returns the new sha.
    pub fn commit_flood(&self, lines: u32, message: &str) -> Result<String> {
        write(&self.path, "ci/flood", &format!("{lines}\n"), false)?;
        git(&self.path, &["add", "ci/flood"])?;
        self.commit_mode(TestMode::Flood, message)
    }

    /// Commits `make test` in `flaky` mode: [`FLAKY_TEST`] fails on the first run of the new
    /// commit and passes on every re-run. `marks` is a directory outside the VM's disk (so a
    /// snapshot revert keeps it; reachable from dom0's steps: the vSphere world's guests run on
    /// this machine); returns the new sha.
    pub fn commit_flaky(&self, marks: &Path, message: &str) -> Result<String> {
        write(
            &self.path,
            "ci/flaky",
            &format!("{}\n", marks.display()),
            false,
        )?;
        git(&self.path, &["add", "ci/flaky"])?;
        self.commit_mode(TestMode::Flaky, message)
    }

    /// Commits `junit` as the JUnit file `make test` writes verbatim (any bytes: hostile input
    /// for the host's parser), in `mode`; returns the new sha.
    pub fn commit_junit(&self, junit: &[u8], mode: TestMode, message: &str) -> Result<String> {
        fs::create_dir_all(self.path.join("ci"))?;
        fs::write(self.path.join("ci/junit"), junit)?;
        git(&self.path, &["add", "ci/junit"])?;
        self.commit_mode(mode, message)
    }

    /// The sha of `main`'s head.
    pub fn head(&self) -> Result<String> {
        git(&self.path, &["rev-parse", "HEAD"])
    }
}
