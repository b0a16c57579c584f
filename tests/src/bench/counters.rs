//! The data path's counters, summed into the few totals the benchmark checks: every timed
//! round must move exactly these by exactly `repetitions` × what one packet of its case
//! moves, or the benchmark measured some other path and says so.

use anycast_common::{
    Action, Exception,
    counters::{EXCEPTION_SLOTS, exception_index},
};
use anycast_user::datapath::maps::{DataPathMaps, MapsError};

use super::world::{REMOTE_SITES, SITE_LOCAL_INDEX, VIP_TCP, VIP_UDP};

/// Totals over the benchmark world's sites and VIPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals {
    pub local: u64,
    pub forwarded: u64,
    pub received: u64,
    pub vip_tcp: u64,
    pub vip_udp: u64,
    pub exceptions: [u64; EXCEPTION_SLOTS as usize],
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            local: 0,
            forwarded: 0,
            received: 0,
            vip_tcp: 0,
            vip_udp: 0,
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
        t.vip_tcp = m.vip_counters(VIP_TCP)?.packets;
        t.vip_udp = m.vip_counters(VIP_UDP)?.packets;
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
            vip_tcp: self.vip_tcp.wrapping_sub(earlier.vip_tcp),
            vip_udp: self.vip_udp.wrapping_sub(earlier.vip_udp),
            exceptions,
        }
    }

    /// Every counter multiplied by `n`.
    pub fn times(&self, n: u64) -> Totals {
        Totals {
            local: self.local * n,
            forwarded: self.forwarded * n,
            received: self.received * n,
            vip_tcp: self.vip_tcp * n,
            vip_udp: self.vip_udp * n,
            exceptions: self.exceptions.map(|e| e * n),
        }
    }

    /// One exception counter set, nothing else.
    pub fn exception(e: Exception, a: Action) -> Totals {
        let mut t = Totals::default();
        t.exceptions[exception_index(e, a) as usize] = 1;
        t
    }
}
