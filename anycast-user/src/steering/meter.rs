//! The local load signal: packet rates from the data path's counters and the host's CPU
//! utilisation, each smoothed by an exponentially weighted moving average.
//!
//! - offered  = Σ over sites of (local + forwarded) packets/s: clients' packets for our VIPs
//! - received = Σ over sites of received packets/s: what siblings tunnel to us
//! - served   = local + received packets/s: what this host's services answer
//! - cpu      = Δbusy / Δtotal from the first line of /proc/stat, where busy counts user,
//!   nice, system, irq, softirq (XDP and the stack's receive path run there) and steal.
//!
//! EWMA with a time constant τ: `x̄ += α (x − x̄)`, `α = 1 − e^(−Δt/τ)`, so irregular
//! sampling intervals weigh correctly and τ = 0 means no smoothing.

use std::{collections::BTreeMap, time::Duration};

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
}

/// CPU time counters of /proc/stat's `cpu` line, in USER_HZ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

impl From<&procfs::CpuTime> for CpuTimes {
    /// Busy: user, nice, system, irq, softirq, steal (guest time is already inside user and
    /// nice, proc(5)); idle and iowait complete the total.
    fn from(t: &procfs::CpuTime) -> CpuTimes {
        let o = |v: Option<u64>| v.unwrap_or(0);
        let busy = t.user + t.nice + t.system + o(t.irq) + o(t.softirq) + o(t.steal);
        CpuTimes { busy, total: busy + t.idle + o(t.iowait) }
    }
}

impl CpuTimes {
    /// The host's times now (procfs reads /proc/stat).
    pub fn read() -> Option<CpuTimes> {
        use procfs::CurrentSI as _;
        procfs::KernelStats::current().ok().map(|k| CpuTimes::from(&k.total))
    }

    /// The times of a /proc/stat text.
    pub fn parse(stat: &str) -> Option<CpuTimes> {
        use procfs::FromBufReadSI as _;
        let k = procfs::KernelStats::from_buf_read(stat.as_bytes(), procfs::current_system_info()).ok()?;
        Some(CpuTimes::from(&k.total))
    }

    fn utilisation(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        (total > 0).then(|| self.busy.saturating_sub(earlier.busy) as f64 / total as f64)
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
                offered: ewma(s.offered, raw.offered, alpha),
                received: ewma(s.received, raw.received, alpha),
                served: ewma(s.served, raw.served, alpha),
                cpu: match (s.cpu, raw.cpu) {
                    (Some(a), Some(b)) => Some(ewma(a, b, alpha)),
                    (_, b) => b,
                },
                forwarded: raw
                    .forwarded
                    .iter()
                    .map(|(i, r)| (*i, ewma(s.forwarded.get(i).copied().unwrap_or(0.0), *r, alpha)))
                    .collect(),
            },
        };
        self.smoothed = Some(smoothed);
        self.smoothed.as_ref()
    }
}

/// The EWMA weight of a sample `dt` seconds after the previous one: `1 − e^(−dt/τ)`.
pub fn smoothing_factor(dt: f64, tau: Duration) -> f64 {
    if tau.is_zero() { 1.0 } else { 1.0 - (-dt / tau.as_secs_f64()).exp() }
}

/// One EWMA step.
pub fn ewma(avg: f64, x: f64, alpha: f64) -> f64 {
    avg + alpha * (x - avg)
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
    r.cpu = match (a.cpu, b.cpu) {
        (Some(a), Some(b)) => b.utilisation(&a),
        _ => None,
    };
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
    fn proc_stat_busy_includes_irq_and_softirq() {
        let stat = "cpu  100 10 50 800 40 5 20 3 7 0\ncpu0 1 2 3 4 5 6 7 8 9 0\nctxt 1\nbtime 1\nprocesses 1\n\
                    procs_running 1\nprocs_blocked 0\n";
        assert_eq!(CpuTimes::parse(stat), Some(CpuTimes { busy: 188, total: 1028 }));
        assert_eq!(CpuTimes::parse("intr 1 2 3\n"), None);
    }

    #[test]
    fn rates_and_ewma() {
        let t0 = Instant::now();
        let mut m = Meter::new(Duration::from_secs(1));
        assert!(m.update(reading(t0, 0, 0, 0, CpuTimes { busy: 0, total: 0 })).is_none());
        // First interval: no smoothing yet.
        let t1 = t0 + Duration::from_millis(500);
        let r = m.update(reading(t1, 300, 200, 100, CpuTimes { busy: 25, total: 100 })).unwrap().clone();
        assert_eq!((r.offered, r.received, r.served), (1000.0, 200.0, 800.0));
        assert_eq!(r.cpu, Some(0.25));
        assert_eq!(r.forwarded[&1], 400.0);
        // Second interval at twice the rates: moves by α = 1 − e^−0.5 ≈ 0.393 of the way.
        let t2 = t1 + Duration::from_millis(500);
        let r = m.update(reading(t2, 900, 600, 300, CpuTimes { busy: 125, total: 200 })).unwrap();
        let alpha = 1.0 - (-0.5f64).exp();
        assert!((r.offered - (1000.0 + alpha * 1000.0)).abs() < 1e-9);
        assert!((r.cpu.unwrap() - (0.25 + alpha * 0.75)).abs() < 1e-9);
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
