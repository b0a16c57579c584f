//! One consistent-enough read of every counter of the data path (per-CPU values summed by
//! [`DataPathMaps`]), and the rates between two reads; [`Counters`], the read-only handle
//! through which the daemon's readers get them without going through the map owner.

use std::{collections::BTreeMap, path::Path, time::Instant};

use anycast_common::{
    Event, SiteCounters, VipCounters,
    counters::{EXCEPTION_SLOTS, exception_slot},
    maps::MAGLEV_DEFAULT_SIZE,
};

use super::maps::{DataPathMaps, MapsError};

#[derive(Clone, Debug)]
pub struct Snapshot {
    pub at: Instant,
    pub sites: BTreeMap<u32, SiteCounters>,
    pub vips: BTreeMap<u32, VipCounters>,
    /// By [`exception_index`](anycast_common::counters::exception_index).
    pub exceptions: [u64; EXCEPTION_SLOTS as usize],
    /// In [`Event::ALL`] order.
    pub events: [u64; Event::COUNT as usize],
}

impl Snapshot {
    /// Reads the counters of the given site and VIP slots.
    pub fn read(
        maps: &DataPathMaps,
        sites: impl IntoIterator<Item = u32>,
        vips: impl IntoIterator<Item = u32>,
    ) -> Result<Self, MapsError> {
        Ok(Snapshot {
            at: Instant::now(),
            sites: sites
                .into_iter()
                .map(|i| Ok((i, maps.site_counters(i)?)))
                .collect::<Result<_, MapsError>>()?,
            vips: vips
                .into_iter()
                .map(|i| Ok((i, maps.vip_counters(i)?)))
                .collect::<Result<_, MapsError>>()?,
            exceptions: maps.exceptions()?,
            events: maps.events()?,
        })
    }

    /// Packets per second of every VIP since `earlier`.
    pub fn vip_rates(&self, earlier: &Snapshot) -> BTreeMap<u32, f64> {
        let secs = self.at.duration_since(earlier.at).as_secs_f64().max(1e-3);
        self.vips
            .iter()
            .map(|(&i, now)| {
                let before = earlier.vips.get(&i).map_or(0, |c| c.packets);
                (i, now.packets.saturating_sub(before) as f64 / secs)
            })
            .collect()
    }

    /// Packets per second of every site (all actions) since `earlier`.
    pub fn site_rates(&self, earlier: &Snapshot) -> BTreeMap<u32, f64> {
        let secs = self.at.duration_since(earlier.at).as_secs_f64().max(1e-3);
        self.sites
            .iter()
            .map(|(&i, now)| {
                let before = earlier.sites.get(&i).map(site_packets).unwrap_or(0);
                (i, site_packets(now).saturating_sub(before) as f64 / secs)
            })
            .collect()
    }
}

/// The pinned maps opened a second time, for reading only: the counters (per-CPU arrays,
/// which need no lock: the kernel adds, readers sum) and the flow-table count. The steering
/// task, `/metrics` and `/status` read through it while the owner of the data path may be
/// busy with a reconcile; it offers no write.
pub struct Counters {
    maps: DataPathMaps,
}

impl Counters {
    pub fn open(pin_dir: &Path) -> Result<Self, MapsError> {
        // Reads only: the size of the tables it would write does not matter.
        Ok(Counters { maps: DataPathMaps::from_pins(pin_dir, MAGLEV_DEFAULT_SIZE)? })
    }

    /// The counters of the given site and VIP slots, now.
    pub fn snapshot(
        &self,
        sites: impl IntoIterator<Item = u32>,
        vips: impl IntoIterator<Item = u32>,
    ) -> Result<Snapshot, MapsError> {
        Snapshot::read(&self.maps, sites, vips)
    }

    /// Entries in the flow table: a walk of the whole table (batched), seconds for 2^24.
    pub fn flow_count(&self) -> usize {
        self.maps.flow_count()
    }
}

/// What the daemon's sampler read last: the flow-table count and the last two counter
/// snapshots (rates are their difference).
#[derive(Clone, Debug, Default)]
pub struct Samples {
    pub flow_entries: u64,
    pub previous: Option<Snapshot>,
    pub last: Option<Snapshot>,
}

/// Packets of a site counted under any action.
pub fn site_packets(c: &SiteCounters) -> u64 {
    c.local_packets + c.forwarded_packets + c.received_packets
}

/// One line per non-zero counter, for the foreground `run --iface` demo.
pub fn render_nonzero(s: &Snapshot, site_name: impl Fn(u32) -> String) -> String {
    let mut out = String::new();
    for (&i, c) in &s.sites {
        if site_packets(c) > 0 {
            out += &format!(
                "  site {:<12} local {} pkts / {} B  forwarded {} / {} B  received {} / {} B\n",
                site_name(i),
                c.local_packets,
                c.local_bytes,
                c.forwarded_packets,
                c.forwarded_bytes,
                c.received_packets,
                c.received_bytes
            );
        }
    }
    for (&i, c) in &s.vips {
        if c.packets > 0 {
            out += &format!("  vip  {i:<12} {} pkts / {} B\n", c.packets, c.bytes);
        }
    }
    for (i, &n) in s.exceptions.iter().enumerate() {
        if n > 0 {
            let (e, a) = exception_slot(i as u32);
            out += &format!("  exception {:<18} {:<4} {n}\n", e.name(), a.name());
        }
    }
    for (e, &n) in Event::ALL.iter().zip(&s.events) {
        if n > 0 {
            out += &format!("  event {:<22} {n}\n", e.name());
        }
    }
    if out.is_empty() {
        out = "  (no packet counted yet)\n".to_owned();
    }
    out
}
