//! The previous release of anycast, built from this repository's history, for the upgrade
//! tests: the release that runs under traffic before this build migrates its maps (and that
//! must refuse to roll back onto them). `cargo xtask test` builds it once before the tests
//! and passes its path in [`BIN_ENV`]; without that, the first test that needs it builds it.
//!
//! The build is cached under `target/previous-release/<commit>/` (source from `git archive`,
//! its own target directory): a fresh clone builds it once (a few minutes: its own eBPF
//! object included), every later run reuses the binary. Several test processes building at
//! once take turns on a lock file.

use std::{
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use crate::daemon::{BUILD_TIMEOUT, output_within};

/// The release: its tag (for people) and its commit (what the build uses: a tag may not be
/// fetched into a clone, the commit is in main's history).
pub const TAG: &str = "v0.1.0";
pub const COMMIT: &str = "87ef5d17f0a8f8ac1a1b346c96272480f945dc70";
/// Its map layout (release 0.1.0 had no `LAYOUT` map: layout 1).
pub const LAYOUT: u32 = 1;
/// The environment variable by which `cargo xtask test` passes the built binary.
pub const BIN_ENV: &str = "ANYCAST_PREVIOUS_BIN";

/// The last unreleased build of layout 2 whose data path kept the closing state of pinned
/// TCP flows in an array of its own (`FLOW_SEEN`) rather than in their `FLOWS` values: a
/// start of this build on its pins must remove that pin and move nothing.
pub const FLOW_SEEN_COMMIT: &str = "532484ee10a5a9d75261899d2c9c5385fbaf644c";

/// The previous release's `anycast` binary: [`BIN_ENV`] if set, else built (or reused).
pub fn binary() -> Result<&'static Path, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let bin = BIN.get_or_init(|| match std::env::var_os(BIN_ENV) {
        Some(path) => Ok(PathBuf::from(path)),
        None => build(&workspace()),
    });
    bin.as_deref().map_err(Clone::clone)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ is in the workspace").to_owned()
}

/// The build of [`FLOW_SEEN_COMMIT`]'s `anycast` binary, built (or reused) on first need.
pub fn flow_seen_binary() -> Result<&'static Path, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_at(&workspace(), FLOW_SEEN_COMMIT)).as_deref().map_err(Clone::clone)
}

/// Builds (or finds built) the release under `<workspace>/target/previous-release/`.
pub fn build(workspace: &Path) -> Result<PathBuf, String> {
    build_at(workspace, COMMIT)
}

/// Builds (or finds built) the `anycast` binary of `commit` (in main's history) under
/// `<workspace>/target/previous-release/<commit>/`.
pub fn build_at(workspace: &Path, commit: &str) -> Result<PathBuf, String> {
    let dir = workspace.join("target/previous-release").join(commit);
    let bin = dir.join("target/debug/anycast");
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let lock =
        fs::File::create(dir.join(".lock")).map_err(|e| format!("lock file in {}: {e}", dir.display()))?;
    // SAFETY: flock on an open file descriptor; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!("locking {}: {}", dir.display(), std::io::Error::last_os_error()));
    }
    if bin.exists() {
        return Ok(bin);
    }
    let src = dir.join("src");
    if !src.join("Cargo.toml").exists() {
        let _ = fs::remove_dir_all(&src);
        fs::create_dir_all(&src).map_err(|e| format!("creating {}: {e}", src.display()))?;
        let archive = Command::new("git")
            .arg("-C")
            .arg(workspace)
            .args(["archive", "--format=tar", commit])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("git archive {commit}: {e}"))?;
        let out = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&src)
            .stdin(archive.stdout.ok_or("git archive: no stdout")?)
            .output()
            .map_err(|e| format!("tar: {e}"))?;
        if !out.status.success() || !src.join("Cargo.toml").exists() {
            return Err(format!(
                "extracting {commit} with git archive failed ({}): {}. Is the clone shallow? \
                 `git fetch --unshallow` gives it the history",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&src)
        .args([
            "build",
            "--quiet",
            "--locked",
            "--package",
            "anycast-user",
            "--bin",
            "anycast",
            "--target-dir",
        ])
        .arg(dir.join("target"))
        // The release's own workspace and toolchain choices, not this build's; no debug info
        // (its binary is only run, and each release's target directory is otherwise ~1.2 GB).
        .env("CARGO_PROFILE_DEV_DEBUG", "false")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let out = output_within(&mut cmd, BUILD_TIMEOUT).map_err(|e| format!("running {cmd:?}: {e}"))?;
    let Some(out) = out else {
        return Err(format!("building {commit} did not finish within {BUILD_TIMEOUT:?}; killed"));
    };
    if !out.status.success() {
        return Err(format!(
            "building {commit} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if !bin.exists() {
        return Err(format!("building {commit} succeeded but {} does not exist", bin.display()));
    }
    Ok(bin)
}
