//! The data path's counters, summed into the few totals the benchmark checks: every timed
//! round must move exactly these by exactly `repetitions` × what one packet of its case
//! moves, or the benchmark measured some other path and says so.

use anycast_common::{
    Action, Exception,
    counters::{EXCEPTION_SLOTS, exception_index},
};
use anycast_user::datapath::maps::{DataPathMaps, MapsError};

use super::world::{REMOTE_SITES, SITE_LOCAL_INDEX, VIPS};

/// Totals over the benchmark world's sites and VIPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals {
    pub local: u64,
    pub forwarded: u64,
    pub received: u64,
    /// Packets per VIP of the world, in [`VIPS`] order.
    pub vips: [u64; VIPS.len()],
    pub exceptions: [u64; EXCEPTION_SLOTS as usize],
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            local: 0,
            forwarded: 0,
            received: 0,
            vips: [0; VIPS.len()],
            exceptions: [0; EXCEPTION_SLOTS as usize],
        }
    }
}

impl Totals {
    pub fn read(m: &DataPathMaps) -> Result<Totals, MapsError> {
        let mut t = Totals { local: m.site_counters(SITE_LOCAL_INDEX)?.local_packets, ..Totals::default() };
        for &s in &REMOTE_SITES {
            let c = m.site_counters(s)?;
            t.forwarded += c.forwarded_packets;
            t.received += c.received_packets;
        }
        for (slot, &vip) in t.vips.iter_mut().zip(&VIPS) {
            *slot = m.vip_counters(vip)?.packets;
        }
        t.exceptions = m.exceptions()?;
        Ok(t)
    }

    /// `self - earlier`, counter by counter.
    pub fn since(&self, earlier: &Totals) -> Totals {
        let mut exceptions = [0; EXCEPTION_SLOTS as usize];
        for (i, e) in exceptions.iter_mut().enumerate() {
            *e = self.exceptions[i].wrapping_sub(earlier.exceptions[i]);
        }
        Totals {
            local: self.local.wrapping_sub(earlier.local),
            forwarded: self.forwarded.wrapping_sub(earlier.forwarded),
            received: self.received.wrapping_sub(earlier.received),
            vips: std::array::from_fn(|i| self.vips[i].wrapping_sub(earlier.vips[i])),
            exceptions,
        }
    }

    /// Every counter multiplied by `n`.
    pub fn times(&self, n: u64) -> Totals {
        Totals {
            local: self.local * n,
            forwarded: self.forwarded * n,
            received: self.received * n,
            vips: self.vips.map(|v| v * n),
            exceptions: self.exceptions.map(|e| e * n),
        }
    }

    /// One packet of VIP `vip` (a slot of [`VIPS`]), handled as `local`/`forwarded` say.
    pub fn vip(vip: u32, local: u64, forwarded: u64) -> Totals {
        let mut t = Totals { local, forwarded, ..Totals::default() };
        if let Some(i) = VIPS.iter().position(|&v| v == vip) {
            t.vips[i] = 1;
        }
        t
    }

    /// One exception counter set, nothing else.
    pub fn exception(e: Exception, a: Action) -> Totals {
        let mut t = Totals::default();
        t.exceptions[exception_index(e, a) as usize] = 1;
        t
    }
}
