//! Files written whole or not at all, also across a power loss: the overrides, the BIRD
//! include and the generated hash key.
//!
//! The contents go to a uniquely named temporary file in the target's directory (so the
//! daemon and a CLI command writing at once never share one, and the rename stays within
//! one file system), which is synced before it is renamed over the target; the directory is
//! synced after, so that the rename itself is on disk. Without the first sync, ext4 and XFS
//! may commit the rename before the data, and a power loss leaves an empty file.

use std::{
    io::{self, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::Path,
};

/// Writes `contents` to `path`, replacing it; `mode` if set (whatever the umask), else
/// 0600 (the temporary file's).
pub fn replace(path: &Path, contents: &[u8], mode: Option<u32>) -> io::Result<()> {
    write(path, contents, mode, true)
}

/// Writes `contents` (mode 0600) to `path` unless it exists: `AlreadyExists` then, and the
/// file found is kept (two writers racing to create it: the first one's stays).
pub fn create(path: &Path, contents: &[u8]) -> io::Result<()> {
    write(path, contents, None, false)
}

fn write(path: &Path, contents: &[u8], mode: Option<u32>, replace: bool) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A leading dot: a pattern such as BIRD's `include "anycast*.conf"` never matches it.
    let mut tmp = tempfile::Builder::new().prefix(&format!(".{name}.")).tempfile_in(dir)?;
    tmp.write_all(contents)?;
    if let Some(mode) = mode {
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.as_file().sync_all()?;
    // On an error the temporary file is deleted (dropped with the error).
    if replace {
        tmp.persist(path).map_err(|e| e.error)?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        n.sort();
        n
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn replaces_whole_with_the_mode_asked_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anycast.conf");
        replace(&path, b"first\n", Some(0o644)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first\n");
        assert_eq!(mode(&path), 0o644);
        replace(&path, b"second, longer\n", Some(0o640)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer\n");
        assert_eq!(mode(&path), 0o640);
        replace(&path, b"3", None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"3");
        assert_eq!(mode(&path), 0o600, "without a mode the file is private");
        assert_eq!(names(dir.path()), ["anycast.conf"]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory in the way: the rename fails.
        let path = dir.path().join("in-the-way");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("kept"), b"old").unwrap();
        assert!(replace(&path, b"new", None).is_err());
        assert_eq!(std::fs::read(path.join("kept")).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["in-the-way"], "the temporary file stayed behind");
        // A directory that does not exist: nothing is created.
        let missing = dir.path().join("missing").join("file");
        assert_eq!(replace(&missing, b"x", None).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(names(dir.path()), ["in-the-way"]);
    }

    #[test]
    fn create_keeps_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hash.key");
        create(&path, b"one\n").unwrap();
        assert_eq!(create(&path, b"two\n").unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"one\n");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(names(dir.path()), ["hash.key"]);
    }

    /// Writers at once on one file (the daemon and a CLI command): every write succeeds
    /// (no shared temporary name to steal or truncate), and the file is always one of the
    /// writes, whole.
    #[test]
    fn concurrent_writers_never_mix_or_fail() {
        const WRITERS: usize = 4;
        const WRITES: usize = 200;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overrides.json");
        // Each write is one byte repeated, of a length of its own: a mix shows.
        let body = |w: usize, i: usize| vec![b'a' + w as u8; 1000 + i];
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let path = &path;
                s.spawn(move || {
                    for i in 0..WRITES {
                        replace(path, &body(w, i), None)
                            .unwrap_or_else(|e| panic!("writer {w}, write {i}: {e}"));
                    }
                });
            }
            // A reader meanwhile, as BIRD or a restarted daemon would be.
            let path = &path;
            s.spawn(move || {
                for _ in 0..WRITES {
                    if let Ok(text) = std::fs::read(path) {
                        assert!(text.len() >= 1000 && text.iter().all(|b| *b == text[0]), "a mixed file");
                    }
                }
            });
        });
        let last = std::fs::read(&path).unwrap();
        assert!((0..WRITERS).any(|w| last == body(w, WRITES - 1)), "the last write of no writer");
        assert_eq!(names(dir.path()), ["overrides.json"]);
    }
}
