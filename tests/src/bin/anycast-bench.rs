//! `anycast-bench [--out FILE.json] [--quick] [--against OBJECT]`: the benchmark behind `cargo xtask bench`.
//! Prints a table on stdout and writes the JSON document of issue 7. Needs root.

use std::path::PathBuf;

use anycast_tests::bench::{self, Scale};
use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(name = "anycast-bench", about = "Per-packet, throughput and control-plane figures of anycast")]
struct Cli {
    /// Write the JSON report here (default: stdout only gets the table).
    #[arg(long, value_name = "FILE.json")]
    out: Option<PathBuf>,
    /// Smoke run: 3 rounds × 2e5 repetitions, short throughput runs (under a minute).
    #[arg(long)]
    quick: bool,
    /// The `anycast` controller binary for the peak-RSS figure (default: next to this one).
    #[arg(long, value_name = "PATH")]
    anycast: Option<PathBuf>,
    /// Instead of the whole benchmark: the per-packet cases on this build and on this other
    /// build's XDP object (same map layout), interleaved in the same rounds, with their
    /// differences.
    #[arg(long, value_name = "OBJECT")]
    against: Option<PathBuf>,
}

fn main() {
    if let Err(e) = try_main() {
        eprintln!("anycast-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn try_main() -> Result<()> {
    let cli = Cli::parse();
    let anycast = match cli.anycast {
        Some(p) => p,
        None => std::env::current_exe().context("locating this binary")?.with_file_name("anycast"),
    };
    let (scale, mode) = if cli.quick { (Scale::QUICK, "quick") } else { (Scale::FULL, "full") };
    let started = std::time::Instant::now();
    if let Some(object) = &cli.against {
        let scale = if cli.quick { Scale::QUICK } else { Scale::AGAINST };
        print!("{}", bench::against(scale, object)?);
        println!("\n(took {:.1} s)", started.elapsed().as_secs_f64());
        return Ok(());
    }
    let report = bench::run(scale, mode, &anycast)?;
    print!("{}", report.table());
    println!("\n(took {:.1} s)", started.elapsed().as_secs_f64());
    if let Some(path) = cli.out {
        let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
