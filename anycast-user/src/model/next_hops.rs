//! What the neighbour keeper found last: every remote site's next hops and whether the
//! kernel holds them resolved (`bpf_fib_lookup` forwards only through resolved ones).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NextHops {
    /// How they are kept resolved: "managed" (by the kernel: managed neighbour entries),
    /// "refresh" (by the controller, every sweep: kernels without managed entries) or
    /// "off" (by someone else; only reported).
    pub mode: String,
    pub hops: Vec<NextHop>,
    /// Sweeps since the start (0: none yet).
    pub sweeps: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHop {
    pub site: String,
    /// The site's tunnel endpoint.
    pub endpoint: IpAddr,
    /// The neighbour: the route's gateway, or the endpoint itself on the link; `None`
    /// when there is no route.
    pub address: Option<IpAddr>,
    /// The interface the route leaves by ("-" without a route).
    pub dev: String,
    /// The kernel's NUD state ("REACHABLE", "FAILED", ...), "no entry" or "no route".
    pub state: String,
    /// The entry is usable by `bpf_fib_lookup` (NUD_VALID).
    pub resolved: bool,
    /// The kernel keeps it resolved by itself (a managed entry).
    pub managed: bool,
}

#[cfg(test)]
impl NextHop {
    /// A managed hop of site `ams` that the kernel could not resolve, for the views' tests.
    pub fn failed_example() -> NextHop {
        NextHop {
            site: "ams".into(),
            endpoint: "10.0.0.2".parse().unwrap(),
            address: Some("10.9.0.1".parse().unwrap()),
            dev: "eth1".into(),
            state: "FAILED".into(),
            resolved: false,
            managed: true,
        }
    }
}

impl NextHops {
    pub fn unresolved(&self) -> impl Iterator<Item = &NextHop> {
        self.hops.iter().filter(|h| !h.resolved)
    }
}
