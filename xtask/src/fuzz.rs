//! `cargo xtask test --fuzz [SECONDS]`: every parser that takes outside input, fuzzed for a
//! bounded time. The config file and a peer's load report are libFuzzer targets (`fuzz/`,
//! built by `cargo fuzz` with the nightly compiler and AddressSanitizer); the admin API is a
//! property test against the running daemon (tests/tests/admin.rs), which keeps generating
//! requests for as long as `ANYCAST_FUZZ_SECONDS` says.
//!
//! Each target starts from its committed corpus (`fuzz/corpus/<target>`), read only: what
//! libFuzzer finds goes to a directory of this run, removed at the end, so that the committed
//! seeds change only by hand. A crash is kept in `fuzz/artifacts/<target>/` and named.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{test, toolchain};

/// The libFuzzer targets of `fuzz/Cargo.toml`.
const TARGETS: [&str; 2] = ["config", "peer_report"];
/// The environment variable by which the admin API's property test learns its budget.
pub const SECONDS_ENV: &str = "ANYCAST_FUZZ_SECONDS";
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// `rustup run nightly cargo ARGS` in `fuzz/`: cargo fuzz needs nightly (-Z sanitizer); the
/// variables cargo set for xtask would point it at the stable toolchain.
fn nightly_cargo(fuzz_dir: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"])
        .current_dir(fuzz_dir)
        .env("PATH", toolchain::path())
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC");
    cmd
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    println!("fuzz: {}", toolchain::describe(cmd));
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status}); see its output above");
    }
    Ok(())
}

/// Installs cargo-fuzz when `cargo fuzz` does not answer (as setup does for bpf-linker).
fn ensure_cargo_fuzz(fuzz_dir: &Path) -> Result<()> {
    let answers = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    if !answers(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        bail!(
            "fuzzing needs a nightly compiler (cargo fuzz builds with -Z sanitizer=address): \
             `rustup toolchain install nightly` (rust-src is not needed)"
        );
    }
    if !answers(nightly_cargo(fuzz_dir).args(["fuzz", "--version"])) {
        run(
            toolchain::cargo().args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked"]),
            "cargo install cargo-fuzz",
        )?;
    }
    Ok(())
}

pub fn run_all(seconds: u64, options: &test::Options, anycast: &Path) -> Result<()> {
    let fuzz_dir = toolchain::workspace_root().join("fuzz");
    ensure_cargo_fuzz(&fuzz_dir)?;
    run(nightly_cargo(&fuzz_dir).args(["fuzz", "build"]), "cargo fuzz build")?;
    let mut failed = Vec::new();
    for target in TARGETS {
        let work = std::env::temp_dir().join(format!("anycast-fuzz-{}-{target}", std::process::id()));
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let seeds = fuzz_dir.join("corpus").join(target);
        let result = run(
            nightly_cargo(&fuzz_dir)
                .args(["fuzz", "run", target])
                .arg(&work)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={seconds}")),
            &format!("fuzz target {target}"),
        );
        let _ = std::fs::remove_dir_all(&work);
        if let Err(e) = result {
            eprintln!(
                "fuzz: {target}: {e:#}; the input is under {}",
                fuzz_dir.join("artifacts").join(target).display()
            );
            failed.push(target);
        }
    }
    println!("fuzz: the admin API, against the daemon, for {seconds} s");
    let admin = test::Options {
        release: options.release,
        filter: Some("admin_requests_fuzzed".to_owned()),
        args: options.args.clone(),
        env: vec![(SECONDS_ENV.to_owned(), seconds.to_string())],
    };
    if let Err(e) = test::run(&admin, anycast) {
        eprintln!("fuzz: admin API: {e:#}");
        failed.push("admin API");
    }
    if !failed.is_empty() {
        bail!("fuzzing found problems in: {}", failed.join(", "));
    }
    println!("fuzz: {} targets and the admin API, {seconds} s each: nothing found", TARGETS.len());
    Ok(())
}
