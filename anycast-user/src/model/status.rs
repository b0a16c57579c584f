//! What `anycast status` shows: the daemon serves it as JSON (`GET /status`), the CLI
//! prints it as a table or passes the JSON through (`--json`).

use std::{collections::BTreeMap, fmt::Write};

use serde::{Deserialize, Serialize};

use super::{datapath_view::ReloadOutcome, next_hops::NextHops};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub interfaces: Vec<String>,
    pub flow_entries: u64,
    pub flow_capacity: u64,
    /// Local Maglev buckets flagged `MAGLEV_CHECK` (their TCP packets look up the flow
    /// table), over every VIP.
    #[serde(default)]
    pub checked_buckets: u64,
    pub sites: Vec<SiteStatus>,
    pub vips: Vec<VipStatus>,
    /// Exception counters by reason, non-zero only.
    pub drops: BTreeMap<String, u64>,
    /// The load policy's flags (`[load]`).
    #[serde(default)]
    pub overloaded: bool,
    #[serde(default)]
    pub no_headroom: bool,
    /// The daemon's version and git revision.
    #[serde(default)]
    pub version: String,
    /// The program runs on every configured interface.
    #[serde(default)]
    pub attached: bool,
    /// The last reload's outcome, if any since the start.
    #[serde(default)]
    pub reload: Option<ReloadOutcome>,
    /// The next hops towards the remote sites (the neighbour keeper's last sweep; empty
    /// without a daemon).
    #[serde(default)]
    pub next_hops: NextHops,
    /// The VIP routes as the BGP speaker holds them (empty without `[bgp]` or a daemon).
    #[serde(default)]
    pub bgp: Vec<BgpRouteStatus>,
    /// In a site of several hosts: this host, and the one deciding for the site now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deciding_host: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BgpRouteStatus {
    pub prefix: String,
    /// announce, deprefer, graceful_shutdown or withdraw.
    pub state: String,
    /// In graceful shutdown: seconds until the withdraw.
    pub withdraw_in: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteStatus {
    pub name: String,
    pub index: u32,
    /// "local" or "remote".
    pub role: String,
    pub endpoint: Option<String>,
    /// "ip", "gue" or "-" for the local site.
    pub encap: String,
    /// "up", "down" (failing its health checks) or "drained".
    pub state: String,
    /// Effective Maglev weight (0 when drained).
    pub weight: u32,
    pub configured_weight: u32,
    /// Smoothed utilisation (measured here for the local site, reported by the others).
    #[serde(default)]
    pub load: Option<f64>,
    /// Packets per second over the last sampling interval, all actions.
    pub pps: f64,
    pub local_packets: u64,
    pub forwarded_packets: u64,
    pub received_packets: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipStatus {
    pub name: String,
    pub index: u32,
    pub sites: Vec<String>,
    pub packets: u64,
    pub pps: f64,
}

impl Status {
    /// The first line of `status` and of every `top` refresh.
    pub fn header(&self) -> String {
        let flag = match (self.overloaded, self.no_headroom) {
            (_, true) => "   OVERLOADED, no headroom at any site",
            (true, false) => "   OVERLOADED: shedding new flows",
            _ => "",
        };
        let host = match (&self.host, &self.deciding_host) {
            (Some(me), Some(d)) if me == d => format!("   host {me}, deciding for its site"),
            (Some(me), Some(d)) => format!("   host {me}, installing what {d} decides"),
            _ => String::new(),
        };
        let checked = match self.checked_buckets {
            0 => String::new(),
            n => format!("   checked buckets: {n}"),
        };
        format!(
            "interfaces: {}   flows: {} / {}{checked}{host}{flag}",
            self.interfaces.join(", "),
            self.flow_entries,
            self.flow_capacity
        )
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.header());
        let _ = writeln!(
            out,
            "\n{:<16} {:<7} {:<26} {:<5} {:<8} {:>7} {:>5} {:>10} {:>12} {:>12} {:>12}",
            "SITE",
            "ROLE",
            "ENDPOINT",
            "ENCAP",
            "STATE",
            "WEIGHT",
            "LOAD",
            "PPS",
            "LOCAL",
            "FORWARDED",
            "RECEIVED"
        );
        for s in &self.sites {
            let _ = writeln!(
                out,
                "{:<16} {:<7} {:<26} {:<5} {:<8} {:>7} {:>5} {:>10.1} {:>12} {:>12} {:>12}",
                s.name,
                s.role,
                s.endpoint.as_deref().unwrap_or("-"),
                s.encap,
                s.state,
                s.weight,
                load(s.load),
                s.pps,
                s.local_packets,
                s.forwarded_packets,
                s.received_packets
            );
        }
        let _ = writeln!(out, "\n{:<32} {:>10} {:>12}  SITES", "VIP", "PPS", "PACKETS");
        for v in &self.vips {
            let _ = writeln!(out, "{:<32} {:>10.1} {:>12}  {}", v.name, v.pps, v.packets, v.sites.join(","));
        }
        if !self.next_hops.hops.is_empty() {
            let _ = writeln!(out, "\nnext hops (kept: {}):", self.next_hops.mode);
            for h in &self.next_hops.hops {
                let address = h.address.map_or("-".to_owned(), |a| a.to_string());
                let flag = if h.resolved { "" } else { "   UNRESOLVED: forwarding to this site fails" };
                let _ = writeln!(out, "  {:<16} {:<26} {:<12} {}{flag}", h.site, address, h.dev, h.state);
            }
        }
        if !self.bgp.is_empty() {
            let _ = writeln!(out, "\nBGP:");
            for r in &self.bgp {
                let left = r.withdraw_in.map_or(String::new(), |s| format!(" (withdrawn in {s:.0} s)"));
                let _ = writeln!(out, "  {:<44} {}{left}", r.prefix, r.state);
            }
        }
        if !self.drops.is_empty() {
            let _ = writeln!(out, "\nexceptions:");
            for (reason, n) in &self.drops {
                let _ = writeln!(out, "  {reason:<20} {n}");
            }
        }
        out
    }
}

/// A load ratio as a column: two decimals, `-` when unknown.
pub fn load(ratio: Option<f64>) -> String {
    ratio.map_or("-".to_owned(), |l| format!("{l:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_every_site_vip_and_exception() {
        let site = |name: &str, role: &str, state: &str, weight| SiteStatus {
            name: name.into(),
            index: 0,
            role: role.into(),
            endpoint: (role == "remote").then(|| "10.0.0.2".into()),
            encap: if role == "remote" { "ip" } else { "-" }.into(),
            state: state.into(),
            weight,
            configured_weight: 100,
            load: (role == "local").then_some(0.25),
            pps: 12.5,
            local_packets: 7,
            forwarded_packets: 8,
            received_packets: 9,
        };
        let s = Status {
            interfaces: vec!["eth0".into()],
            flow_entries: 3,
            flow_capacity: 1024,
            checked_buckets: 0,
            sites: vec![site("fra", "local", "up", 100), site("ams", "remote", "drained", 0)],
            vips: vec![VipStatus {
                name: "dns".into(),
                index: 0,
                sites: vec!["fra".into()],
                packets: 5,
                pps: 1.0,
            }],
            drops: BTreeMap::from([("truncated".to_owned(), 2)]),
            overloaded: false,
            no_headroom: false,
            version: "0.1.0 (test)".into(),
            attached: true,
            reload: None,
            next_hops: NextHops {
                mode: "managed".into(),
                hops: vec![crate::model::NextHop::failed_example()],
                sweeps: 1,
            },
            bgp: vec![BgpRouteStatus {
                prefix: "192.0.2.53/32".into(),
                state: "graceful_shutdown".into(),
                withdraw_in: Some(7.2),
            }],
            host: None,
            deciding_host: None,
        };
        let t = s.table();
        assert!(t.starts_with("interfaces: eth0   flows: 3 / 1024\n"), "{t}");
        let ams = t.lines().find(|l| l.starts_with("ams ")).expect(&t);
        let cols: Vec<&str> = ams.split_whitespace().collect();
        assert_eq!(cols, ["ams", "remote", "10.0.0.2", "ip", "drained", "0", "-", "12.5", "7", "8", "9"]);
        let fra = t.lines().find(|l| l.starts_with("fra ")).expect(&t);
        assert_eq!(fra.split_whitespace().nth(6), Some("0.25"), "{t}");
        assert!(
            t.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["dns", "1.0", "5", "fra"]),
            "{t}"
        );
        assert!(t.contains("truncated            2"), "{t}");
        assert!(t.contains("next hops (kept: managed):"), "{t}");
        let hop = t.lines().find(|l| l.trim_start().starts_with("ams ") && l.contains("10.9.0.1")).expect(&t);
        assert_eq!(hop.split_whitespace().take(4).collect::<Vec<_>>(), ["ams", "10.9.0.1", "eth1", "FAILED"]);
        assert!(hop.contains("UNRESOLVED"), "{t}");
        assert!(t.contains("\nBGP:\n"), "{t}");
        let route = t.lines().find(|l| l.trim_start().starts_with("192.0.2.53/32")).expect(&t);
        assert_eq!(
            route.split_whitespace().collect::<Vec<_>>(),
            ["192.0.2.53/32", "graceful_shutdown", "(withdrawn", "in", "7", "s)"]
        );
        let back: Status = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
