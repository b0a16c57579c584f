//! `anycast`: the controller binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(name = "anycast", version, about = "Load-aware anycast steering in XDP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the data path and run the controller.
    ///
    /// With --config: pinned under the pin directory; SIGTERM/SIGINT stop the controller and
    /// leave forwarding running, SIGHUP reloads the file. With --iface: a foreground demo
    /// that pins nothing and detaches on exit.
    Run(RunArgs),
    /// Validate a config file; print every error with its line and column.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Show sites, weights, rates and VIPs of the running controller.
    Status {
        #[command(flatten)]
        target: TargetArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Live per-site view: state, weight, local/forwarded/received packets per second,
    /// totals and top exception rates, refreshed every --interval seconds.
    Top {
        #[command(flatten)]
        target: TargetArgs,
        /// Seconds between two refreshes.
        #[arg(long, default_value_t = 2.0, value_parser = parse_interval)]
        interval: f64,
        /// Stop after N refreshes (default: until interrupted).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Stop sending new flows to SITE (established flows stay); survives restarts.
    Drain {
        site: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Undo `drain SITE`.
    Undrain {
        site: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Detach the pinned data path from every interface and remove its pins.
    Detach {
        /// Pin directory (default: from --config, else /sys/fs/bpf/anycast).
        #[arg(long, value_name = "DIR")]
        pin_dir: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct RunTarget {
    /// Foreground demo: attach to IFACE without pinning, print counters, detach on Ctrl-C.
    #[arg(long, value_name = "IFACE")]
    iface: Option<String>,
    /// Run the controller from a config file (pinned, survives controller restarts).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    target: RunTarget,
    /// Seconds between two counter prints (`--iface` mode).
    #[arg(long, default_value_t = 2.0, value_parser = parse_interval)]
    interval: f64,
    /// Run this XDP object file instead of the embedded one (tests of program upgrades).
    #[arg(long, value_name = "FILE", requires = "config", hide = true)]
    object: Option<PathBuf>,
}

#[derive(Args)]
struct TargetArgs {
    /// Admin address of the daemon (default: [admin] listen of --config, else 127.0.0.1:9100).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Config file: gives the admin address, and lets the command work on the pinned maps
    /// when no daemon answers.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl From<TargetArgs> for cli::admin::Target {
    fn from(a: TargetArgs) -> Self {
        cli::admin::Target { admin: a.admin, config: a.config }
    }
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err("expected seconds between 0.1 and 3600".to_owned()),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("anycast: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("anycast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(RunArgs { target: RunTarget { iface: Some(iface), .. }, interval, .. }) => {
            cli::demo::run(&iface, Duration::from_secs_f64(interval)).await?
        }
        Command::Run(RunArgs { target: RunTarget { config: Some(config), .. }, object, .. }) => {
            cli::daemon::run(&config, object.as_deref()).await?
        }
        Command::Run(_) => unreachable!("clap requires one of --iface / --config"),
        Command::CheckConfig { file } => return Ok(cli::check_config(&file)),
        Command::Status { target, json } => cli::admin::status(&target.into(), json).await?,
        Command::Top { target, interval, count } => {
            cli::top::run(&target.into(), Duration::from_secs_f64(interval), count).await?
        }
        Command::Drain { site, target } => cli::admin::drain(&target.into(), &site, true).await?,
        Command::Undrain { site, target } => cli::admin::drain(&target.into(), &site, false).await?,
        Command::Detach { pin_dir, config } => cli::admin::detach(pin_dir.as_deref(), config.as_deref())?,
    }
    Ok(ExitCode::SUCCESS)
}
