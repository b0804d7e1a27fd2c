//! Command-line entry point of `sdci-dom0`. Thin: parses arguments and calls the library.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sdci-dom0",
    version,
    about = "sdci in dom0: the qrexec service sdci.Run and the job launcher"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The qrexec service: receive the tree on stdin, run the job's steps, stream events.
    Run {
        /// Job id (qrexec passes it as argv[1]; else QREXEC_SERVICE_ARGUMENT).
        job_id: Option<String>,
    },
    /// Start the dev VM and run `sdci-agent run` there for the job in JOBFILE.
    Launch { jobfile: std::path::PathBuf },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = &cli.command;
    anyhow::bail!("sdci-dom0: not implemented yet (see the open issues)")
}
