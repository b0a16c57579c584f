//! The flow hash's secret key (`[datapath] hash_key` / `hash_key_file`, or one the
//! controller generates once into `state_dir/hash_key`): resolved at start and at every
//! reload, before anything is planned. See [`super::HashKeySource`] for why it is part of
//! the configuration rather than per-host state.

use std::path::{Path, PathBuf};

use super::{HashKeySource, parse_hash_key};

/// File name of a generated key under `state_dir`.
pub const GENERATED: &str = "hash_key";

#[derive(Debug, thiserror::Error)]
pub enum HashKeyError {
    #[error("hash key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("hash key file {0}: expected 32 hexadecimal digits (a 128-bit secret)")]
    Malformed(PathBuf),
    #[error("generating a hash key in {path}: {source}")]
    Generate { path: PathBuf, source: std::io::Error },
}

/// Where a resolved key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The config, its file, or `state_dir/hash_key` as it was.
    Read,
    /// Fresh random bytes, written into `state_dir/hash_key` just now.
    Generated,
    /// The running data path's key, written into a missing `state_dir/hash_key`.
    Adopted,
}

/// The key `source` names. `Generated` reads `state_dir/hash_key`, creating it (mode 0600)
/// the first time: with the key of the data path already running (`running`) if there is
/// one — a state directory lost under a running data path must not rekey it, which would
/// put every flow in another bucket — else with fresh random bytes.
pub fn resolve(
    source: &HashKeySource,
    state_dir: &Path,
    running: Option<[u8; 16]>,
) -> Result<([u8; 16], Origin), HashKeyError> {
    match source {
        HashKeySource::Inline(key) => Ok((*key, Origin::Read)),
        HashKeySource::File(path) => read(path).map(|k| (k, Origin::Read)),
        HashKeySource::Generated => {
            let path = state_dir.join(GENERATED);
            if path.exists() {
                return read(&path).map(|k| (k, Origin::Read));
            }
            match running {
                Some(key) => write(&path, key).map(|k| (k, Origin::Adopted)),
                None => generate(&path).map(|k| (k, Origin::Generated)),
            }
        }
    }
}

fn read(path: &Path) -> Result<[u8; 16], HashKeyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| HashKeyError::Read { path: path.to_owned(), source })?;
    parse_hash_key(&text).ok_or_else(|| HashKeyError::Malformed(path.to_owned()))
}

fn generate(path: &Path) -> Result<[u8; 16], HashKeyError> {
    let mut key = [0u8; 16];
    getrandom::fill(&mut key)
        .map_err(|e| HashKeyError::Generate { path: path.to_owned(), source: e.into() })?;
    write(path, key)
}

fn write(path: &Path, key: [u8; 16]) -> Result<[u8; 16], HashKeyError> {
    let err = |source: std::io::Error| HashKeyError::Generate { path: path.to_owned(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    // Whole or absent, never half-written (mode 0600); if another start wrote one
    // meanwhile, that one stays and this one is refused.
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    crate::durable::create(path, format!("{hex}\n").as_bytes()).map_err(err)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_read_back_and_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, new1) = resolve(&HashKeySource::Generated, dir.path(), None).unwrap();
        let (k2, new2) = resolve(&HashKeySource::Generated, dir.path(), Some([7; 16])).unwrap();
        assert_eq!((new1, new2), (Origin::Generated, Origin::Read), "the file, not the running key");
        assert_eq!(k1, k2, "the generated key is kept");
        assert_ne!(k1, [0; 16]);
        let file = dir.path().join(GENERATED);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let (k3, _) = resolve(&HashKeySource::File(file), Path::new("/nonexistent"), None).unwrap();
        assert_eq!(k3, k1);
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "0123").unwrap();
        let malformed = resolve(&HashKeySource::File(bad), dir.path(), None);
        assert!(matches!(malformed, Err(HashKeyError::Malformed(_))));
        let missing = resolve(&HashKeySource::File(dir.path().join("missing")), dir.path(), None);
        assert!(matches!(missing, Err(HashKeyError::Read { .. })));
    }

    /// A state directory lost under a running data path: its key is written back, not a
    /// new one (which would put every flow in another bucket).
    #[test]
    fn a_missing_generated_key_is_the_running_one() {
        let dir = tempfile::tempdir().unwrap();
        let (k, origin) = resolve(&HashKeySource::Generated, dir.path(), Some([7; 16])).unwrap();
        assert_eq!((k, origin), ([7; 16], Origin::Adopted));
        assert_eq!(resolve(&HashKeySource::Generated, dir.path(), None).unwrap(), ([7; 16], Origin::Read));
    }
}
