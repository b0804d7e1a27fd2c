//! The checkout: exactly one commit, fetched with the git CLI into the job's `dev_dir`, plus the
//! two files SDW's `make test` needs that the repository only ships as examples.
//!
//! Invariants:
//! - The token never appears in a process argument list, a URL, git's config or a log: git gets
//!   it through `GIT_ASKPASS`, a script in a private temporary directory that prints it from an
//!   environment variable of the git process; `credential.helper` is emptied so no helper stores
//!   it, and `GIT_TERMINAL_PROMPT=0` makes a missing credential fail instead of waiting.
//! - First a shallow fetch of that sha (`--depth 1`); if the server refuses (dumb HTTP, servers
//!   that do not allow fetching unadvertised objects), a full fetch of branches and pull-request
//!   heads. Either way the commit is verified to exist before it is checked out, detached.
//! - A fetch that fails for now — GitHub answering 5xx or 429, a connection refused, reset or
//!   timed out ([`is_transient`]) — is tried again after 1, 2, 4, 8, 16 and 30 s (about a minute
//!   in all) before the job fails: a short GitHub outage costs a minute, not a VM boot and an
//!   attempt. Any other failure is final at once.
//! - Any previous directory at `dev_dir` is removed first, so nothing of an older job survives.
//! - The `.example` copies read and write regular files only, never through or onto a symlink
//!   the commit put there ([`copy_examples`]).

use crate::error::{AgentError, Result};
use sdci_protocol::job::Secret;
use sdci_protocol::CommitSha;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// How the commit arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    Shallow,
    Full,
}

/// The askpass script: answers git's username prompt with `x-access-token` (what GitHub expects
/// with an installation token or a PAT) and the password prompt with `$SDCI_GIT_TOKEN`.
const ASKPASS: &str = "#!/bin/sh\ncase \"$1\" in\n  [Uu]sername*) printf '%s\\n' x-access-token ;;\n  *) printf '%s\\n' \"$SDCI_GIT_TOKEN\" ;;\nesac\n";

/// Runs git commands for one checkout.
pub struct Git<'a> {
    program: &'a str,
    dir: &'a Path,
    token: Option<&'a Secret>,
    askpass: Option<tempfile::TempDir>,
}

impl<'a> Git<'a> {
    pub fn new(program: &'a str, dir: &'a Path, token: Option<&'a Secret>) -> Result<Self> {
        let askpass = match token {
            None => None,
            Some(_) => {
                let tmp = tempfile::Builder::new()
                    .prefix("sdci-askpass-")
                    .tempdir()
                    .map_err(|e| AgentError::io("creating the askpass directory", e))?;
                let script = tmp.path().join("askpass");
                std::fs::write(&script, ASKPASS)
                    .and_then(|()| {
                        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))
                    })
                    .map_err(|e| AgentError::io("writing the askpass script", e))?;
                Some(tmp)
            }
        };
        Ok(Self {
            program,
            dir,
            token,
            askpass,
        })
    }

    /// Runs `git -C dir -c credential.helper= ARGS`; on failure the error carries git's stderr.
    fn run(&self, args: &[&str]) -> Result<()> {
        let mut cmd = Command::new(self.program);
        cmd.arg("-C")
            .arg(self.dir)
            .args([
                "-c",
                "credential.helper=",
                "-c",
                "advice.detachedHead=false",
            ])
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .env_remove("SDCI_GIT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let (Some(token), Some(dir)) = (self.token, &self.askpass) {
            cmd.env("GIT_ASKPASS", dir.path().join("askpass"))
                .env("SDCI_GIT_TOKEN", token.expose());
        }
        let out = cmd.output().map_err(|e| {
            AgentError::Git(format!(
                "cannot run {:?}: {e} (is git installed?)",
                self.program
            ))
        })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let mut msg: Vec<&str> = tail.into_iter().rev().collect();
        if msg.is_empty() {
            msg.push("(no message)");
        }
        Err(AgentError::Git(format!(
            "`git {}` failed ({}): {}",
            args.first().copied().unwrap_or(""),
            out.status,
            msg.join(" | ")
        )))
    }

    /// [`Git::run`], tried again after [`RETRY_DELAYS`] while git's error [`is_transient`].
    fn run_retrying(&self, args: &[&str]) -> Result<()> {
        let mut delays = RETRY_DELAYS.iter();
        loop {
            match self.run(args) {
                Err(AgentError::Git(msg)) if is_transient(&msg) => match delays.next() {
                    Some(delay) => {
                        tracing::warn!(error = %msg, retry_in_secs = delay.as_secs(), "git failed for now; trying again");
                        std::thread::sleep(*delay);
                    }
                    None => return Err(AgentError::Git(msg)),
                },
                other => return other,
            }
        }
    }

    /// Fetches exactly `sha` from `url` into a fresh repository at the directory, and checks it
    /// out (detached).
    pub fn fetch_commit(&self, url: &str, sha: &CommitSha) -> Result<Fetched> {
        if url_has_credentials(url) {
            // It would end up in git's argv and config; tokens travel in the job's `token`.
            return Err(AgentError::Git(
                "the clone URL carries credentials (user:password@); the token belongs in the job's token field".into(),
            ));
        }
        match std::fs::symlink_metadata(self.dir) {
            Ok(_) => std::fs::remove_dir_all(self.dir).map_err(|e| {
                AgentError::io(
                    format!("removing the previous checkout {}", self.dir.display()),
                    e,
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(AgentError::io(
                    format!("inspecting {}", self.dir.display()),
                    e,
                ))
            }
        }
        std::fs::create_dir_all(self.dir)
            .map_err(|e| AgentError::io(format!("creating {}", self.dir.display()), e))?;
        let format = if sha.as_str().len() == 64 {
            "sha256"
        } else {
            "sha1"
        };
        self.run(&["init", "-q", &format!("--object-format={format}")])?;
        self.run(&["remote", "add", "origin", url])?;
        let fetched = match self.run_retrying(&[
            "-c",
            "protocol.version=2",
            "fetch",
            "-q",
            "--no-tags",
            "--depth",
            "1",
            "origin",
            sha.as_str(),
        ]) {
            Ok(()) => Fetched::Shallow,
            // Still failing for now after the retries: a full fetch would fail the same way.
            Err(AgentError::Git(msg)) if is_transient(&msg) => return Err(AgentError::Git(msg)),
            Err(e) => {
                tracing::info!(error = %e, "shallow fetch refused; fetching the whole repository");
                self.run_retrying(&[
                    "fetch",
                    "-q",
                    "--no-tags",
                    "origin",
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/pull/*/head:refs/remotes/origin/pull/*",
                ])?;
                Fetched::Full
            }
        };
        self.run(&["cat-file", "-e", &format!("{sha}^{{commit}}")])
            .map_err(|_| AgentError::Git(format!("commit {sha} is not in {url}")))?;
        self.run(&["checkout", "-q", "--detach", sha.as_str()])?;
        Ok(fetched)
    }
}

/// The pauses between tries of a fetch that failed for now: about a minute in all.
const RETRY_DELAYS: [std::time::Duration; 6] = [
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(2),
    std::time::Duration::from_secs(4),
    std::time::Duration::from_secs(8),
    std::time::Duration::from_secs(16),
    std::time::Duration::from_secs(30),
];

/// Whether git's error (its last stderr lines) says the remote failed for now: an HTTP 5xx or
/// 429 answer, or a connection that could not be made or was lost. A 4xx (a wrong token, a
/// missing repository), a refused unadvertised object or a missing commit is not.
pub fn is_transient(git_error: &str) -> bool {
    let e = git_error.to_ascii_lowercase();
    let http_status = e
        .split("returned error: ")
        .nth(1)
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok());
    if let Some(code) = http_status {
        return code == 429 || (500..600).contains(&code);
    }
    [
        "failed to connect",
        "connection refused",
        "connection reset",
        "connection timed out",
        "operation timed out",
        "could not resolve host",
        "rpc failed",
        "early eof",
        "unexpected disconnect",
        "the remote end hung up unexpectedly",
    ]
    .iter()
    .any(|needle| e.contains(needle))
}

/// True when an URL has a `userinfo@` part before its host.
fn url_has_credentials(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    authority.contains('@')
}

/// The largest `.example` file copied; SDW's are a few hundred bytes.
pub const MAX_EXAMPLE_BYTES: u64 = 1 << 20;

/// Copies `files/config.json.example` → `config.json` and `sd-journalist.sec.example` →
/// `sd-journalist.sec` when the examples exist; returns the files written.
///
/// The commit is hostile input: only a regular file is copied, and never through or onto a
/// symlink. A source that is (or lies below) a symlink, or is not a regular file, and a
/// destination that exists as a symlink or anything but a regular file, refuse the job with an
/// error saying which (rather than skipping: the build would then run without the file it needs).
/// Both ends are opened with `O_NOFOLLOW`, the source's parents are checked without following
/// them, and at most [`MAX_EXAMPLE_BYTES`] are copied.
pub fn copy_examples(dir: &Path) -> Result<Vec<&'static str>> {
    let mut written = Vec::new();
    for (from, to) in [
        ("files/config.json.example", "config.json"),
        ("sd-journalist.sec.example", "sd-journalist.sec"),
    ] {
        let refuse = |why: String| {
            AgentError::io(
                format!("copying {from} to {to}"),
                std::io::Error::other(format!(
                    "{why}; the agent copies only regular files, never through or onto a \
                     symlink (commit the example as a regular file)"
                )),
            )
        };
        let Some(src) = open_regular(dir, from).map_err(refuse)? else {
            continue;
        };
        let mut dst =
            open_destination(&dir.join(to)).map_err(|why| refuse(format!("{to} {why}")))?;
        let copied = std::io::copy(
            &mut std::io::Read::take(src, MAX_EXAMPLE_BYTES + 1),
            &mut dst,
        )
        .map_err(|e| AgentError::io(format!("copying {from} to {to}"), e))?;
        if copied > MAX_EXAMPLE_BYTES {
            return Err(refuse(format!(
                "{from} is larger than {MAX_EXAMPLE_BYTES} bytes"
            )));
        }
        tracing::info!(from, to, bytes = copied, "example copied");
        written.push(to);
    }
    Ok(written)
}

/// Opens `dir/rel` for reading if it is a regular file reached without following a symlink;
/// `Ok(None)` if it does not exist; `Err` (why) otherwise.
fn open_regular(dir: &Path, rel: &str) -> std::result::Result<Option<std::fs::File>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut path = dir.to_path_buf();
    let comps: Vec<&str> = rel.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        path.push(c);
        let md = match std::fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot inspect {}: {e}", comps[..=i].join("/"))),
        };
        let here = comps[..=i].join("/");
        let last = i + 1 == comps.len();
        if md.file_type().is_symlink() {
            return Err(format!("{here} is a symlink"));
        }
        if !last && !md.is_dir() {
            return Err(format!("{here} is not a directory"));
        }
        if last && !md.is_file() {
            return Err(format!("{here} is not a regular file"));
        }
    }
    // O_NOFOLLOW: if the last component became a symlink since, the open fails; O_NONBLOCK: a
    // FIFO put there would not block the agent.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| format!("cannot open {rel}: {e}"))?;
    match file.metadata() {
        Ok(md) if md.is_file() => Ok(Some(file)),
        Ok(_) => Err(format!("{rel} is not a regular file")),
        Err(e) => Err(format!("cannot inspect {rel}: {e}")),
    }
}

/// Creates or truncates `path` for writing, refusing a symlink (`O_NOFOLLOW`, so a dangling one
/// is not created through either) and anything but a regular file.
fn open_destination(path: &Path) -> std::result::Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_symlink() => return Err("exists as a symlink".into()),
        Ok(md) if !md.is_file() => return Err("exists and is not a regular file".into()),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => "exists as a symlink".into(),
            _ => format!("cannot be written: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_errors_of_an_outage_are_transient_and_refusals_are_not() {
        for e in [
            "`git fetch` failed (exit status: 128): fatal: unable to access 'http://127.0.0.1:1/o/r.git/': The requested URL returned error: 503",
            "fatal: unable to access 'x': The requested URL returned error: 429",
            "fatal: unable to access 'x': Failed to connect to 127.0.0.1 port 9: Connection refused",
            "error: RPC failed; curl 56 Recv failure: Connection reset by peer | fatal: early EOF",
        ] {
            assert!(is_transient(e), "{e}");
        }
        for e in [
            "fatal: unable to access 'x': The requested URL returned error: 403",
            "fatal: Authentication failed for 'http://127.0.0.1/o/r.git/'",
            "fatal: remote error: upload-pack: not our ref 0123456789abcdef",
            "fatal: couldn't find remote ref 0123456789abcdef",
        ] {
            assert!(!is_transient(e), "{e}");
        }
    }

    #[test]
    fn clone_urls_with_credentials_are_refused_before_git_runs() {
        assert!(url_has_credentials(
            "https://x-access-token:ghs_x@github.com/o/r.git"
        ));
        assert!(!url_has_credentials("https://github.com/o/r.git"));
        assert!(!url_has_credentials("/srv/git/o/r"));
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("co");
        let git = Git::new("/nonexistent/git", &target, None).unwrap();
        let sha: CommitSha = "0123456789abcdef0123456789abcdef01234567".parse().unwrap();
        let err = git
            .fetch_commit("https://u:secret@github.com/o/r.git", &sha)
            .unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(!target.exists(), "nothing was created");
    }

    #[test]
    fn the_askpass_script_answers_user_and_password_prompts() {
        let dir = tempfile::tempdir().unwrap();
        let token = Secret::new("ghs_askpass_test");
        let git = Git::new("git", dir.path(), Some(&token)).unwrap();
        let script = git.askpass.as_ref().unwrap().path().join("askpass");
        let ask = |prompt: &str| {
            let out = Command::new(&script)
                .arg(prompt)
                .env("SDCI_GIT_TOKEN", token.expose())
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(
            ask("Username for 'https://github.com': "),
            "x-access-token\n"
        );
        assert_eq!(
            ask("Password for 'https://x-access-token@github.com': "),
            "ghs_askpass_test\n"
        );
        let mode = std::fs::metadata(&script).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_symlinked_example_is_refused_and_what_it_points_to_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "SECRET").unwrap();
        std::fs::create_dir(dir.path().join("files")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret"),
            dir.path().join("files/config.json.example"),
        )
        .unwrap();
        let err = copy_examples(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("files/config.json.example is a symlink"),
            "{err}"
        );
        assert!(!dir.path().join("config.json").exists());
    }

    #[test]
    fn an_example_below_a_symlinked_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("config.json.example"), "SECRET").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("files")).unwrap();
        let err = copy_examples(dir.path()).unwrap_err().to_string();
        assert!(err.contains("files is a symlink"), "{err}");
        assert!(!dir.path().join("config.json").exists());
    }

    #[test]
    fn a_symlinked_destination_is_refused_and_its_target_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "ORIGINAL").unwrap();
        std::fs::write(dir.path().join("sd-journalist.sec.example"), "KEY").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("sd-journalist.sec")).unwrap();
        let err = copy_examples(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("sd-journalist.sec exists as a symlink"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "ORIGINAL");
        // A dangling one is not created through either.
        std::fs::remove_file(&victim).unwrap();
        assert!(copy_examples(dir.path()).is_err());
        assert!(!victim.exists());
    }

    #[test]
    fn examples_are_copied_when_present() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("files")).unwrap();
        std::fs::write(dir.path().join("files/config.json.example"), "{}").unwrap();
        assert_eq!(copy_examples(dir.path()).unwrap(), ["config.json"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("config.json")).unwrap(),
            "{}"
        );
        assert!(!dir.path().join("sd-journalist.sec").exists());
    }
}
