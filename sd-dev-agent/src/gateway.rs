//! The host-side subcommands (`status`, `token`, `revoke`, `head`, `ci-config`, `check-run`,
//! `permission`, `file`, `react`, `pull-head`): what `sdci-host` runs instead of calling GitHub itself (contracts §5;
//! exit codes are `sdci_protocol::GatewayExit`, through `AgentError::exit_code`). Each parses
//! its arguments into validated types first, so bad input is a usage error before any request
//! is made; results go to stdout, logs to stderr.

use crate::check_run::{CheckRunArgs, CheckRunRequest};
use crate::ci_config::{self, CI_CONFIG_PATH};
use crate::config::Config;
use crate::error::{AgentError, Result};
use crate::github::{Auth, GitHub, Permissions, StatusUpdate, CONTENTS_API_MAX_BYTES};
use sdci_protocol::{CommitSha, RepoName, Secret, StatusState};
use std::io::Read;

fn repo(s: &str) -> Result<RepoName> {
    s.parse()
        .map_err(|e| AgentError::Usage(format!("--repo: {e}")))
}

fn sha(s: &str) -> Result<CommitSha> {
    s.parse()
        .map_err(|e| AgentError::Usage(format!("--sha: {e}")))
}

/// `status`: posts one commit status.
pub async fn status(
    cfg: &Config,
    repo_arg: &str,
    sha_arg: &str,
    state: &str,
    description: &str,
    target_url: Option<&str>,
    context: Option<&str>,
) -> Result<()> {
    let (repo, sha) = (repo(repo_arg)?, sha(sha_arg)?);
    let state: StatusState = state
        .parse()
        .map_err(|e: String| AgentError::Usage(format!("--state: {e}")))?;
    let gh = GitHub::from_config(cfg)?;
    let update = StatusUpdate {
        state,
        description: description.to_owned(),
        target_url: target_url.map(str::to_owned),
        context: context.unwrap_or(&cfg.context).to_owned(),
    };
    gh.post_status(&repo, &sha, &update).await
}

/// `token`: a short-lived installation token for one repository, narrowed to `permissions`
/// (`name:level,…`; default `contents:read`, what a job needs), as a JSON line
/// ([`sdci_protocol::MintedToken`]).
pub async fn token(cfg: &Config, repo_arg: &str, permissions: Option<&str>) -> Result<String> {
    let repo = repo(repo_arg)?;
    let permissions = match permissions {
        Some(p) => Permissions::parse(p)?,
        None => Permissions::job(),
    };
    let gh = GitHub::from_config(cfg)?;
    Ok(gh.installation_token(&repo, &permissions).await?.to_json())
}

/// The largest token file `revoke` reads (an installation token is about 40 bytes).
const MAX_TOKEN_INPUT: u64 = 4096;

/// `revoke --token-file FILE|-`: revokes an installation token (`DELETE /installation/token`).
/// The token comes from a file or stdin, never the command line (where `ps` would show it), by
/// the one rule for secret files; a `token` output line (`{"token":…}`) is accepted too.
pub async fn revoke(cfg: &Config, token_file: &str) -> Result<()> {
    let mut text = String::new();
    if token_file == "-" {
        std::io::stdin()
            .take(MAX_TOKEN_INPUT)
            .read_to_string(&mut text)
            .map_err(|e| AgentError::Usage(format!("--token-file -: cannot read stdin: {e}")))?;
    } else {
        std::fs::File::open(token_file)
            .and_then(|f| f.take(MAX_TOKEN_INPUT).read_to_string(&mut text))
            .map_err(|e| AgentError::Usage(format!("--token-file {token_file}: {e}")))?;
    }
    let token = match sdci_protocol::MintedToken::from_json(text.trim()) {
        Ok(m) => m.token,
        Err(_) => Secret::from_file_contents(text)
            .ok_or_else(|| AgentError::Usage("--token-file: no token given".into()))?,
    };
    if token
        .expose()
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(AgentError::Usage(
            "--token-file: not one token (whitespace or control characters inside)".into(),
        ));
    }
    GitHub::new(&cfg.api_url, Auth::Token(token.clone()), cfg.retry.clone())?
        .revoke_token(&token)
        .await
}

/// `head`: a branch's head commit.
pub async fn head(cfg: &Config, repo_arg: &str, branch: &str) -> Result<String> {
    let repo = repo(repo_arg)?;
    if branch.is_empty() {
        return Err(AgentError::Usage("--branch must not be empty".into()));
    }
    let gh = GitHub::from_config(cfg)?;
    Ok(gh.branch_head(&repo, branch).await?.to_string())
}

/// `ci-config`: the Qubes version from `.github/workstation-ci.yml` at a commit.
pub async fn ci_config(cfg: &Config, repo_arg: &str, sha_arg: &str) -> Result<String> {
    let (repo, sha) = (repo(repo_arg)?, sha(sha_arg)?);
    let gh = GitHub::from_config(cfg)?;
    let bytes = gh
        .file_at(&repo, &sha, CI_CONFIG_PATH, CONTENTS_API_MAX_BYTES)
        .await?
        .ok_or_else(|| {
            AgentError::NoCiConfig(format!("{repo} has no {CI_CONFIG_PATH} at {}", sha.short()))
        })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| AgentError::NoCiConfig(format!("{CI_CONFIG_PATH} is not UTF-8 text")))?;
    ci_config::qubes_version(&text)
}

/// `check-run`: creates or updates a check run; prints `{"id":N}`. Every limit is checked
/// before the configuration is even read ([`CheckRunRequest::parse`]).
pub async fn check_run(cfg: &Config, args: &CheckRunArgs) -> Result<String> {
    let req = CheckRunRequest::parse(args)?;
    let gh = GitHub::from_config(cfg)?;
    let id = gh.check_run(&req).await?;
    Ok(serde_json::json!({ "id": id }).to_string())
}

/// A GitHub login: letters, digits and single inner hyphens, at most 39 characters; an App's
/// bot account adds `[bot]` (`dependabot[bot]`).
fn login(s: &str) -> Result<&str> {
    let name = s.strip_suffix("[bot]").unwrap_or(s);
    let ok = !name.is_empty()
        && name.len() <= 39
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if !ok {
        return Err(AgentError::Usage(format!(
            "--user={s:?} is not a GitHub login"
        )));
    }
    Ok(s)
}

/// `permission`: one word, the user's permission on the repository (`admin`, `maintain`,
/// `write`, `triage`, `read` or `none`).
pub async fn permission(cfg: &Config, repo_arg: &str, user: &str) -> Result<String> {
    let (repo, user) = (repo(repo_arg)?, login(user)?);
    let gh = GitHub::from_config(cfg)?;
    gh.collaborator_permission(&repo, user).await
}

/// GitHub's reaction contents (`POST …/reactions`' `content`).
pub const REACTIONS: [&str; 8] = [
    "+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes",
];

/// `react`: a reaction on an issue or pull-request comment (`POST
/// /repos/{o}/{r}/issues/comments/{id}/reactions`); one that exists already is success.
pub async fn react(cfg: &Config, repo_arg: &str, comment_id: &str, content: &str) -> Result<()> {
    let repo = repo(repo_arg)?;
    let id: u64 = comment_id.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
        AgentError::Usage(format!("--comment-id={comment_id:?} is not a comment id"))
    })?;
    if !REACTIONS.contains(&content) {
        return Err(AgentError::Usage(format!(
            "--content={content:?} is not one of {}",
            REACTIONS.join(", ")
        )));
    }
    let gh = GitHub::from_config(cfg)?;
    gh.react_to_comment(&repo, id, content).await
}

/// `file`'s default bound (`--max-bytes`).
pub const DEFAULT_FILE_MAX_BYTES: u64 = 65_536;

/// A path inside the repository: relative, `/`-separated, no empty, `.` or `..` segment, no
/// control characters.
fn repo_path(p: &str) -> Result<&str> {
    let ok = !p.is_empty()
        && !p.chars().any(char::is_control)
        && p.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if !ok {
        return Err(AgentError::Usage(format!(
            "--path={p:?} is not a path inside the repository (relative, no empty, . or .. part)"
        )));
    }
    Ok(p)
}

/// `file`: the raw bytes of one file at a commit; exit 3 when there is none, 78 when it is
/// larger than `max_bytes` (default [`DEFAULT_FILE_MAX_BYTES`]).
pub async fn file(
    cfg: &Config,
    repo_arg: &str,
    sha_arg: &str,
    path: &str,
    max_bytes: Option<&str>,
) -> Result<Vec<u8>> {
    let (repo, sha, path) = (repo(repo_arg)?, sha(sha_arg)?, repo_path(path)?);
    let max = match max_bytes {
        None => DEFAULT_FILE_MAX_BYTES,
        Some(n) => n.parse().map_err(|_| {
            AgentError::Usage(format!("--max-bytes={n:?} is not a number of bytes"))
        })?,
    };
    let gh = GitHub::from_config(cfg)?;
    gh.file_at(&repo, &sha, path, max)
        .await?
        .ok_or_else(|| AgentError::NoSuchFile(format!("{repo} has no {path} at {}", sha.short())))
}

/// `pull-head`: pull request `number`'s head as GitHub has it now, one JSON line
/// (`{"sha":…,"repo":"O/R"|null,"ref":…,"state":"open"|"closed","user":…,"title":…}`); exit 3
/// when there is no such pull request.
pub async fn pull_head(cfg: &Config, repo_arg: &str, number: &str) -> Result<String> {
    let repo = repo(repo_arg)?;
    let n: u64 = number.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
        AgentError::Usage(format!("--number={number:?} is not a pull request number"))
    })?;
    let gh = GitHub::from_config(cfg)?;
    let head = gh
        .pull_head(&repo, n)
        .await?
        .ok_or_else(|| AgentError::NoSuchFile(format!("{repo} has no pull request #{n}")))?;
    serde_json::to_string(&head).map_err(|e| AgentError::BadAnswer {
        what: format!("pull request #{n}"),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_are_github_s_and_bots_may_ask() {
        for ok in ["octocat", "a", "dependabot[bot]", "x-y-1", &"a".repeat(39)] {
            assert!(login(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a--b",
            "a b",
            "a/b",
            "../x",
            "[bot]",
            &"a".repeat(40),
        ] {
            assert!(login(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_paths_stay_inside_the_repository() {
        for ok in [".github/workstation-ci.yml", "a", "a/b.c", ".sdci/rc"] {
            assert!(repo_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/etc/passwd", "a/", "a//b", "../x", "a/./b", "a\nb"] {
            assert!(repo_path(bad).is_err(), "{bad:?}");
        }
    }
}
