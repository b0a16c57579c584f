//! `cargo xtask bench [--out FILE.json] [--quick]`: builds the benchmark (`anycast-bench`,
//! in the tests crate) and the `anycast` controller in release mode, then runs the
//! benchmark, which prints a table and writes the JSON report of issue 7.

use anyhow::{Context, Result, bail};

use crate::toolchain;

pub struct Options {
    pub out: Option<std::path::PathBuf>,
    pub quick: bool,
}

pub fn run(options: &Options) -> Result<()> {
    // Release: the figures are meant to be the product's, and the Maglev build time is the
    // optimised builder's. The controller binary is measured too (peak RSS).
    crate::cargo_build(
        true,
        &[
            "--package",
            "anycast-tests",
            "--bin",
            "anycast-bench",
            "--package",
            "anycast-user",
            "--bin",
            "anycast",
        ],
    )?;
    let dir = toolchain::profile_dir(true);
    let bench = dir.join("anycast-bench");
    if !bench.exists() {
        bail!("the build succeeded but {} is not there", bench.display());
    }
    let mut cmd = std::process::Command::new(&bench);
    cmd.arg("--anycast").arg(dir.join("anycast"));
    if let Some(out) = &options.out {
        cmd.arg("--out").arg(out);
    }
    if options.quick {
        cmd.arg("--quick");
    }
    println!("bench: {}", toolchain::describe(&cmd));
    let status = cmd.status().with_context(|| format!("starting {}", bench.display()))?;
    if !status.success() {
        bail!("the benchmark failed ({status}); its error is above");
    }
    Ok(())
}
