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

/// The key `source` names. `Generated` reads `state_dir/hash_key`, creating it (mode 0600,
/// fresh random bytes) the first time; the bool says whether it was just created.
pub fn resolve(source: &HashKeySource, state_dir: &Path) -> Result<([u8; 16], bool), HashKeyError> {
    match source {
        HashKeySource::Inline(key) => Ok((*key, false)),
        HashKeySource::File(path) => read(path).map(|k| (k, false)),
        HashKeySource::Generated => {
            let path = state_dir.join(GENERATED);
            if path.exists() {
                return read(&path).map(|k| (k, false));
            }
            generate(&path).map(|k| (k, true))
        }
    }
}

fn read(path: &Path) -> Result<[u8; 16], HashKeyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| HashKeyError::Read { path: path.to_owned(), source })?;
    parse_hash_key(&text).ok_or_else(|| HashKeyError::Malformed(path.to_owned()))
}

fn generate(path: &Path) -> Result<[u8; 16], HashKeyError> {
    let err = |source: std::io::Error| HashKeyError::Generate { path: path.to_owned(), source };
    let mut key = [0u8; 16];
    getrandom::fill(&mut key).map_err(|e| err(e.into()))?;
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
        let (k1, new1) = resolve(&HashKeySource::Generated, dir.path()).unwrap();
        let (k2, new2) = resolve(&HashKeySource::Generated, dir.path()).unwrap();
        assert!(new1 && !new2);
        assert_eq!(k1, k2, "the generated key is kept");
        assert_ne!(k1, [0; 16]);
        let file = dir.path().join(GENERATED);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let (k3, _) = resolve(&HashKeySource::File(file), Path::new("/nonexistent")).unwrap();
        assert_eq!(k3, k1);
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "0123").unwrap();
        assert!(matches!(resolve(&HashKeySource::File(bad), dir.path()), Err(HashKeyError::Malformed(_))));
        let missing = resolve(&HashKeySource::File(dir.path().join("missing")), dir.path());
        assert!(matches!(missing, Err(HashKeyError::Read { .. })));
    }
}
