//! Prometheus exposition (`GET /metrics`, text format 0.0.4) with `prometheus-client`.
//!
//! The data path's counters live in per-CPU maps. They are read and summed at scrape time
//! into a [`Scrape`], which a custom [`Collector`] encodes as counters: the values are the
//! kernel's, never re-counted in userspace, so a controller restart does not reset them
//! (they are pinned) and nothing is lost between scrapes.

use std::{collections::BTreeMap, fmt};

use anycast_common::{
    Event, SiteCounters, VipCounters,
    counters::{EXCEPTION_SLOTS, exception_slot},
};

use crate::model::{BgpView, NextHops, ReloadOutcome, Route, SteeringView};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, prometheus_text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

pub use prometheus_text::CONTENT_TYPE;

/// Everything one scrape exposes, read beforehand.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    /// Site name → counters and effective weight.
    pub sites: BTreeMap<String, (SiteCounters, u32)>,
    pub vips: BTreeMap<String, VipCounters>,
    /// By [`exception_index`](anycast_common::counters::exception_index) (all
    /// [`EXCEPTION_SLOTS`] of them; missing ones read as 0).
    pub exceptions: Vec<u64>,
    /// In [`Event::ALL`] order.
    pub events: Vec<u64>,
    pub flow_entries: u64,
    pub flow_capacity: u64,
    /// Local Maglev buckets flagged `MAGLEV_CHECK`, over every VIP.
    pub checked_buckets: u64,
    pub process: Process,
    /// The steering task's view: per-site health and load, and the policy's flags.
    pub steering: SteeringView,
    /// The BGP speaker's view; `None` when the daemon does not drive BGP.
    pub bgp: Option<BgpView>,
    /// The last reload's outcome; `None` before the first.
    pub reload: Option<ReloadOutcome>,
    /// The neighbour keeper's last sweep.
    pub next_hops: NextHops,
    /// Per listener: connections open now and refused since the start.
    pub listeners: Vec<ListenerCounts>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ListenerCounts {
    /// `metrics`, `peer` or `admin`.
    pub name: &'static str,
    pub open: u64,
    pub refused: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Process {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub start_time_seconds: f64,
}

impl Process {
    /// This process's figures from /proc/self (prometheus-client has no process
    /// collector); zeros where /proc cannot be read.
    pub fn read() -> Process {
        let Ok(me) = procfs::process::Process::myself() else { return Process::default() };
        let ticks = procfs::ticks_per_second().max(1) as f64;
        let boot = procfs::boot_time_secs().unwrap_or(0) as f64;
        let stat = me.stat().ok();
        let limits = me.limits().ok();
        Process {
            resident_bytes: me.statm().map_or(0, |m| m.resident * procfs::page_size()),
            virtual_bytes: stat.as_ref().map_or(0, |s| s.vsize),
            cpu_seconds: stat.as_ref().map_or(0.0, |s| (s.utime + s.stime) as f64 / ticks),
            open_fds: me.fd_count().unwrap_or(0) as u64,
            max_fds: limits
                .and_then(|l| match l.max_open_files.soft_limit {
                    procfs::process::LimitValue::Value(v) => Some(v),
                    procfs::process::LimitValue::Unlimited => None,
                })
                .unwrap_or(0),
            start_time_seconds: stat.map_or(0.0, |s| boot + s.starttime as f64 / ticks),
        }
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let actions = |c: &SiteCounters| {
            [
                ("local", c.local_packets, c.local_bytes),
                ("forwarded", c.forwarded_packets, c.forwarded_bytes),
                ("received", c.received_packets, c.received_bytes),
            ]
        };
        {
            let mut m = enc.encode_descriptor(
                "anycast_site_packets",
                "Packets per site and action: local (passed to this host's stack), forwarded (encapsulated to the site), received (decapsulated from the site)",
                None,
                MetricType::Counter,
            )?;
            for (site, (c, _)) in &self.sites {
                for (action, packets, _) in actions(c) {
                    ConstCounter::new(packets)
                        .encode(m.encode_family(&[("site", site.as_str()), ("action", action)])?)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "anycast_site_bytes",
                "Bytes per site and action (frames as received; forwarded counts the original frame)",
                None,
                MetricType::Counter,
            )?;
            for (site, (c, _)) in &self.sites {
                for (action, _, bytes) in actions(c) {
                    ConstCounter::new(bytes)
                        .encode(m.encode_family(&[("site", site.as_str()), ("action", action)])?)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "anycast_vip_packets",
                "Packets matched per VIP",
                None,
                MetricType::Counter,
            )?;
            for (vip, c) in &self.vips {
                ConstCounter::new(c.packets).encode(m.encode_family(&[("vip", vip.as_str())])?)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "anycast_vip_bytes",
                "Bytes matched per VIP",
                None,
                MetricType::Counter,
            )?;
            for (vip, c) in &self.vips {
                ConstCounter::new(c.bytes).encode(m.encode_family(&[("vip", vip.as_str())])?)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "anycast_exceptions",
                "Packets for a VIP or a tunnel address that left the normal path, each counted once: why (reason) and what the data path did (action = pass to the local stack, drop, tx a reply); docs/datapath.md",
                None,
                MetricType::Counter,
            )?;
            for i in 0..EXCEPTION_SLOTS {
                let n = self.exceptions.get(i as usize).copied().unwrap_or(0);
                let (e, a) = exception_slot(i);
                ConstCounter::new(n)
                    .encode(m.encode_family(&[("reason", e.name()), ("action", a.name())])?)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "anycast_datapath_events",
                "Things the data path counts that do not change a packet's path (flows pinned, embryos written, the second chance taken, replies suppressed, ...); docs/datapath.md",
                None,
                MetricType::Counter,
            )?;
            for (i, e) in Event::ALL.iter().enumerate() {
                let n = self.events.get(i).copied().unwrap_or(0);
                ConstCounter::new(n).encode(m.encode_family(&[("event", e.name())])?)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "anycast_site_weight",
                "Maglev weight of each site for new flows (0 = drained)",
                None,
                MetricType::Gauge,
            )?;
            for (site, (_, w)) in &self.sites {
                ConstGauge::new(*w as i64).encode(m.encode_family(&[("site", site.as_str())])?)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "anycast_site_up",
                "Whether the site passes its health checks (probe through the data path and its peer API); 0 = no new flows and its flows re-steered",
                None,
                MetricType::Gauge,
            )?;
            for (site, v) in &self.steering.sites {
                ConstGauge::new(v.up as i64).encode(m.encode_family(&[("site", site.as_str())])?)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "anycast_site_load_ratio",
                "Smoothed utilisation of each site: served packets/s over capacity (or host CPU, if higher); measured here for the local site, reported by the others (absent when unknown)",
                None,
                MetricType::Gauge,
            )?;
            for (site, v) in &self.steering.sites {
                if let Some(load) = v.load_ratio {
                    ConstGauge::new(load).encode(m.encode_family(&[("site", site.as_str())])?)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "anycast_site_probe_packets",
                "Health probes each site sent us through the tunnel (not counted as received traffic)",
                None,
                MetricType::Counter,
            )?;
            for (site, (c, _)) in &self.sites {
                ConstCounter::new(c.probe_packets).encode(m.encode_family(&[("site", site.as_str())])?)?;
            }
        }
        let v = &self.steering;
        let deciding =
            v.deciding_host.is_none() || v.deciding_host == v.report.as_ref().and_then(|r| r.host.clone());
        let flags: [(&str, &str, bool); 3] = [
            (
                "anycast_deciding",
                "1 while this host decides its site's weights (always, in a site of one host)",
                deciding,
            ),
            (
                "anycast_overloaded",
                "1 while the local site's smoothed load is above the high watermark",
                v.overloaded,
            ),
            (
                "anycast_no_headroom",
                "1 while the local site is overloaded and the sibling sites cannot take what it would shed",
                v.no_headroom,
            ),
        ];
        for (name, help, on) in flags {
            ConstGauge::new(on as i64).encode(enc.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        ConstCounter::new(v.weight_changes).encode(enc.encode_descriptor(
            "anycast_weight_changes",
            "Weight sets applied by the steering task (load policy or health)",
            None,
            MetricType::Counter,
        )?)?;
        let gauges: [(&str, &str, i64); 3] = [
            ("anycast_flow_table_entries", "Entries in the flow table", self.flow_entries as i64),
            ("anycast_flow_table_capacity", "Capacity of the flow table", self.flow_capacity as i64),
            (
                "anycast_maglev_checked_buckets",
                "Local Maglev buckets, over every VIP, whose mid-flow TCP packets look up the flow table (MAGLEV_CHECK: remote lately, or holding pins to other sites)",
                self.checked_buckets as i64,
            ),
        ];
        for (name, help, v) in gauges {
            ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        {
            let mut m = enc.encode_descriptor(
                "anycast_peer_reports_refused",
                "Sibling load reports refused, by site and reason (signature, replay, stale, invalid, site); a refused report changes nothing",
                None,
                MetricType::Counter,
            )?;
            for (site, reasons) in &v.refused {
                for (reason, n) in reasons {
                    ConstCounter::new(*n)
                        .encode(m.encode_family(&[("site", site.as_str()), ("reason", reason.as_str())])?)?;
                }
            }
        }
        // Prometheus's own convention for config reloads; 1 before the first.
        ConstGauge::new(self.reload.as_ref().is_none_or(|r| r.ok) as i64).encode(enc.encode_descriptor(
            "anycast_config_last_reload_successful",
            "1 when the last config reload was applied (or none was tried), 0 when it was refused",
            None,
            MetricType::Gauge,
        )?)?;
        if let Some(r) = &self.reload {
            ConstGauge::new(r.at as i64).encode(enc.encode_descriptor(
                "anycast_config_last_reload_timestamp_seconds",
                "When the last config reload was tried, since the Unix epoch",
                None,
                MetricType::Gauge,
            )?)?;
        }
        {
            let mut m =
                enc.encode_descriptor("anycast_build_info", "Controller version", None, MetricType::Gauge)?;
            ConstGauge::new(1).encode(m.encode_family(&[
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", env!("ANYCAST_GIT_REVISION")),
            ])?)?;
        }
        // A running controller has migrated whatever it found (docs/controller.md,
        // "Upgrades"): the data path's maps are this build's layout.
        ConstGauge::new(anycast_common::maps::LAYOUT_VERSION as i64).encode(enc.encode_descriptor(
            "anycast_datapath_layout_version",
            "Layout version of the data path's pinned maps (anycast_common::maps::LAYOUT_VERSION)",
            None,
            MetricType::Gauge,
        )?)?;
        {
            let mut m = enc.encode_descriptor(
                "anycast_next_hop_resolved",
                "1 when the kernel holds the next hop towards a remote site resolved (bpf_fib_lookup forwards only through resolved ones); address and dev are \"-\" without a route",
                None,
                MetricType::Gauge,
            )?;
            for h in &self.next_hops.hops {
                let address = h.address.map_or("-".to_owned(), |a| a.to_string());
                ConstGauge::new(h.resolved as i64).encode(m.encode_family(&[
                    ("site", h.site.as_str()),
                    ("address", address.as_str()),
                    ("dev", h.dev.as_str()),
                ])?)?;
            }
        }
        ConstGauge::new(self.next_hops.unresolved().count() as i64).encode(enc.encode_descriptor(
            "anycast_next_hops_unresolved",
            "Next hops towards remote sites the kernel does not hold resolved: forwarding to them fails",
            None,
            MetricType::Gauge,
        )?)?;
        {
            let mut m = enc.encode_descriptor(
                "anycast_listener_connections",
                "Connections open now on each listener (metrics: [admin] listen, peer: [admin] peer_listen, admin: [admin] socket)",
                None,
                MetricType::Gauge,
            )?;
            for l in &self.listeners {
                ConstGauge::new(l.open as i64).encode(m.encode_family(&[("listener", l.name)])?)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "anycast_listener_refused",
                "Connections a listener closed as soon as it accepted them: it was full, or that source (an address; a uid on the admin socket) had its share",
                None,
                MetricType::Counter,
            )?;
            for l in &self.listeners {
                ConstCounter::new(l.refused).encode(m.encode_family(&[("listener", l.name)])?)?;
            }
        }
        let p = self.process;
        ConstGauge::new(p.resident_bytes as i64).encode(enc.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(p.cpu_seconds).encode(enc.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(p.virtual_bytes as i64).encode(enc.encode_descriptor(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(p.open_fds as i64).encode(enc.encode_descriptor(
            "process_open_fds",
            "Number of open file descriptors",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(p.max_fds as i64).encode(enc.encode_descriptor(
            "process_max_fds",
            "Maximum number of open file descriptors",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(p.start_time_seconds).encode(enc.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

impl Collector for BgpView {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        {
            let mut m = enc.encode_descriptor(
                "anycast_bgp_state",
                "What BGP is told about each VIP route (1 for the current state): announce, deprefer (MED / AS path prepend), withdraw",
                None,
                MetricType::Gauge,
            )?;
            for (vip, (current, _)) in &self.vips {
                for r in Route::ALL {
                    ConstGauge::new((r == *current) as i64)
                        .encode(m.encode_family(&[("vip", vip.as_str()), ("state", r.name())])?)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "anycast_bgp_transitions",
                "Transitions of each VIP route into each state since the controller started",
                None,
                MetricType::Counter,
            )?;
            for (vip, (_, into)) in &self.vips {
                for r in Route::ALL {
                    ConstCounter::new(into.get(&r).copied().unwrap_or(0))
                        .encode(m.encode_family(&[("vip", vip.as_str()), ("to", r.name())])?)?;
                }
            }
        }
        ConstCounter::new(self.apply_failures).encode(enc.encode_descriptor(
            "anycast_bgp_apply_failures",
            "Include-file writes or `birdc configure` runs that failed (retried every interval)",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(self.in_sync as i64).encode(enc.encode_descriptor(
            "anycast_bgp_in_sync",
            "1 when BIRD confirmed the routes of the current states",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

/// Renders one scrape in the Prometheus text format.
pub fn render(scrape: Scrape) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    if let Some(bgp) = scrape.bgp.clone() {
        registry.register_collector(Box::new(bgp));
    }
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SiteView;

    fn sample() -> Scrape {
        let mut s = Scrape::default();
        s.sites.insert(
            "fra".into(),
            (
                SiteCounters {
                    local_packets: 7,
                    local_bytes: 700,
                    forwarded_packets: 0,
                    forwarded_bytes: 0,
                    received_packets: 3,
                    received_bytes: 300,
                    probe_packets: 0,
                },
                1000,
            ),
        );
        s.sites.insert(
            "ams".into(),
            (SiteCounters { forwarded_packets: 5, forwarded_bytes: 500, ..Default::default() }, 0),
        );
        s.vips.insert("dns".into(), VipCounters { packets: 12, bytes: 1200 });
        s.exceptions = vec![0; EXCEPTION_SLOTS as usize];
        s.exceptions[anycast_common::counters::exception_index(
            anycast_common::Exception::Truncated,
            anycast_common::Action::Pass,
        ) as usize] = 2;
        s.flow_entries = 4;
        s.flow_capacity = 262144;
        s.process = Process::read();
        s.listeners.push(ListenerCounts { name: "peer", open: 8, refused: 72 });
        s.steering.sites.insert("fra".into(), SiteView { up: true, load_ratio: Some(0.5) });
        s.steering.sites.insert("ams".into(), SiteView { up: false, load_ratio: None });
        s.steering.no_headroom = true;
        s.steering.weight_changes = 3;
        s.steering.refused.insert("ams".into(), BTreeMap::from([("replay".to_owned(), 2)]));
        s.reload = Some(ReloadOutcome { at: 1_700_000_000, ok: false, message: "line 3: bad".into() });
        s.next_hops.hops.push(crate::model::NextHop::failed_example());
        s
    }

    #[test]
    fn exposes_every_family_with_labels() {
        let text = render(sample()).unwrap();
        for line in [
            "# TYPE anycast_site_packets_total counter",
            "anycast_site_packets_total{site=\"fra\",action=\"local\"} 7",
            "anycast_site_packets_total{site=\"fra\",action=\"received\"} 3",
            "anycast_site_packets_total{site=\"ams\",action=\"forwarded\"} 5",
            "anycast_site_bytes_total{site=\"ams\",action=\"forwarded\"} 500",
            "anycast_vip_packets_total{vip=\"dns\"} 12",
            "anycast_exceptions_total{reason=\"truncated\",action=\"pass\"} 2",
            "anycast_exceptions_total{reason=\"too_big\",action=\"tx\"} 0",
            "anycast_datapath_events_total{event=\"promoted\"} 0",
            "anycast_site_weight{site=\"ams\"} 0",
            "anycast_site_weight{site=\"fra\"} 1000",
            "anycast_flow_table_entries 4",
            "anycast_site_up{site=\"fra\"} 1",
            "anycast_site_up{site=\"ams\"} 0",
            "anycast_site_load_ratio{site=\"fra\"} 0.5",
            "anycast_site_probe_packets_total{site=\"ams\"} 0",
            "anycast_overloaded 0",
            "anycast_no_headroom 1",
            "anycast_weight_changes_total 3",
            "anycast_flow_table_capacity 262144",
            "anycast_peer_reports_refused_total{site=\"ams\",reason=\"replay\"} 2",
            "anycast_config_last_reload_successful 0",
            "anycast_config_last_reload_timestamp_seconds 1700000000",
            "# TYPE process_cpu_seconds_total counter",
            "anycast_listener_connections{listener=\"peer\"} 8",
            "anycast_listener_refused_total{listener=\"peer\"} 72",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        let build = format!(
            "anycast_build_info{{version=\"0.1.0\",revision=\"{}\"}} 1",
            env!("ANYCAST_GIT_REVISION")
        );
        assert!(text.lines().any(|l| l == build), "missing {build:?} in\n{text}");
        assert!(text.lines().any(|l| l == "anycast_datapath_layout_version 2"), "{text}");
        assert!(
            text.lines()
                .any(|l| l == "anycast_next_hop_resolved{site=\"ams\",address=\"10.9.0.1\",dev=\"eth1\"} 0"),
            "{text}"
        );
        assert!(text.lines().any(|l| l == "anycast_next_hops_unresolved 1"), "{text}");
    }

    #[test]
    fn process_stats_are_plausible() {
        let p = Process::read();
        assert!(p.resident_bytes > 1 << 20, "{p:?}");
        assert!(p.open_fds >= 3 && p.max_fds >= p.open_fds, "{p:?}");
        assert!(p.virtual_bytes >= p.resident_bytes, "{p:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(p.start_time_seconds > now - 3600.0 && p.start_time_seconds <= now + 1.0, "{p:?}");
    }
}
