//! What this site's controller knows about its own site, in one value: the input of
//! whatever tells the outside world about it (the BGP speaker) and of `GET /load`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteSignals {
    /// The XDP program is attached (pinned link present) on every configured interface.
    pub attached: bool,
    /// An operator drained the local site.
    pub drained: bool,
    /// Smoothed utilisation above the high watermark (the site sheds or wants to).
    pub overloaded: bool,
    /// Overloaded, and no remote site has headroom: traffic is kept local.
    pub no_headroom: bool,
}
