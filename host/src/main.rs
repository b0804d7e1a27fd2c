//! Command-line entry point of `sdci-host`. Thin: parses arguments and calls the library.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sdci-host",
    version,
    about = "sdci orchestrator: webhooks, queue, VM pools, logs"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short, default_value = "/etc/sdci/host.toml", global = true)]
    config: std::path::PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: webhooks, scheduler, reconciler, job pages.
    Serve,
    /// Queue a manual job through the same queue.
    Run {
        /// Qubes version pool, e.g. 4.2.
        #[arg(long)]
        version: String,
        /// Commit to test.
        #[arg(long)]
        commit: String,
        /// Revert to this snapshot instead of the pool's golden one.
        #[arg(long)]
        snapshot: Option<String>,
        /// Apply dom0 and template updates before the steps.
        #[arg(long)]
        update: bool,
    },
    /// List, show or cancel jobs.
    Jobs,
    /// Show the VM pools and their states.
    Vms,
    /// Queue a nightly job for a branch.
    Nightly {
        #[arg(long)]
        branch: String,
    },
    /// Rotate a pool's golden snapshot.
    Save {
        #[arg(long)]
        version: String,
        #[arg(long)]
        update: bool,
        #[arg(long)]
        snapshot: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = (&cli.config, &cli.command);
    anyhow::bail!("sdci-host: this subcommand is not implemented yet (see the open issues)")
}
