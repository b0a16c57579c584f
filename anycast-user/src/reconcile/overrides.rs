//! Runtime overrides (drained sites), persisted in the state directory so that they
//! survive a controller restart. Not on bpffs: bpffs holds only BPF objects, and the file
//! should survive a reboot like the config does.

use std::{
    collections::BTreeSet,
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

const FILE: &str = "overrides.json";

/// Runtime overrides applied on top of the config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Sites that get no new flows (Maglev weight 0); their established flows stay.
    #[serde(default)]
    pub drained: BTreeSet<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OverridesError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid overrides file: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

impl Overrides {
    /// The saved overrides; none if the file does not exist yet.
    pub fn load(state_dir: &Path) -> Result<Overrides, OverridesError> {
        let path = path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| OverridesError::Parse { path, source })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Overrides::default()),
            Err(source) => Err(OverridesError::Read { path, source }),
        }
    }

    /// Writes the file atomically and durably: a crash or a power loss leaves either the old
    /// or the new overrides, never half a file.
    pub fn save(&self, state_dir: &Path) -> Result<(), OverridesError> {
        let path = path(state_dir);
        let write = || -> io::Result<()> {
            std::fs::create_dir_all(state_dir)?;
            let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
            crate::durable::replace(&path, &json, None)
        };
        write().map_err(|source| OverridesError::Write { path: path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_empty_and_save_load_round_trips() {
        let dir = std::env::temp_dir().join(format!("anycast-overrides-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(Overrides::load(&dir).unwrap(), Overrides::default());
        let o = Overrides { drained: BTreeSet::from(["ams".to_owned()]) };
        o.save(&dir).unwrap();
        assert_eq!(Overrides::load(&dir).unwrap(), o);
        std::fs::write(path(&dir), b"{\"drained\": 3}").unwrap();
        let e = Overrides::load(&dir).unwrap_err().to_string();
        assert!(e.contains("overrides.json is not a valid overrides file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
