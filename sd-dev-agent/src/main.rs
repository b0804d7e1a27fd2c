//! Command-line entry point of `sdci-agent`. Thin: parses arguments and calls the library.

use clap::{Parser, Subcommand};
use sdci_agent::check_run::CheckRunArgs;
use sdci_agent::config::Config;
use sdci_agent::{gateway, run, AgentError};
use sdci_protocol::{AgentJob, GatewayExit, Outcome};
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sdci-agent",
    version,
    about = "sdci agent: GitHub gateway, checkout, tarball, relay",
    after_help = "Exit codes: 0 ok; run: 0/1/2 = success/failure/error; 2 GitHub unreachable; \
                  3 ci-config file or key missing, file missing, or no such pull request; 64 usage; \
                  78 configuration, request refused, or file too large.\n\
                  Data may be given as --flag=value (the host always does) or --flag value."
)]
struct Cli {
    /// Configuration file [default: $SDCI_AGENT_CONFIG, else /etc/sdci/agent.toml]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// One value per process, parsed once: the size of `CheckRun` costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Post a commit status.
    Status {
        #[arg(long)]
        repo: String,
        #[arg(long)]
        sha: String,
        /// pending, success, failure or error
        #[arg(long)]
        state: String,
        /// Cut to 140 characters.
        #[arg(long)]
        description: String,
        #[arg(long)]
        target_url: Option<String>,
        /// Status context [default: the configured context, sd-ci-runner]
        #[arg(long)]
        context: Option<String>,
    },
    /// Print a short-lived installation token (GitHub App mode) as JSON.
    Token {
        #[arg(long)]
        repo: String,
        /// The token's permissions, name:level[,name:level…] [default: contents:read]
        #[arg(long)]
        permissions: Option<String>,
    },
    /// Revoke an installation token (DELETE /installation/token).
    Revoke {
        /// File holding the token (or a `token` output line); - reads stdin. Never argv.
        #[arg(long)]
        token_file: String,
    },
    /// Print a branch's head commit.
    Head {
        #[arg(long)]
        repo: String,
        #[arg(long)]
        branch: String,
    },
    /// Print the Qubes version from .github/workstation-ci.yml at a commit.
    CiConfig {
        #[arg(long)]
        repo: String,
        #[arg(long)]
        sha: String,
    },
    /// Create (--sha, --name) or update (--id) a check run (GitHub App mode); prints {"id":N}.
    CheckRun(CheckRunArgs),
    /// React to an issue or pull-request comment (GitHub App or token); prints nothing.
    React {
        #[arg(long)]
        repo: String,
        #[arg(long)]
        comment_id: String,
        /// +1, -1, laugh, confused, heart, hooray, rocket or eyes
        #[arg(long, allow_hyphen_values = true)]
        content: String,
    },
    /// Print a user's permission on a repository: admin, maintain, write, triage, read or none.
    Permission {
        #[arg(long)]
        repo: String,
        #[arg(long)]
        user: String,
    },
    /// Print the raw bytes of one file at a commit (exit 3: no such file; 78: larger than
    /// --max-bytes).
    File {
        #[arg(long)]
        repo: String,
        #[arg(long)]
        sha: String,
        #[arg(long)]
        path: String,
        /// [default: 65536]
        #[arg(long)]
        max_bytes: Option<String>,
    },
    /// Print a pull request's head as GitHub has it now, one JSON line: sha, head repository,
    /// ref, state (open or closed), author, title (exit 3: no such pull request).
    PullHead {
        #[arg(long)]
        repo: String,
        #[arg(long)]
        number: String,
    },
    /// Run a job in sd-dev (job JSON from FILE, or - for stdin); exit code = outcome.
    Run {
        #[arg(long)]
        job: String,
    },
}

fn read_job(arg: &str) -> anyhow::Result<AgentJob> {
    let mut bytes = Vec::new();
    if arg == "-" {
        std::io::stdin().read_to_end(&mut bytes)?;
    } else {
        bytes = std::fs::read(arg)
            .map_err(|e| anyhow::anyhow!("cannot read the job file {arg}: {e}"))?;
    }
    Ok(AgentJob::from_json(&bytes)?)
}

/// What a gateway command prints on stdout.
enum Out {
    Nothing,
    /// One line (a newline is added).
    Line(String),
    /// Raw bytes, as they are (`file`).
    Bytes(Vec<u8>),
}

async fn dispatch(cli: Cli) -> Result<i32, (i32, String)> {
    let fail = |e: AgentError| (e.exit_code(), e.to_string());
    if let Command::Run { job } = &cli.command {
        // Every failure of `run` is the job's infrastructure error (exit 2).
        let infra = Outcome::Error.exit_code();
        let job = read_job(job).map_err(|e| (infra, format!("{e:#}")))?;
        let cfg = Config::load(cli.config.as_deref()).map_err(|e| (infra, e.to_string()))?;
        let outcome = run::run_job(job, &cfg)
            .await
            .map_err(|e| (infra, e.to_string()))?;
        return Ok(outcome.exit_code());
    }
    let cfg = Config::load(cli.config.as_deref()).map_err(fail)?;
    let out = match cli.command {
        Command::Status {
            repo,
            sha,
            state,
            description,
            target_url,
            context,
        } => gateway::status(
            &cfg,
            &repo,
            &sha,
            &state,
            &description,
            target_url.as_deref(),
            context.as_deref(),
        )
        .await
        .map(|()| Out::Nothing),
        Command::Token { repo, permissions } => gateway::token(&cfg, &repo, permissions.as_deref())
            .await
            .map(Out::Line),
        Command::Revoke { token_file } => gateway::revoke(&cfg, &token_file)
            .await
            .map(|()| Out::Nothing),
        Command::Head { repo, branch } => gateway::head(&cfg, &repo, &branch).await.map(Out::Line),
        Command::CiConfig { repo, sha } => {
            gateway::ci_config(&cfg, &repo, &sha).await.map(Out::Line)
        }
        Command::CheckRun(args) => gateway::check_run(&cfg, &args).await.map(Out::Line),
        Command::React {
            repo,
            comment_id,
            content,
        } => gateway::react(&cfg, &repo, &comment_id, &content)
            .await
            .map(|()| Out::Nothing),
        Command::Permission { repo, user } => {
            gateway::permission(&cfg, &repo, &user).await.map(Out::Line)
        }
        Command::File {
            repo,
            sha,
            path,
            max_bytes,
        } => gateway::file(&cfg, &repo, &sha, &path, max_bytes.as_deref())
            .await
            .map(Out::Bytes),
        Command::PullHead { repo, number } => gateway::pull_head(&cfg, &repo, &number)
            .await
            .map(Out::Line),
        Command::Run { .. } => unreachable!("handled above"),
    }
    .map_err(fail)?;
    let written = match out {
        Out::Nothing => Ok(()),
        Out::Line(line) => writeln!(std::io::stdout(), "{line}"),
        Out::Bytes(bytes) => std::io::stdout().write_all(&bytes),
    };
    written
        .and_then(|()| std::io::stdout().flush())
        .map_err(|e| {
            (
                GatewayExit::Unreachable.code(),
                format!("writing stdout: {e}"),
            )
        })?;
    Ok(GatewayExit::Ok.code())
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                GatewayExit::Usage.code()
            } else {
                GatewayExit::Ok.code()
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sdci-agent: cannot start the async runtime: {e}");
            std::process::exit(GatewayExit::Unreachable.code());
        }
    };
    let code = match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err((code, msg)) => {
            eprintln!("sdci-agent: {msg}");
            code
        }
    };
    drop(rt);
    std::process::exit(code);
}
