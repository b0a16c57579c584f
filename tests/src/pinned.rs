//! What a test reads of a [`Daemon`]'s data path through its pins with the controller's own
//! library: its maps and the program its links run. (testkit's [`Daemon`] knows only the
//! binary: xtask builds testkit before the XDP toolchain is installed.)

use anycast_common::maps::MAGLEV_DEFAULT_SIZE;
use anycast_user::datapath::maps::{DataPathMaps, MapsError};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use testkit::daemon::Daemon;

#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("pinned link {path}: {source}")]
    Link { path: std::path::PathBuf, source: LinkError },
}

pub trait Pinned {
    /// The data path's maps, opened from the pins (what the daemon reads and writes).
    fn maps(&self) -> Result<DataPathMaps, PinnedError>;

    /// Kernel id of the program that the pinned link of `iface` runs: a restart that adopts
    /// the running instance leaves it unchanged, a reload of the program changes it.
    fn link_program_id(&self, iface: &str) -> Result<u32, PinnedError>;
}

impl Pinned for Daemon<'_> {
    fn maps(&self) -> Result<DataPathMaps, PinnedError> {
        Ok(DataPathMaps::from_pins(self.pin_dir(), MAGLEV_DEFAULT_SIZE)?)
    }

    fn link_program_id(&self, iface: &str) -> Result<u32, PinnedError> {
        let path = self.pin_dir().join("links").join(iface);
        let link_err = |source| PinnedError::Link { path: path.clone(), source };
        let link = FdLink::from(PinnedLink::from_pin(&path).map_err(link_err)?);
        Ok(link.info().map_err(link_err)?.program_id())
    }
}
