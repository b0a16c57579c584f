//! Root detection for tests that need the kernel (BPF syscalls, network namespaces).

use std::io::Write;

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns `true` when `test` may run. Otherwise prints `SKIPPED (needs root): <test>` and
/// returns `false`; the test then returns early and shows as passed, so the line is what
/// tells the reader it did not really run.
///
/// The line is written straight to the process's stderr rather than with `eprintln!`: the
/// test harness captures `eprintln!` output of passing tests, which would hide the skip.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED (needs root): {test} ***\n    run the suite as root (CI does) to exercise the kernel"
    );
    false
}
