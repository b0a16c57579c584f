//! Host checks the daemon makes before it starts (and `anycast doctor` reports).
//!
//! Forwarding: the data path sends a packet to another site with `bpf_fib_lookup`, which
//! answers FWD_DISABLED unless the packet's *ingress* interface forwards
//! (`net.ipv4.conf.<if>.forwarding`, `net.ipv6.conf.<if>.forwarding`: kernel
//! `bpf_ipv4_fib_lookup` / `bpf_ipv6_fib_lookup`). The program then hands the packet to
//! the local stack and counts `fib_failed`: every flow meant for the remote site silently
//! stays here. Most hosts do not forward by default.

use std::net::IpAddr;

use crate::config::{Config, SiteKind};

/// One missing prerequisite and its fix.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub problem: String,
    pub fix: String,
}

/// `net.<family>.conf.<iface>.forwarding`, or None when it cannot be read (no such
/// interface, IPv6 disabled).
pub fn forwarding(iface: &str, v6: bool) -> Option<bool> {
    let family = if v6 { "ipv6" } else { "ipv4" };
    let path = format!("/proc/sys/net/{family}/conf/{iface}/forwarding");
    std::fs::read_to_string(path).ok().map(|v| v.trim() != "0")
}

/// The interfaces that do not forward the families the remote sites need.
pub fn forwarding_findings(config: &Config) -> Vec<Finding> {
    let needs = |v6: bool| {
        config
            .sites
            .iter()
            .any(|s| matches!(s.kind, SiteKind::Remote { endpoint, .. } if matches!(endpoint, IpAddr::V6(_)) == v6))
    };
    let mut out = Vec::new();
    for v6 in [false, true].into_iter().filter(|&v6| needs(v6)) {
        let family = if v6 { "ipv6" } else { "ipv4" };
        for iface in &config.local.interfaces {
            if forwarding(iface, v6) == Some(false) {
                out.push(Finding {
                    problem: format!(
                        "{iface} does not forward {family}: packets it receives for a remote site cannot be \
                         sent on (bpf_fib_lookup answers FWD_DISABLED), so they are served here instead (counted \
                         as fib_failed)"
                    ),
                    fix: format!("sysctl -w net.{family}.conf.{iface}.forwarding=1 (and persist it in /etc/sysctl.d/)"),
                });
            }
        }
    }
    out
}
