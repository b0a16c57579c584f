//! Project tasks, run as `cargo xtask <task>` (alias in .cargo/config.toml).
//!
//! Every task first makes sure its prerequisites are present and installs what is missing
//! when it can (see prereq.rs), so a fresh Debian 12 machine needs no manual step.

mod bench;
mod demo;
mod figures;
mod fuzz;
mod prereq;
mod sim;
mod test;
mod toolchain;

use std::{os::unix::process::CommandExt, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use prereq::Goal;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, test and run anycast",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check the prerequisites and install what is missing (Debian packages, bpf-linker,
    /// bpffs); a second run only reports "ok".
    Setup,
    /// Build the workspace (the XDP objects are built by anycast-user's build script).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the tests of the host crates: unit, kernel (BPF_PROG_RUN) and netns tests.
    Test {
        #[arg(long)]
        release: bool,
        /// Instead of the tests: fuzz every parser that takes outside input (config file, peer
        /// load report, admin API) for SECONDS each (default 60). Needs a nightly toolchain;
        /// installs cargo-fuzz when missing.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "60")]
        fuzz: Option<u64>,
        /// Run only tests whose names contain this string.
        filter: Option<String>,
        /// Arguments for the test binaries, e.g. `-- --nocapture`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmarks: per-packet cost (BPF_PROG_RUN), forwarding throughput on veth (live
    /// frames) against the kernel's own path, and control-plane figures; prints a table.
    /// Runs as root (loads XDP programs, makes network namespaces).
    Bench {
        /// Also write the results as JSON to this file, and their figures as SVG beside it
        /// (FILE.svg).
        #[arg(long, value_name = "FILE.json")]
        out: Option<PathBuf>,
        /// Smoke run, under a minute (3 rounds of 2e5 repetitions, short throughput runs).
        #[arg(long)]
        quick: bool,
        /// Instead of the whole benchmark: the per-packet cases of this build beside those of
        /// another build of the data path, in the same rounds — a git revision (its XDP object
        /// is built once, cached under target/against/) or an XDP object file. Both must
        /// have the same map layout.
        #[arg(long, value_name = "REV|OBJECT", conflicts_with = "out")]
        against: Option<String>,
    },
    /// Draws the figures of a benchmark's JSON (`bench --out FILE.json`) as one SVG.
    Figures {
        json: PathBuf,
        /// Where to write them [default: FILE.svg beside FILE.json].
        #[arg(long, value_name = "FILE.svg")]
        out: Option<PathBuf>,
    },
    /// The steering simulator: the controller's own decision code over hundreds of sites of
    /// several hosts (BGP catchments, flows, report delay and loss, failures), no kernel.
    /// Prints each scenario's figures; writes an SVG plot per scenario (load vs target per
    /// site). `-- --help` lists the simulator's options (--sites, --hosts, --scenario,
    /// --out FILE.json, ...).
    Sim {
        /// Directory for the SVG plots (default: target/sim).
        #[arg(long, value_name = "DIR")]
        svg: Option<PathBuf>,
        /// Arguments for the simulator, e.g. `-- --sites 300 --hosts 8 --out sim.json`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Without ARGS: a demonstration lab in network namespaces with the `anycast` controller
    /// attached and traffic flowing, torn down on exit. With ARGS: `anycast ARGS`.
    Run {
        #[arg(long)]
        release: bool,
        /// Stop the demonstration after this many seconds (default: at Ctrl-C).
        #[arg(long = "for", value_name = "SECONDS", conflicts_with = "args")]
        duration: Option<u64>,
        /// Write the report of the demonstration (every site's rates, load and weights over
        /// time, the phases and the final checks) to this SVG file [default:
        /// target/lab-report.svg].
        #[arg(long, value_name = "FILE.svg", conflicts_with_all = ["args", "no_report"])]
        report: Option<PathBuf>,
        /// Only the terminal view: no report file.
        #[arg(long, conflicts_with = "args")]
        no_report: bool,
        /// Arguments for the `anycast` binary, e.g. `-- run --iface eth0`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(e) = try_main() {
        // One paragraph, no backtrace: the messages name what is wrong and the fix.
        eprintln!("\nerror: {e:#}");
        std::process::exit(1);
    }
}

fn try_main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => prereq::ensure(Goal::Setup)?,
        Task::Build { release } => {
            prereq::ensure(Goal::Build)?;
            cargo_build(release, &[])?;
        }
        Task::Test { release, fuzz, filter, args } => {
            prereq::ensure(Goal::Test)?;
            let anycast = anycast_binary(release)?;
            let options = test::Options { release, filter, args, env: Vec::new() };
            match fuzz {
                Some(seconds) => fuzz::run_all(seconds, &options, &anycast)?,
                None => test::run(&options, &anycast)?,
            }
        }
        Task::Bench { out, quick, against } => {
            prereq::ensure(Goal::Run)?;
            bench::run(&bench::Options { out: out.clone(), quick, against })?;
            if let Some(json) = out {
                let svg = figures::beside(&json);
                figures::bench(&json, &svg)?;
                println!("bench: figures: {}", svg.display());
            }
        }
        Task::Figures { json, out } => {
            let svg = out.unwrap_or_else(|| figures::beside(&json));
            figures::bench(&json, &svg)?;
            println!("figures: {}", svg.display());
        }
        Task::Sim { svg, args } => {
            prereq::ensure(Goal::Build)?;
            sim::run(&sim::Options { svg, args })?;
        }
        Task::Run { release, duration, report, no_report, args } => {
            prereq::ensure(Goal::Run)?;
            // The binary `cargo xtask test` built, when the lab's test runs this.
            let anycast = match std::env::var_os(testkit::daemon::BIN_ENV) {
                Some(path) => PathBuf::from(path),
                None => anycast_binary(release)?,
            };
            if args.is_empty() {
                let report = match no_report {
                    true => None,
                    false => Some(report.unwrap_or_else(|| toolchain::target_dir().join("lab-report.svg"))),
                };
                demo::run(&anycast, duration.map(Duration::from_secs), report.as_deref())?;
            } else {
                exec(anycast, &args)?;
            }
        }
    }
    Ok(())
}

/// Builds the `anycast` binary; its path.
fn anycast_binary(release: bool) -> Result<PathBuf> {
    cargo_build(release, &["--package", "anycast-user", "--bin", "anycast"])?;
    let anycast = toolchain::profile_dir(release).join("anycast");
    if !anycast.exists() {
        bail!("the build succeeded but {} is not there", anycast.display());
    }
    Ok(anycast)
}

fn cargo_build(release: bool, selection: &[&str]) -> Result<()> {
    let mut cmd = toolchain::cargo();
    cmd.arg("build").args(selection);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("starting cargo build")?;
    if !status.success() {
        bail!("`{}` failed ({status}); see the compiler output above", toolchain::describe(&cmd));
    }
    Ok(())
}

/// Replaces xtask with `anycast ARGS`, so that signals and the exit code are the binary's own.
fn exec(anycast: PathBuf, args: &[String]) -> Result<()> {
    let err = std::process::Command::new(&anycast).args(args).exec();
    Err(err).with_context(|| format!("executing {}", anycast.display()))
}
