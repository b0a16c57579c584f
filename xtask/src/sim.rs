//! `cargo xtask sim [ARGS]`: builds the steering simulator (`anycast-sim`, release: 300
//! sites × 8 hosts run in seconds only optimised) and runs it. It needs no kernel and no
//! root; building it builds the controller library, hence the eBPF toolchain.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::toolchain;

pub struct Options {
    /// Where the SVG plots go (default `target/sim`).
    pub svg: Option<PathBuf>,
    /// Arguments for `anycast-sim` (see `cargo xtask sim -- --help`).
    pub args: Vec<String>,
}

pub fn run(options: &Options) -> Result<()> {
    crate::cargo_build(true, &["--package", "anycast-sim", "--bin", "anycast-sim"])?;
    let sim = toolchain::profile_dir(true).join("anycast-sim");
    if !sim.exists() {
        bail!("the build succeeded but {} is not there", sim.display());
    }
    let svg = options.svg.clone().unwrap_or_else(|| toolchain::target_dir().join("sim"));
    let mut cmd = std::process::Command::new(&sim);
    cmd.arg("--svg").arg(&svg).args(&options.args);
    println!("sim: {}", toolchain::describe(&cmd));
    let status = cmd.status().with_context(|| format!("starting {}", sim.display()))?;
    if !status.success() {
        bail!("the simulator failed ({status}); its error is above");
    }
    println!("plots (load vs target per site): {}", svg.display());
    Ok(())
}
