//! Command-line entry point of `sdci-host`. Thin: parses arguments and calls the library.
//!
//! Exit codes (README, "The sdci-host command line"): 0 done; 1 a check or rotation failed
//! ([`Failure`]); 2 an error (anything else: a missing database, an unknown job, vSphere
//! unreachable); 64 a usage error (clap's own 2 is mapped to 64).

use anyhow::Context;
use clap::{Parser, Subcommand};
use sdci_host::config::Config;
use sdci_host::server;
use sdci_host::surface::{check_config, cli};
use std::sync::Arc;

/// The exit code of a usage error (BSD `EX_USAGE`).
const EXIT_USAGE: u8 = 64;

/// A command that ran and found a failure (exit 1), as opposed to an error (exit 2).
#[derive(Debug)]
struct Failure(String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

/// How log lines are written to stderr.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Plain lines; colours only when stderr is a terminal (never into the journal).
    Text,
    /// One JSON object per line.
    Json,
}

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
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
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
        /// Commit to test (full id).
        #[arg(long)]
        commit: String,
        /// Repository (owner/name); default: default_repo from the config.
        #[arg(long)]
        repo: Option<String>,
        /// Revert to this snapshot instead of the pool's golden one.
        #[arg(long)]
        snapshot: Option<String>,
        /// Apply dom0 and template updates before the steps.
        #[arg(long)]
        update: bool,
    },
    /// List, show or cancel jobs.
    Jobs {
        #[command(subcommand)]
        action: Option<JobsAction>,
    },
    /// Show the VM pools and their states.
    Vms {
        #[command(subcommand)]
        action: Option<VmsAction>,
    },
    /// Queue a nightly job for a branch (its head, with updates first).
    Nightly {
        /// Branch whose head is tested (resolved with `sdci-agent head`).
        #[arg(long)]
        branch: String,
    },
    /// Copy the database to FILE, consistently, while serve runs (SQLite's online backup).
    Backup {
        /// Where the copy goes; must not exist.
        file: std::path::PathBuf,
    },
    /// Check the configuration as every subcommand would and print it, defaults filled in.
    CheckConfig {
        /// Also connect the hypervisors the pools use (vSphere, libvirt), list each pool's VMs
        /// and golden snapshots, and run `sdci-agent --version` (touches no VM and no database).
        #[arg(long)]
        connect: bool,
    },
    /// Rotate a pool's golden snapshot: update, snapshot, smoke-test, then switch to it. With
    /// `--scenario S`: build the matrix scenario S of `[pools.V] scenarios` instead (its base,
    /// its provisioning command), smoke-test it and switch the scenario to it.
    Save {
        /// Qubes version pool, e.g. 4.2.
        #[arg(long)]
        version: String,
        /// Apply dom0 and template updates before taking the snapshot.
        #[arg(long, conflicts_with = "scenario")]
        update: bool,
        /// Start from this snapshot instead of the pool's current golden one.
        #[arg(long, conflicts_with = "scenario")]
        snapshot: Option<String>,
        /// Build this scenario's snapshot (a table in `[pools.V] scenarios`).
        #[arg(long)]
        scenario: Option<String>,
    },
}

#[derive(Subcommand)]
enum JobsAction {
    /// Recent jobs, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print what `GET /api/v1/jobs` answers (JSON).
        #[arg(long)]
        json: bool,
    },
    /// One job with its history and statuses.
    Show {
        id: String,
        /// Print what `GET /api/v1/jobs/{id}` answers (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running job (an ended one is an error).
    Cancel { id: String },
    /// Run a job's commit again: a new job for the same repository, commit, branch and Qubes
    /// version; prints its id. With `--from test`: only the stages from that one on, from the
    /// job's provisioned snapshot (on the VM holding it; refused when it is gone).
    Rerun {
        id: String,
        #[arg(long)]
        from: Option<String>,
    },
    /// Keep the job's VM powered on when it ends (or extend the hold of an ended one), out of
    /// dispatch, for debugging; default 4h.
    Hold {
        id: String,
        #[arg(long = "for")]
        for_: Option<String>,
    },
    /// End a job's hold now: its VM is powered off.
    Release { id: String },
}

#[derive(Subcommand)]
enum VmsAction {
    /// Lift a VM's quarantine.
    Unquarantine { name: String },
}

fn main() -> std::process::ExitCode {
    use std::process::ExitCode;
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<Failure>().is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => fmt.json().with_ansi(false).init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(&cli.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve => serve(cfg).await,
            Command::Run {
                version,
                commit,
                repo,
                snapshot,
                update,
            } => {
                let id = cli::run(
                    &cfg,
                    repo.as_deref(),
                    &version,
                    &commit,
                    snapshot.as_deref(),
                    update,
                )?;
                cli::wake(&cfg).await;
                println!("{id}");
                Ok(())
            }
            Command::Jobs { action } => {
                match action.unwrap_or(JobsAction::List {
                    limit: 50,
                    json: false,
                }) {
                    JobsAction::List { limit, json: true } => {
                        println!("{}", cli::list_json(&cfg, limit)?)
                    }
                    JobsAction::List { limit, .. } => print!("{}", cli::list(&cfg, limit)?),
                    JobsAction::Show { id, json: true } => {
                        println!("{}", cli::show_json(&cfg, &id)?)
                    }
                    JobsAction::Show { id, .. } => print!("{}", cli::show(&cfg, &id)?),
                    JobsAction::Hold { id, for_ } => {
                        println!("{}", cli::hold(&cfg, &id, for_.as_deref())?);
                        cli::wake(&cfg).await;
                    }
                    JobsAction::Release { id } => {
                        println!("{}", cli::release(&cfg, &id)?);
                        cli::wake(&cfg).await;
                    }
                    JobsAction::Rerun { id, from } => {
                        let new = match from {
                            Some(stage) => cli::rerun_from(&cfg, &id, &stage)?,
                            None => cli::rerun(&cfg, &id)?,
                        };
                        cli::wake(&cfg).await;
                        println!("{new}");
                    }
                    JobsAction::Cancel { id } => {
                        let now = cli::cancel(&cfg, &id)?;
                        let told = cli::wake(&cfg).await;
                        match (now, told) {
                            (true, _) => println!("{id}: canceled"),
                            (false, true) => println!("{id}: stop requested"),
                            (false, false) => println!(
                                "{id}: stop requested; no running service answered, it takes \
                                 effect when sdci-host serve runs"
                            ),
                        }
                    }
                }
                Ok(())
            }
            Command::Vms { action } => {
                match action {
                    None => {
                        print!("{}", cli::vms(&cfg)?);
                        print!("{}", vsphere_view(&cfg).await?);
                    }
                    Some(VmsAction::Unquarantine { name }) => {
                        cli::unquarantine(&cfg, &name)?;
                        cli::wake(&cfg).await;
                        println!("{name}: back in its pool");
                    }
                }
                Ok(())
            }
            Command::CheckConfig { connect } => {
                print!("{}", check_config::report(&cfg, &cli.config)?);
                if connect {
                    let (text, ok) = check_config::connect(&cfg).await;
                    print!("{text}");
                    if !ok {
                        let why = "the checks above failed; fix what they name";
                        return Err(Failure(why.into()).into());
                    }
                }
                Ok(())
            }
            Command::Backup { file } => {
                let store = sdci_host::store::Store::open_existing(&cfg.db_path())?;
                let r = store.backup_to(&file)?;
                println!(
                    "{}: {} jobs, {} bytes ({} pages)",
                    file.display(),
                    r.jobs,
                    r.bytes,
                    r.pages
                );
                Ok(())
            }
            Command::Nightly { branch } => {
                let store = sdci_host::store::Store::open_existing(&cfg.db_path())?;
                let id = sdci_host::orchestration::nightly::queue(&cfg, &store, &branch).await?;
                cli::wake(&cfg).await;
                println!("{id}");
                Ok(())
            }
            Command::Save {
                version,
                update,
                snapshot,
                scenario,
            } => {
                use sdci_host::orchestration::rotation::{
                    self, CliSave, SaveRequest, ScenarioRequest,
                };
                let what = match scenario {
                    Some(scenario) => CliSave::Scenario(ScenarioRequest { version, scenario }),
                    None => CliSave::Golden(SaveRequest {
                        version,
                        update,
                        base: snapshot,
                    }),
                };
                let report = rotation::save_from_cli(&cfg, &what).await?;
                cli::wake(&cfg).await;
                print!("{}", report.to_text());
                if !report.moved {
                    let why = "the rotation failed and the pointer is unchanged; see the log \
                               above";
                    return Err(Failure(why.into()).into());
                }
                Ok(())
            }
        }
    });
    // Tasks still running (attempts left for the next process, connections) are dropped, and
    // with them the gateway's children (kill_on_drop; PR_SET_PDEATHSIG covers a SIGKILL).
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// What the hypervisors say about each pool's VMs, for `sdci-host vms`; an error (exit 2) when
/// they cannot be asked, so a failed login never looks like an empty pool.
async fn vsphere_view(cfg: &Config) -> anyhow::Result<String> {
    use sdci_host::config::Backend;
    use sdci_vsphere::Hypervisor;
    if !cfg.uses(Backend::Libvirt) && cfg.vsphere.url.is_empty() {
        return Ok("vSphere: not configured ([vsphere] url)\n".into());
    }
    let hv = match sdci_host::gateway::backend::Backends::connect(cfg).await {
        Ok(c) => c,
        Err(e) => anyhow::bail!("hypervisors: cannot connect: {e}"),
    };
    let mut out = String::new();
    for backend in [Backend::Vsphere, Backend::Libvirt] {
        if !cfg.uses(backend) {
            continue;
        }
        out.push_str(match backend {
            Backend::Vsphere => "vSphere:\n",
            Backend::Libvirt => "libvirt:\n",
        });
        for (version, pool) in cfg.pools.iter().filter(|(_, p)| p.backend == backend) {
            match hv.list_vms(&pool.prefix).await {
                Ok(vms) => {
                    for vm in vms {
                        out.push_str(&format!(
                            "  {:<24} {:<6} power {:?} tools {}\n",
                            vm.name,
                            version,
                            vm.power,
                            if vm.agent_running { "running" } else { "off" }
                        ));
                    }
                }
                Err(e) => {
                    print!("{out}");
                    anyhow::bail!("pool {version}: listing its VMs failed: {e}");
                }
            }
        }
    }
    Ok(out)
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    // Before vSphere or any VM: the repositories this host tests (issue 15).
    cfg.webhook.require_repos().map_err(anyhow::Error::msg)?;
    // One serve per data directory, for the life of this process.
    let _lock = server::DataDirLock::acquire(&cfg.data_dir)?;
    let auth = server::guest_auth(&cfg)?;
    let listen = cfg.listen;
    let hub = server::hub_from_config(cfg)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    // The handlers are installed before READY=1: a SIGTERM that follows READY at once must start
    // the drain, not meet the default disposition and kill the process.
    let shutdown = shutdown_signal()?;
    // systemd Type=notify: the port is bound (packaging/).
    sdci_host::sd_notify::ready();
    // The hypervisors are connected in the background, with backoff: serve starts (and stores
    // webhooks) while vSphere is unreachable.
    let cfg = hub.cfg.clone();
    let connect = move || {
        let cfg = cfg.clone();
        async move {
            sdci_host::gateway::backend::Backends::connect(&cfg)
                .await
                .map(Arc::new)
        }
    };
    server::run_with(hub, connect, auth, listener, server::Parts::ALL, shutdown).await?;
    Ok(())
}

/// Installs the SIGTERM and SIGINT (Ctrl-C) handlers now and returns a future that resolves on
/// the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        sdci_host::sd_notify::stopping(); // systemd shows "deactivating" while the drain runs
    })
}
