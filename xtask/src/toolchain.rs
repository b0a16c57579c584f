//! Where things are: the cargo that runs us, the PATH our children get, the workspace and its
//! target directory.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

/// The cargo that started xtask (cargo sets CARGO for what it runs), so that children use
/// the same toolchain even when another `cargo` (Debian's cargo-web) comes first on PATH.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.env("PATH", path());
    cmd
}

/// `cargo install` puts binaries here; bpf-linker must be found there by the eBPF build.
pub fn cargo_bin_dir() -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

/// PATH for children: ours, with cargo's bin directory appended when absent (a CI shell may
/// not have it). Appended, not prepended, so a PATH the user chose keeps precedence; left
/// unchanged when present because anycast-user/build.rs reruns whenever PATH changes.
pub fn path() -> OsString {
    let current = env::var_os("PATH").unwrap_or_default();
    let bin = cargo_bin_dir();
    if env::split_paths(&current).any(|p| p == bin) {
        return current;
    }
    env::join_paths(env::split_paths(&current).chain(std::iter::once(bin))).unwrap_or(current)
}

pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives inside the workspace")
}

/// The directory cargo builds into (binaries are at `<target>/<profile>/`).
pub fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

pub fn profile_dir(release: bool) -> PathBuf {
    target_dir().join(if release { "release" } else { "debug" })
}

/// A command as a user would type it, for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
