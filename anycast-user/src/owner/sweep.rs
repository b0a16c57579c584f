//! A sweep of the check flags (docs/datapath.md §6, "The check flag") in two halves: the
//! owner takes a snapshot of what the sweep needs ([`Job`]), a thread of its own reads the
//! flow table and judges every flagged bucket ([`Job::run`]), and the owner writes the
//! cleared tables it gets back — only those it still holds. Reading 2^20 pins and hashing
//! each takes ~0.2 s: on the owner's thread it held up the weight installs queued behind it
//! (a site of several hosts installs each decision 375 ms after it is made).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use anycast_common::{HashKey, SiteInfo, VipInfo, VipKey, flow::STATE_UNIT_SHIFT};

use crate::{
    datapath::maps::{FlowsReader, MapsError},
    reconcile::check,
};

/// What one sweep needs, owned: it runs on another thread while the owner goes on.
pub struct Job {
    pub flows: FlowsReader,
    pub hash_key: HashKey,
    pub vips: HashMap<VipKey, VipInfo>,
    pub sites: Vec<SiteInfo>,
    /// The tables swept (the owner writes a cleared one only if it still holds it).
    pub tables: BTreeMap<u32, Arc<[u32]>>,
    /// When the controller started watching (the floor of every age: [`check::Input`]).
    pub started: Instant,
    /// As [`check::Input`]: the grace, in the units of a flow's state.
    pub grace: u64,
    /// The buckets that may lose their flag: local for `check_grace` (none until the
    /// controller has watched that long), i.e. not among these, which came home since.
    pub settled: bool,
    pub came_home: check::CameHome,
    /// Whole seconds the controller had watched when the job was made, and `check_grace`.
    pub watched: u32,
    pub check_grace: u32,
    /// Flagged buckets (over every VIP) when the sweep began.
    pub flagged: usize,
}

/// What a sweep found, for the owner to write.
pub struct Found {
    pub swept: check::Swept,
    /// The key the pins were placed in their buckets with.
    pub hash_key: HashKey,
    pub pins: usize,
    pub flagged: usize,
    pub took: Duration,
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub pins: usize,
    /// Flagged buckets (over every VIP) before the sweep, kept because of a pin that may be
    /// alive, cleared.
    pub flagged: usize,
    pub kept_by_pins: usize,
    pub cleared: usize,
    /// Reading and judging (off the owner's thread), and writing (on it).
    pub took: Duration,
    pub wrote: Duration,
}

/// `CLOCK_MONOTONIC_COARSE` in ns: the data path's `bpf_ktime_get_coarse_ns`.
fn coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Job {
    /// Reads the flow table and judges every flagged bucket. Reads only.
    pub fn run(self) -> Result<Found, MapsError> {
        let t0 = Instant::now();
        let flows = self.flows.read()?;
        // Now is read once every pin is: a pin the data path refreshed during the read
        // (0.2–1 s for 2^20 pins) carries a time after a clock read before it, which would
        // wrap to an age of 2^15 − 1 units and read as long over.
        let now = coarse_ns();
        let floor = now.saturating_sub(self.started.elapsed().as_nanos() as u64);
        let input = check::Input {
            hash_key: &self.hash_key,
            vips: &self.vips,
            sites: &self.sites,
            tables: &self.tables,
            flows: &flows,
            now: now >> STATE_UNIT_SHIFT,
            floor: floor >> STATE_UNIT_SHIFT,
            grace: self.grace,
        };
        let swept = check::sweep(&input, |vip, slot| {
            self.settled && !self.came_home.lately(vip, slot, self.watched, self.check_grace)
        });
        Ok(Found {
            swept,
            hash_key: self.hash_key,
            pins: flows.len(),
            flagged: self.flagged,
            took: t0.elapsed(),
        })
    }
}
