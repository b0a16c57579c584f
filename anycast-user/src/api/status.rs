//! `GET /status` (and `anycast status` without a daemon): the published views and one
//! counter snapshot, assembled into the [`Status`] the CLI prints.

use crate::{
    config::{Encap, SiteKind},
    datapath::counters::{Samples, Snapshot},
    model::{
        BgpView, DataPathView, NextHops, SteeringView,
        status::{SiteStatus, Status, VipStatus},
    },
};

/// The version string of this build: the crate version and the git revision it was built
/// from (build.rs), e.g. `0.1.0 (3f2c1ab)`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ANYCAST_GIT_REVISION"), ")");

pub fn build(
    dp: &DataPathView,
    steering: &SteeringView,
    snap: &Snapshot,
    samples: &Samples,
    next_hops: &NextHops,
    bgp: Option<&BgpView>,
) -> Status {
    let (site_pps, vip_pps) = match (&samples.previous, &samples.last) {
        (Some(a), Some(b)) => (b.site_rates(a), b.vip_rates(a)),
        _ => Default::default(),
    };
    let sites = dp
        .config
        .sites
        .iter()
        .zip(&dp.sites)
        .map(|(s, (_, index))| {
            let c = snap.sites.get(index).copied().unwrap_or_default();
            let (role, endpoint, encap) = match s.kind {
                SiteKind::Local => ("local", None, "-"),
                SiteKind::Remote { endpoint, encap } => (
                    "remote",
                    Some(endpoint.to_string()),
                    match encap {
                        Encap::Ip => "ip",
                        Encap::Gue { .. } => "gue",
                    },
                ),
            };
            SiteStatus {
                name: s.name.clone(),
                index: *index,
                role: role.into(),
                endpoint,
                encap: encap.into(),
                state: if dp.drained.contains(&s.name) {
                    "drained"
                } else if dp.down.contains(&s.name) {
                    "down"
                } else {
                    "up"
                }
                .into(),
                weight: dp.weights.get(&s.name).copied().unwrap_or(0),
                configured_weight: s.configured_weight(),
                load: steering.sites.get(&s.name).and_then(|v| v.load_ratio),
                pps: site_pps.get(index).copied().unwrap_or(0.0),
                local_packets: c.local_packets,
                forwarded_packets: c.forwarded_packets,
                received_packets: c.received_packets,
            }
        })
        .collect();
    let vips = dp
        .config
        .vips
        .iter()
        .zip(&dp.vips)
        .map(|(v, (_, index))| VipStatus {
            name: v.name.clone(),
            index: *index,
            sites: v.sites.clone(),
            packets: snap.vips.get(index).map_or(0, |c| c.packets),
            pps: vip_pps.get(index).copied().unwrap_or(0.0),
        })
        .collect();
    Status {
        interfaces: dp.config.local.interfaces.clone(),
        flow_entries: samples.flow_entries,
        flow_capacity: dp.flow_capacity,
        checked_buckets: dp.checked_buckets,
        sites,
        vips,
        drops: snap
            .exceptions
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, &n)| {
                let (e, a) = anycast_common::counters::exception_slot(i as u32);
                (format!("{}/{}", e.name(), a.name()), n)
            })
            .collect(),
        overloaded: steering.overloaded,
        no_headroom: steering.no_headroom,
        version: VERSION.to_owned(),
        attached: dp.attached,
        reload: dp.reload.clone(),
        next_hops: next_hops.clone(),
        bgp: bgp.map(|b| b.routes(std::time::SystemTime::now())).unwrap_or_default(),
        host: steering.report.as_ref().and_then(|r| r.host.clone()),
        deciding_host: steering.deciding_host.clone(),
    }
}
