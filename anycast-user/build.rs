//! Builds the XDP objects (`anycast`; `noop`, `bench_reset`, `bench_sink` and `bench_ceiling` used by
//! benchmarks) from the `anycast-ebpf` crate and leaves them in OUT_DIR, where
//! `src/datapath/object.rs` embeds them; and sets `ANYCAST_GIT_REVISION`. This is the one code path that builds eBPF: `cargo build`, `cargo test`, `cargo clippy` and
//! every xtask command go through it.
//!
//! Two toolchains can build `bpfel-unknown-none` (see ../shared/TOOLCHAIN.md):
//! - Debian's rustc (`/usr/bin/rustc`) with its prebuilt `core` for the BPF target
//!   (package `libstd-rust-web-dev-bpf`); aya-ebpf needs `#![feature]`, which
//!   `RUSTC_BOOTSTRAP=aya_ebpf` allows for that crate alone;
//! - a rustup nightly with the `rust-src` component (`-Z build-std=core`).
//!
//! Both need `bpf-linker` on PATH. When neither is there the build stops with one paragraph
//! saying what is missing and how to get it (`cargo xtask setup` does all of it).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

const TARGET: &str = "bpfel-unknown-none";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
const OBJECTS: [&str; 5] = ["anycast", "noop", "bench_reset", "bench_sink", "bench_ceiling"];

enum Toolchain {
    Debian,
    Nightly,
}

fn main() {
    git_revision();
    if let Err(e) = build() {
        // cargo shows build-script stderr only on failure; one paragraph, no backtrace.
        eprintln!("\nanycast: cannot build the XDP program: {e:#}\n");
        std::process::exit(1);
    }
}

/// `ANYCAST_GIT_REVISION` for `--version` and `/status`: the commit this is built from
/// (`unknown` outside a git checkout), rebuilt when HEAD moves.
fn git_revision() {
    let root = workspace_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let revision = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ANYCAST_GIT_REVISION={revision}");
    // HEAD names a branch whose ref file moves with each commit (or packed-refs holds it).
    if let (Some(git_dir), Some(common)) = (
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) {
        let branch = git(&["symbolic-ref", "-q", "HEAD"]).map(|b| format!("{common}/{b}"));
        // A path that does not exist would rerun this script at every build.
        for path in [Some(format!("{git_dir}/HEAD")), branch, Some(format!("{common}/packed-refs"))]
            .into_iter()
            .flatten()
            .filter(|p| Path::new(p).exists())
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

fn command_works(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).output()
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    out.status.success() && Path::new(&sysroot).join("lib/rustlib/src/rust/library/core").exists()
}

fn pick_toolchain() -> Result<Toolchain> {
    if Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_BPF_CORE).exists() {
        return Ok(Toolchain::Debian);
    }
    if nightly_has_rust_src() {
        return Ok(Toolchain::Nightly);
    }
    bail!(
        "no Rust toolchain can build for {TARGET}: neither Debian's prebuilt BPF core \
         ({DEBIAN_BPF_CORE}, packages rustc-web and libstd-rust-web-dev-bpf) nor a rustup \
         nightly with rust-src is installed. Run `cargo xtask setup` as root, or \
         `apt-get install rustc-web libstd-rust-web-dev-bpf`, or \
         `rustup toolchain install nightly --component rust-src`."
    )
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crate has a parent").to_path_buf()
}

fn build() -> Result<()> {
    let root = workspace_root();
    let ebpf = root.join("anycast-ebpf");
    for watched in ["anycast-ebpf/src", "anycast-ebpf/Cargo.toml", "anycast-common/src", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=PATH");

    let toolchain = pick_toolchain()?;
    if !command_works(Command::new("bpf-linker").arg("--version")) {
        bail!(
            "bpf-linker is not on PATH. Run `cargo xtask setup` as root, or \
             `PATH=/usr/lib/llvm-22/bin:$PATH LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 cargo install \
             bpf-linker --version 0.13.0 --locked --no-default-features --features llvm-22` \
             (needs the Debian packages llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev)."
        );
    }

    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target")).join("bpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR is not set")?);

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Whatever the outer build was told (clippy's wrapper, host RUSTFLAGS, a --target) is
    // for host code and must not reach the BPF build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_BOOTSTRAP",
    ] {
        cmd.env_remove(var);
    }
    // Misaligned memory accesses allowed (LLVM ≥ 22, which bpf-linker 0.13 is built
    // against): a packet field is then read with one load instead of byte by byte, a
    // quarter of the program's instructions. The verifier accepts misaligned packet and map
    // value accesses on architectures with efficient unaligned access (x86-64, which
    // `bpf_target_arch` names, arm64), but no misaligned *stack* access: anycast-ebpf's
    // `stack` module keeps those aligned. (An older LLVM ignores the feature.)
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
        "-Clink-arg=--cpu-features=+allows-misaligned-mem-access",
    ];
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"));
    match toolchain {
        Toolchain::Debian => {
            cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "aya_ebpf");
        }
        Toolchain::Nightly => {
            cmd.arg("+nightly");
        }
    }
    cmd.args(["build", "--release", "--package", "anycast-ebpf", "--target", TARGET, "--bins"])
        .arg("--manifest-path")
        .arg(ebpf.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    if let Toolchain::Nightly = toolchain {
        cmd.args(["-Z", "build-std=core"]);
    }
    let status = cmd.status().context("running cargo for the BPF target")?;
    if !status.success() {
        bail!(
            "`cargo build --package anycast-ebpf --target {TARGET}` failed ({status}); see the compiler output above"
        );
    }
    for name in OBJECTS {
        let built = target_dir.join(TARGET).join("release").join(name);
        let dest = out_dir.join(format!("{name}.bpf.o"));
        std::fs::copy(&built, &dest)
            .with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
    }
    Ok(())
}
