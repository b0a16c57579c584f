//! Teardown that cannot hide its failures, and a census of what tests and labs leave behind.
//!
//! A teardown step that fails (a namespace that will not go, pins `anycast detach` refuses to
//! remove, a directory that stays) is reported straight to stderr, where the test harness
//! does not capture it (it captures `eprintln!` of passing tests), with a marker that `cargo
//! xtask test` counts: a run whose tests passed but leaked is not clean.
//!
//! Everything the tests and the lab make is named `<prefix><pid>-...`: namespaces
//! ([`crate::netns::PREFIX`]), pin directories under /sys/fs/bpf and work directories under
//! $TMPDIR ([`crate::daemon::PREFIX`]). [`leftovers`] lists them, so that `cargo xtask test`
//! can check at the end of the suite that none is left.

use std::{fmt::Display, io::Write, path::Path};

use crate::{daemon, netns};

/// What a teardown problem prints on stderr, followed by `<what> ***`.
pub const MARKER: &str = "*** TEARDOWN FAILED: ";

/// Reports a teardown problem (see the module docs).
pub fn warn(what: impl Display) {
    let _ = writeln!(std::io::stderr(), "\n{MARKER}{what} ***");
}

/// Whether `line` reports a teardown problem.
pub fn is_warning(line: &str) -> bool {
    line.trim_start().starts_with(MARKER)
}

/// Namespaces, pin directories and work directories of tests and labs whose process is gone,
/// as paths. (Those of running processes, e.g. another test run on the same machine, are
/// theirs to remove.)
pub fn leftovers() -> Vec<String> {
    let named = |dir: &Path, prefix: &str| -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut found: Vec<String> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name.strip_prefix(prefix).and_then(|rest| rest.split('-').next());
                pid.and_then(|pid| pid.parse::<u32>().ok())
                    .is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists())
            })
            .map(|e| e.path().display().to_string())
            .collect();
        found.sort();
        found
    };
    [
        named(Path::new(netns::NETNS_DIR), netns::PREFIX),
        named(Path::new(daemon::BPFFS), daemon::PREFIX),
        named(&std::env::temp_dir(), daemon::PREFIX),
    ]
    .concat()
}

/// Removes one of the [`leftovers`]: a namespace, a pin directory (`anycast detach` with the
/// binary `bin`) or a work directory.
pub fn remove(bin: &Path, leftover: &str) -> Result<(), String> {
    let path = Path::new(leftover);
    if path.starts_with(netns::NETNS_DIR) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        netns::delete(&name).map_err(|e| e.to_string())
    } else if path.starts_with(daemon::BPFFS) {
        daemon::detach(bin, path)
    } else {
        std::fs::remove_dir_all(path).map_err(|e| format!("removing {leftover}: {e}"))
    }
}
