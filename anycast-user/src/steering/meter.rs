//! The local load signal: packet rates from the data path's counters and the host's CPU
//! utilisation, each smoothed by an exponentially weighted moving average.
//!
//! - offered  = Σ over sites of (local + forwarded) packets/s: clients' packets for our VIPs
//! - received = Σ over sites of received packets/s: what siblings tunnel to us
//! - served   = local + received packets/s: what this host's services answer
//! - cpu      = the busiest core's Δsoftirq / Δ(its time less steal), from /proc/stat's
//!   per-core lines: XDP and the stack's receive path run in softirq on the receive
//!   queues' cores, which saturate long before the host-wide average moves; time the
//!   hypervisor stole is nobody's load here.
//! - vips     = packets/s of each VIP (the policy keeps VIPs no other site serves apart:
//!   they cannot be shed)
//! - recent   = offered, received and served over the last interval alone, unsmoothed
//!   (the policy measures on it the local load that the keep in force does not explain)
//!
//! EWMA with a time constant τ: `x̄ += α (x − x̄)`, `α = 1 − e^(−Δt/τ)`, so irregular
//! sampling intervals weigh correctly and τ = 0 means no smoothing. The packet rates take a
//! rise beyond noise in one interval at once ([`follow`]): a step is not noise.

use std::{collections::BTreeMap, time::Duration};

use super::policy::{self, STEP, STEP_SIGMAS};
use crate::datapath::counters::Snapshot;

/// Smoothed rates, packets/s.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    pub offered: f64,
    pub received: f64,
    pub served: f64,
    /// 0..1, when measured.
    pub cpu: Option<f64>,
    /// Packets/s forwarded to each site slot.
    pub forwarded: BTreeMap<u32, f64>,
    /// Packets/s of each VIP slot.
    pub vips: BTreeMap<u32, f64>,
    /// Offered, received, served over the last interval, unsmoothed.
    pub recent: policy::Rates,
}

/// Per-core CPU time counters of /proc/stat's `cpuN` lines, in USER_HZ: softirq, and all
/// time less steal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub cores: Vec<(u64, u64)>,
}

impl From<&procfs::KernelStats> for CpuTimes {
    /// Per core: softirq, and user + nice + system + idle + iowait + irq + softirq (guest time
    /// is already inside user and nice, proc(5); steal is left out).
    fn from(k: &procfs::KernelStats) -> CpuTimes {
        let o = |v: Option<u64>| v.unwrap_or(0);
        let core = |t: &procfs::CpuTime| {
            let softirq = o(t.softirq);
            (softirq, t.user + t.nice + t.system + t.idle + o(t.iowait) + o(t.irq) + softirq)
        };
        CpuTimes { cores: k.cpu_time.iter().map(core).collect() }
    }
}

impl CpuTimes {
    /// The host's times now (procfs reads /proc/stat).
    pub fn read() -> Option<CpuTimes> {
        use procfs::CurrentSI as _;
        procfs::KernelStats::current().ok().map(|k| CpuTimes::from(&k)).filter(|t| !t.cores.is_empty())
    }

    /// The times of a /proc/stat text.
    pub fn parse(stat: &str) -> Option<CpuTimes> {
        use procfs::FromBufReadSI as _;
        let k = procfs::KernelStats::from_buf_read(stat.as_bytes(), procfs::current_system_info()).ok()?;
        Some(CpuTimes::from(&k)).filter(|t| !t.cores.is_empty())
    }

    /// The busiest core's softirq share since `earlier`.
    fn utilisation(&self, earlier: &CpuTimes) -> Option<f64> {
        if self.cores.len() != earlier.cores.len() {
            return None;
        }
        self.cores
            .iter()
            .zip(&earlier.cores)
            .filter_map(|(&(s, t), &(s0, t0))| {
                let total = t.checked_sub(t0)?;
                (total > 0).then(|| s.saturating_sub(s0) as f64 / total as f64)
            })
            .reduce(f64::max)
    }
}

/// One reading: the counters and the CPU times at the same moment.
pub struct Reading {
    pub snapshot: Snapshot,
    pub cpu: Option<CpuTimes>,
}

pub struct Meter {
    tau: Duration,
    last: Option<Reading>,
    smoothed: Option<Rates>,
}

impl Meter {
    pub fn new(tau: Duration) -> Meter {
        Meter { tau, last: None, smoothed: None }
    }

    pub fn set_smoothing(&mut self, tau: Duration) {
        self.tau = tau;
    }

    /// Folds in a new reading; the smoothed rates once two readings exist.
    pub fn update(&mut self, now: Reading) -> Option<&Rates> {
        let last = self.last.replace(now)?;
        let now = self.last.as_ref().expect("just set");
        let dt = now.snapshot.at.duration_since(last.snapshot.at).as_secs_f64();
        if dt <= 0.0 {
            return self.smoothed.as_ref();
        }
        let raw = rates(&last, now, dt);
        let alpha = smoothing_factor(dt, self.tau);
        let smoothed = match self.smoothed.take() {
            None => raw,
            Some(s) => Rates {
                offered: follow(s.offered, raw.offered, alpha, dt),
                received: follow(s.received, raw.received, alpha, dt),
                served: follow(s.served, raw.served, alpha, dt),
                cpu: match (s.cpu, raw.cpu) {
                    (Some(a), Some(b)) => Some(ewma(a, b, alpha)),
                    (_, b) => b,
                },
                forwarded: smooth(&s.forwarded, &raw.forwarded, alpha),
                vips: smooth(&s.vips, &raw.vips, alpha),
                recent: raw.recent,
            },
        };
        self.smoothed = Some(smoothed);
        self.smoothed.as_ref()
    }
}

fn smooth(avg: &BTreeMap<u32, f64>, raw: &BTreeMap<u32, f64>, alpha: f64) -> BTreeMap<u32, f64> {
    raw.iter().map(|(i, r)| (*i, ewma(avg.get(i).copied().unwrap_or(0.0), *r, alpha))).collect()
}

/// The EWMA weight of a sample `dt` seconds after the previous one: `1 − e^(−dt/τ)`.
pub fn smoothing_factor(dt: f64, tau: Duration) -> f64 {
    if tau.is_zero() { 1.0 } else { 1.0 - (-dt / tau.as_secs_f64()).exp() }
}

/// One EWMA step.
pub fn ewma(avg: f64, x: f64, alpha: f64) -> f64 {
    avg + alpha * (x - avg)
}

/// One step of a rate's smoothing, `dt` seconds after the last: an EWMA step, except that
/// a rise beyond noise ([`STEP`], [`STEP_SIGMAS`]) is taken at once (a flash crowd is seen
/// within one interval, and the average does not lag behind it for the following ones).
/// Falls are always smoothed: flows come home slowly.
pub fn follow(avg: f64, x: f64, alpha: f64, dt: f64) -> f64 {
    let noise = STEP_SIGMAS / (x * dt).max(1.0).sqrt();
    if x > avg * (1.0 + STEP.max(noise)) { x } else { ewma(avg, x, alpha) }
}

/// Raw rates between two readings `dt` seconds apart. A counter that went backwards (the
/// data path was replaced with fresh maps) reads as 0 for this interval.
fn rates(a: &Reading, b: &Reading, dt: f64) -> Rates {
    let mut r = Rates::default();
    for (i, now) in &b.snapshot.sites {
        let before = a.snapshot.sites.get(i).copied().unwrap_or_default();
        let d = |x: u64, y: u64| x.saturating_sub(y) as f64 / dt;
        let local = d(now.local_packets, before.local_packets);
        let forwarded = d(now.forwarded_packets, before.forwarded_packets);
        let received = d(now.received_packets, before.received_packets);
        r.offered += local + forwarded;
        r.received += received;
        r.served += local + received;
        r.forwarded.insert(*i, forwarded);
    }
    r.cpu = match (&a.cpu, &b.cpu) {
        (Some(a), Some(b)) => b.utilisation(a),
        _ => None,
    };
    r.vips = b.snapshot.vip_rates(&a.snapshot);
    r.recent = policy::Rates { offered: r.offered, received: r.received, served: r.served };
    r
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use anycast_common::SiteCounters;

    use super::*;

    fn reading(at: Instant, local: u64, forwarded: u64, received: u64, cpu: CpuTimes) -> Reading {
        let site = |l, f, r| SiteCounters {
            local_packets: l,
            forwarded_packets: f,
            received_packets: r,
            ..Default::default()
        };
        Reading {
            snapshot: Snapshot {
                at,
                sites: [(0, site(local, 0, received)), (1, site(0, forwarded, 0))].into(),
                vips: Default::default(),
                exceptions: [0; anycast_common::counters::EXCEPTION_SLOTS as usize],
                events: [0; anycast_common::Event::COUNT as usize],
            },
            cpu: Some(cpu),
        }
    }

    #[test]
    fn cpu_is_the_busiest_cores_softirq_without_steal() {
        let stat = "cpu  100 10 50 800 40 5 20 3 7 0\ncpu0 1 2 3 4 5 6 7 8 9 0\ncpu1 10 0 0 80 0 0 10 100 0 0\n\
                    ctxt 1\nbtime 1\nprocesses 1\nprocs_running 1\nprocs_blocked 0\n";
        let t = CpuTimes::parse(stat).unwrap();
        assert_eq!(t.cores, [(7, 28), (10, 100)]);
        assert_eq!(CpuTimes::parse("intr 1 2 3\n"), None);
        // Core 1 spent half its (non-stolen) time in softirq since: that is the figure,
        // whatever core 0 and the stolen time did.
        let later = CpuTimes { cores: vec![(8, 128), (60, 200)] };
        assert_eq!(later.utilisation(&t), Some(0.5));
    }

    #[test]
    fn rates_and_ewma() {
        let t0 = Instant::now();
        let mut m = Meter::new(Duration::from_secs(1));
        assert!(m.update(reading(t0, 0, 0, 0, CpuTimes { cores: vec![(0, 0)] })).is_none());
        // First interval: no smoothing yet.
        let t1 = t0 + Duration::from_millis(500);
        let r = m.update(reading(t1, 300, 200, 100, CpuTimes { cores: vec![(25, 100)] })).unwrap().clone();
        assert_eq!((r.offered, r.received, r.served), (1000.0, 200.0, 800.0));
        assert_eq!(r.cpu, Some(0.25));
        assert_eq!(r.forwarded[&1], 400.0);
        // Second interval at 1.1 times the rates (within the noise of 550 packets: 4 √550 /
        // 550 = 17 %): moves by α = 1 − e^−0.5 ≈ 0.393 of the way.
        let t2 = t1 + Duration::from_millis(500);
        let r = m.update(reading(t2, 630, 420, 210, CpuTimes { cores: vec![(125, 200)] })).unwrap().clone();
        let alpha = 1.0 - (-0.5f64).exp();
        assert!((r.offered - (1000.0 + alpha * 100.0)).abs() < 1e-9);
        assert!((r.cpu.unwrap() - (0.25 + alpha * 0.75)).abs() < 1e-9);
        // Third at twice the first's: a step beyond noise, taken at once.
        let t3 = t2 + Duration::from_millis(500);
        let r = m.update(reading(t3, 1230, 820, 410, CpuTimes { cores: vec![(225, 300)] })).unwrap().clone();
        assert_eq!((r.offered, r.received, r.served), (2000.0, 400.0, 1600.0));
        // And back to the first's: smoothed (flows come home slowly).
        let t4 = t3 + Duration::from_millis(500);
        let r = m.update(reading(t4, 1530, 1020, 510, CpuTimes { cores: vec![(325, 400)] })).unwrap();
        assert!((r.offered - (2000.0 - alpha * 1000.0)).abs() < 1e-9);
    }

    #[test]
    fn counters_reset_read_as_zero_not_as_a_huge_rate() {
        let t0 = Instant::now();
        let mut m = Meter::new(Duration::ZERO);
        m.update(reading(t0, 1_000_000, 0, 0, CpuTimes::default()));
        let r = m.update(reading(t0 + Duration::from_secs(1), 10, 0, 0, CpuTimes::default())).unwrap();
        assert_eq!(r.offered, 0.0);
        assert_eq!(r.cpu, None);
    }
}
