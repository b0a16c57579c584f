//! `anycast`: the controller binary.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anycast_user::{api::status::VERSION, config::DEFAULT_CONFIG};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

mod cli;

#[derive(Parser)]
#[command(name = "anycast", version = VERSION, about = "Load-aware anycast steering in XDP")]
struct Cli {
    /// The config file (the daemon's; other commands read the admin socket, pin and state
    /// directories from it).
    #[arg(long, global = true, value_name = "FILE", env = "ANYCAST_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The daemon's admin socket (default: [admin] socket of --config).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Output of the read commands: a table / text, or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the data path and run the controller.
    ///
    /// Without --iface: the daemon, from --config, pinned under the pin directory;
    /// SIGTERM/SIGINT stop the controller and leave forwarding running, SIGHUP reloads the
    /// file. With --iface: a foreground demo that pins nothing and detaches on exit.
    Run(RunArgs),
    /// Validate a config file; print every error with its line and column.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Dry run: what a reload of FILE would change (sites, share of each VIP's new flows
    /// that move, interfaces, map writes), without changing anything.
    Plan {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Have the daemon re-read its config file; prints what it applied, or every problem.
    Reload,
    /// Show sites, weights, rates and VIPs of the running controller.
    Status {
        /// Same as --output json.
        #[arg(long)]
        json: bool,
    },
    /// Live per-site view: state, weight, local/forwarded/received packets per second,
    /// totals and top exception rates, refreshed every --interval seconds.
    Top {
        /// Seconds between two refreshes.
        #[arg(long, default_value_t = 2.0, value_parser = parse_interval)]
        interval: f64,
        /// Stop after N refreshes (default: until interrupted).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Stop sending new flows to SITE (established flows stay); survives restarts.
    Drain { site: String },
    /// Undo `drain SITE`.
    Undrain { site: String },
    /// Withdraw the VIPs from BGP, detach the pinned data path from every interface and
    /// remove its pins. Refuses while a daemon runs: stop it first.
    Detach {
        /// Pin directory (default: from --config).
        #[arg(long, value_name = "DIR")]
        pin_dir: Option<PathBuf>,
        /// Detach without withdrawing the VIPs from BGP first.
        #[arg(long)]
        no_bgp: bool,
        /// Withdraw at once, without the `[bgp] graceful_shutdown_ms` of GRACEFUL_SHUTDOWN
        /// (which this command otherwise waits out, the data path still forwarding).
        #[arg(long, conflicts_with = "no_bgp")]
        no_graceful: bool,
    },
    /// Check every prerequisite of this host (kernel, BTF, XDP, forwarding, neighbours,
    /// BIRD) and say how to fix what is missing.
    Doctor,
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Foreground demo: attach to IFACE without pinning, print counters, detach on Ctrl-C.
    #[arg(long, value_name = "IFACE")]
    iface: Option<String>,
    /// Seconds between two counter prints (`--iface` mode).
    #[arg(long, default_value_t = 2.0, value_parser = parse_interval, requires = "iface")]
    interval: f64,
    /// Start even when a remote site needs forwarding and an interface does not forward
    /// (every packet for such a site would then be handled locally): warn instead.
    #[arg(long, conflicts_with = "iface")]
    allow_no_forwarding: bool,
    /// Run this XDP object file instead of the embedded one (tests of program upgrades).
    #[arg(long, value_name = "FILE", conflicts_with = "iface", hide = true)]
    object: Option<PathBuf>,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err("expected seconds between 0.1 and 3600".to_owned()),
    }
}

fn main() -> ExitCode {
    cli::logging::init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("anycast: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("anycast: {e:#}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let target = cli::admin::Target { config: cli.config, socket: cli.socket, output: cli.output };
    match cli.command {
        Command::Run(RunArgs { iface: Some(iface), interval, .. }) => {
            cli::demo::run(&iface, Duration::from_secs_f64(interval)).await?
        }
        Command::Run(RunArgs { object, allow_no_forwarding, .. }) => {
            cli::daemon::run(&target.config, object.as_deref(), allow_no_forwarding).await?
        }
        Command::CheckConfig { file } => return Ok(cli::check_config(&file, cli.output)),
        Command::Plan { file } => cli::admin::plan(&target, &file).await?,
        Command::Reload => cli::admin::reload(&target).await?,
        Command::Status { json } => {
            let output = if json { Output::Json } else { cli.output };
            cli::admin::status(&cli::admin::Target { output, ..target }).await?
        }
        Command::Top { interval, count } => {
            cli::top::run(&target, Duration::from_secs_f64(interval), count).await?
        }
        Command::Drain { site } => cli::admin::drain(&target, &site, true).await?,
        Command::Undrain { site } => cli::admin::drain(&target, &site, false).await?,
        Command::Detach { pin_dir, no_bgp, no_graceful } => {
            cli::admin::detach(&target, pin_dir.as_deref(), no_bgp, no_graceful).await?
        }
        Command::Doctor => return cli::doctor::run(&target).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "anycast", &mut std::io::stdout());
        }
    }
    Ok(ExitCode::SUCCESS)
}
