//! What a test needs from the machine, asked of the machine itself: the kernel (can this
//! process load a BPF program and make a network namespace?) and the programs it runs
//! (`bird`, `prometheus`). A test that cannot run says so loudly and, locally, skips; under
//! CI (`CI=true`) it fails instead, so that a runner without the privileges or the tools can
//! never pass having run nothing.
//!
//! Why the kernel and not the uid: root inside a locked-down container may be refused, and a
//! user with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON may do all of it. The probe is what the
//! tests do, in miniature: `BPF_PROG_LOAD` of a two-instruction XDP program (XDP needs
//! CAP_BPF + CAP_NET_ADMIN, or CAP_SYS_ADMIN: kernel/bpf/syscall.c `bpf_prog_load`) and
//! `unshare(CLONE_NEWNET)` on a throwaway thread (CAP_SYS_ADMIN; it moves only that thread).

use std::{io::Write, path::PathBuf, sync::OnceLock};

/// What a skip prints on stderr, followed by `<test>: <why> ***`. Read back by `cargo xtask
/// test` ([`skipped_test`]) to count skips and name them.
pub const SKIP_MARKER: &str = "*** SKIPPED ";

/// Something a test needs.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// Loading BPF programs and making network namespaces.
    Kernel,
    /// A program on PATH, and the Debian package that `cargo xtask setup` installs it from.
    Tool { command: &'static str, package: &'static str },
}

/// BIRD 2, the BGP speaker the controller drives.
pub const BIRD: Need = Need::Tool { command: "bird", package: "bird2" };
/// BIRD's control client.
pub const BIRDC: Need = Need::Tool { command: "birdc", package: "bird2" };
pub const PROMETHEUS: Need = Need::Tool { command: "prometheus", package: "prometheus" };
/// systemd's unit checker (`systemd-analyze verify`).
pub const SYSTEMD_ANALYZE: Need = Need::Tool { command: "systemd-analyze", package: "systemd" };

/// Whether this runs under CI: `CI` set to anything but empty, `0` or `false` (what CI
/// services set, and `.ci/run` exports).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Returns `true` when `test` has everything in `needs`. Otherwise, under CI, panics naming
/// what is missing (the test fails); locally, prints `*** SKIPPED <test>: <why> ***` straight
/// to stderr and returns `false`, and the test returns early.
///
/// Straight to stderr rather than with `eprintln!`: the test harness captures `eprintln!`
/// output of passing tests, which would hide the skip.
pub fn require(test: &str, needs: &[Need]) -> bool {
    let missing: Vec<String> = needs.iter().filter_map(|need| check(*need).err()).collect();
    if missing.is_empty() {
        return true;
    }
    let why = missing.join("; ");
    if ci() {
        panic!("{test} cannot run, and under CI (CI={}) a skip is a failure: {why}", env_ci());
    }
    let _ = writeln!(std::io::stderr(), "\n{SKIP_MARKER}{test}: {why} ***");
    false
}

fn env_ci() -> String {
    std::env::var("CI").unwrap_or_default()
}

/// `Ok` when `need` is met, else why not and how to fix it.
pub fn check(need: Need) -> Result<(), String> {
    match need {
        Need::Kernel => kernel().clone(),
        Need::Tool { command, package } => match find_on_path(command) {
            Some(_) => Ok(()),
            None => Err(format!(
                "`{command}` is not installed (not on PATH): `cargo xtask setup` installs it \
                 (Debian package {package})"
            )),
        },
    }
}

/// Whether the kernel lets this process load an XDP program and make a network namespace;
/// asked once per process.
pub fn kernel() -> &'static Result<(), String> {
    static KERNEL: OnceLock<Result<(), String>> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let problems: Vec<String> = [load_bpf(), new_netns()].into_iter().filter_map(Result::err).collect();
        match problems.is_empty() {
            true => Ok(()),
            false => Err(problems.join("; ")),
        }
    })
}

/// `BPF_PROG_LOAD` of `r0 = XDP_PASS; exit`, closed at once.
fn load_bpf() -> Result<(), String> {
    crate::xdp::load_pass().map(drop).map_err(|err| {
        format!(
            "the kernel refuses to load a BPF program ({err}): run as root, or with CAP_BPF, \
             CAP_NET_ADMIN and CAP_PERFMON"
        )
    })
}

/// `unshare(CLONE_NEWNET)` on a thread of its own, which then ends (with its namespace).
fn new_netns() -> Result<(), String> {
    std::thread::spawn(|| {
        // SAFETY: unshare has no memory-safety preconditions; CLONE_NEWNET moves only the
        // calling thread, which ends right after.
        match unsafe { libc::unshare(libc::CLONE_NEWNET) } {
            0 => Ok(()),
            _ => Err(format!(
                "the kernel refuses a new network namespace ({}): run as root, or with CAP_SYS_ADMIN \
                 and CAP_NET_ADMIN",
                std::io::Error::last_os_error()
            )),
        }
    })
    .join()
    .unwrap_or_else(|_| Err("the network-namespace probe panicked".to_owned()))
}

/// The first executable file called `command` in a directory of PATH.
pub fn find_on_path(command: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|file| file.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The test named by a skip line (`*** SKIPPED <test>: <why> ***`), if `line` is one.
pub fn skipped_test(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix(SKIP_MARKER)?;
    rest.split_once(": ").map(|(test, _)| test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lines_name_their_test() {
        assert_eq!(skipped_test("*** SKIPPED netns::tests::x: no kernel ***"), Some("netns::tests::x"));
        assert_eq!(skipped_test("  *** SKIPPED a_b: `bird` is not installed ***"), Some("a_b"));
        assert_eq!(skipped_test("test a ... ok"), None);
        assert_eq!(skipped_test("*** SKIPPED without a reason"), None);
    }

    #[test]
    fn tools_are_found_on_path_only_when_executable() {
        assert!(find_on_path("sh").is_some(), "every Debian machine has /bin/sh");
        assert!(find_on_path("no-such-command-anywhere").is_none());
        assert!(
            check(Need::Tool { command: "no-such-command-anywhere", package: "p" })
                .is_err_and(|why| why.contains("cargo xtask setup") && why.contains("package p"))
        );
    }
}
