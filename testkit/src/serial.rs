//! Tests that need the CPUs to themselves: the load tests (three controllers reacting to
//! rates they measure), the lab, the flow-table overflow. Run side by side on a two-core
//! machine they starve each other and fail on timing rather than on behaviour. Each holds
//! [`heavy`] while it runs: an exclusive `flock(2)` on one file, so they take turns across
//! test threads, test binaries, and concurrent test runs on the same machine alike; the
//! kernel releases it when the holder dies, however it dies.

use std::{fs::File, os::fd::AsRawFd, path::Path};

/// Held while a CPU-heavy test runs; dropping it lets the next one in.
pub struct Heavy {
    _lock: File,
}

/// The lock file: named so that the census of leftovers (`crate::teardown`) does not take
/// it for a test's, and left in place (it is empty, and removing it would race a waiter).
const LOCK: &str = "anycast-heavy-tests.lock";

/// Waits until no other CPU-heavy test runs, then holds the turn until the guard drops.
pub fn heavy() -> Heavy {
    let path = std::env::temp_dir().join(LOCK);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", Path::new(&path).display()));
    // SAFETY: flock only takes a valid descriptor, which `file` keeps open.
    while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(err.kind(), std::io::ErrorKind::Interrupted, "flock {}: {err}", path.display());
    }
    Heavy { _lock: file }
}
