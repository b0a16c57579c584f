//! `cargo xtask bench [--out FILE.json] [--quick] [--against REV|OBJECT]`: builds the
//! benchmark (`anycast-bench`, in the tests crate) and the `anycast` controller in release
//! mode, then runs the benchmark, which prints a table and writes the JSON report of issue 7.
//! With `--against`, the per-packet cases of this build and of another one, in the same
//! rounds.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::toolchain;

pub struct Options {
    pub out: Option<PathBuf>,
    pub quick: bool,
    /// A git revision or an XDP object file.
    pub against: Option<String>,
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
    let mut cmd = Command::new(&bench);
    cmd.arg("--anycast").arg(dir.join("anycast"));
    if let Some(against) = &options.against {
        let object = match Path::new(against).is_file() {
            true => PathBuf::from(against),
            false => object_at(against)?,
        };
        cmd.arg("--against").arg(object);
    }
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

/// The XDP object of the data path at git revision `rev`, built once from its own sources
/// (`git archive`) by its own build script, and cached as
/// `target/against/<commit>/anycast.bpf.o`. Its host crates build in a target directory of
/// their own, shared by every revision (`target/against/target`: cargo gives a workspace's
/// crates the same artifact names whatever their path, so a build of another tree in this
/// one's would replace this build's artifacts), in the dev profile (its build script builds
/// the eBPF object in release whatever the host profile); its eBPF crate builds in its tree.
fn object_at(rev: &str) -> Result<PathBuf> {
    let root = toolchain::workspace_root();
    let out = Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")])
        .output()
        .context("running git rev-parse")?;
    if !out.status.success() {
        bail!("--against {rev}: neither an XDP object file nor a git revision of this repository");
    }
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dir = toolchain::target_dir().join("against").join(&commit);
    let object = dir.join("anycast.bpf.o");
    if object.is_file() {
        return Ok(object);
    }
    let src = dir.join("src");
    if !src.join("Cargo.toml").is_file() {
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
        let archive = Command::new("git")
            .current_dir(root)
            .args(["archive", "--format=tar", &commit])
            .stdout(Stdio::piped())
            .spawn()
            .context("running git archive")?;
        let status = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&src)
            .stdin(archive.stdout.context("git archive: no stdout")?)
            .status()
            .context("running tar")?;
        if !status.success() || !src.join("Cargo.toml").is_file() {
            bail!("extracting {commit} with git archive failed ({status})");
        }
    }
    println!("bench: building the data path of {rev} ({commit}) in {}", src.display());
    let mut cmd = toolchain::cargo();
    cmd.current_dir(&src)
        .args(["build", "--package", "anycast-user", "--lib", "--target-dir"])
        .arg(toolchain::target_dir().join("against/target"))
        // Its build script puts the eBPF build under CARGO_TARGET_DIR when set: keep it in
        // its own tree, apart from this build's.
        .env_remove("CARGO_TARGET_DIR");
    let status = cmd.status().context("starting cargo build")?;
    if !status.success() {
        bail!("building {rev}: `{}` failed ({status})", toolchain::describe(&cmd));
    }
    let built = src.join("target/bpf/bpfel-unknown-none/release/anycast");
    std::fs::copy(&built, &object).with_context(|| format!("copying {}", built.display()))?;
    Ok(object)
}
