//! Command-line entry point of `sdci-agent`. Thin: parses arguments and calls the library.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sdci-agent",
    version,
    about = "sdci agent: GitHub gateway, checkout, tarball, relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Post a commit status.
    Status {
        #[arg(long)]
        repo: String,
        #[arg(long)]
        sha: String,
        #[arg(long)]
        state: String,
        #[arg(long)]
        description: String,
        #[arg(long)]
        target_url: Option<String>,
    },
    /// Print a short-lived installation token (GitHub App mode) as JSON.
    Token {
        #[arg(long)]
        repo: String,
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
    /// Run a job in sd-dev (job JSON from FILE, or - for stdin).
    Run {
        #[arg(long)]
        job: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = &cli.command;
    anyhow::bail!("sdci-agent: not implemented yet (see the open issues)")
}
