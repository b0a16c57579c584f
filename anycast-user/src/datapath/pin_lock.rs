//! One writer of the maps: the daemon holds an exclusive `flock(2)` on the pin directory
//! for as long as it runs. A second daemon on the same directory, or a CLI command that
//! would write the maps itself, finds the lock taken and refuses. The lock is on the
//! directory's own file descriptor (bpffs holds only BPF objects, so there can be no lock
//! file inside it) and the kernel drops it when the holder exits, crash or not: no stale
//! lock survives a SIGKILL.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use rustix::fs::{FlockOperation, flock};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{0} is held by another anycast process (a running daemon): talk to it (`anycast status`), \
         or stop it first"
    )]
    Held(PathBuf),
    #[error("locking {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Held while alive; dropping it (or exiting) releases the lock.
#[derive(Debug)]
pub struct PinDirLock {
    _dir: File,
}

impl PinDirLock {
    /// Takes the lock, or says who has it. `pin_dir` must exist (see `loader::resolve_pin_dir`).
    pub fn acquire(pin_dir: &Path) -> Result<PinDirLock, LockError> {
        let io_err = |source| LockError::Io { path: pin_dir.to_owned(), source };
        let dir = File::open(pin_dir).map_err(io_err)?;
        match flock(&dir, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(PinDirLock { _dir: dir }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(LockError::Held(pin_dir.to_owned())),
            Err(e) => Err(io_err(e.into())),
        }
    }

    /// Whether some process holds the lock now (without keeping it).
    pub fn held(pin_dir: &Path) -> Result<bool, LockError> {
        match PinDirLock::acquire(pin_dir) {
            Ok(_) => Ok(false),
            Err(LockError::Held(_)) => Ok(true),
            Err(LockError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = PinDirLock::acquire(dir.path()).unwrap();
        assert!(matches!(PinDirLock::acquire(dir.path()), Err(LockError::Held(_))));
        assert!(PinDirLock::held(dir.path()).unwrap());
        drop(first);
        assert!(!PinDirLock::held(dir.path()).unwrap());
        let _again = PinDirLock::acquire(dir.path()).unwrap();
    }
}
