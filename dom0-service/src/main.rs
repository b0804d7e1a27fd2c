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
    /// Run the steps of JOBFILE on the tree already in dom0 (a stage re-run from a provisioned
    /// snapshot; no agent, no archive).
    Rerun { jobfile: std::path::PathBuf },
}

fn main() -> anyhow::Result<()> {
    // Diagnostics go to stderr (the journal, for a qrexec service); stdout carries events.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SDCI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run { job_id } => sdci_dom0::service::run(job_id),
        Command::Launch { jobfile } => sdci_dom0::launch::launch(&jobfile),
        Command::Rerun { jobfile } => sdci_dom0::rerun::rerun(&jobfile),
    };
    std::process::exit(code)
}
