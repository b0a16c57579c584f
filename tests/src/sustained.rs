//! Sustained traffic through two anycast sites, for the tests that disturb the controller
//! while packets flow (restart, upgrade, reload: tests/reliability.rs) and the Prometheus
//! test: the topology, the two controllers, and a mix of sequenced UDP streams and
//! long-lived TCP transfers, some served by A itself and some forwarded to B.
//!
//! ```text
//! client c0 10.1.0.2 ⇄ a0 10.1.0.1 [A, VIP on lo] a1 10.2.0.1 ⇄ b0 10.2.0.2 [B, VIP on lo]
//! ```
//!
//! A steers both VIPs (UDP and TCP) over itself and B with equal weights; B decapsulates
//! what A forwards (IPIP) and serves it; B's answers go back to the client through A's
//! kernel (direct server return). Which site a flow goes to is decided by A's Maglev table:
//! the client's source ports are chosen from that table (read through the pins, hashed
//! with the data path's own `flow_hash`) so that every scenario has flows on both sites.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use anycast_common::{FlowKey, addr::Family, site::MAGLEV_SITE};
use anycast_user::{api::client::Method, datapath::maps::Maglev};

use testkit::{
    daemon::Daemon,
    metrics::metric,
    netns::{Netns, Result},
    sequenced::{self, Received, Sender},
    tcp::{self, Connection, Report, Served, Sink},
};

use crate::{admin::AdminApi, reference, topology::ForwardChain};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
pub const UDP_PORT: u16 = 5300;
pub const TCP_PORT: u16 = 5301;
/// The sites' names in the configs (and `site` labels), A first.
pub const SITES: [&str; 2] = ["a", "b"];
/// The backbone between A and B carries the 20 bytes of IPIP on top of the client's
/// 1500-byte packets. (With 1500 the data path would answer full-size TCP segments with
/// ICMP frag-needed by XDP_TX, which a veth delivers only to a peer that runs XDP — the
/// client's does not — and the connection would stall; that path has its own tests.)
const BACKBONE_MTU: u32 = 1600;
/// Sequenced datagrams per second per UDP stream, and a cap that bounds a stream (30 s).
const UDP_RATE: u32 = 1000;
const UDP_MAX: u32 = 30_000;
/// TCP bytes per second per connection, and the longest a transfer may run.
const TCP_RATE: u64 = 128 << 10;
const TCP_MAX: Duration = Duration::from_secs(30);
/// How long a receiver waits for stragglers once its sender has stopped.
const IDLE: Duration = Duration::from_secs(2);

/// The client, A and B, configured (addresses, routes, MTUs) but with no controller yet.
pub fn topology(tag: &str) -> Result<ForwardChain> {
    let chain = ForwardChain::new(tag, &VIP.to_string())?;
    chain.a.add_addr("lo", &format!("{VIP}/32"))?;
    chain.a.set_mtu("a1", BACKBONE_MTU)?;
    chain.b.set_mtu("b0", BACKBONE_MTU)?;
    // B answers the client through A, and asks for A's MAC with an ARP request; by default
    // the request's sender address is the source of the packet that needs it, the VIP,
    // which A holds too and so ignores (a duplicate of its own address). Use the address
    // of the outgoing interface, as every direct-server-return host with the VIP on its
    // loopback does.
    chain.b.sysctl("net/ipv4/conf/all/arp_announce", "2")?;
    // B's answers reach the client through A, the lab's only way back, and A holds the VIP
    // too: its kernel would drop them as martians (a packet from one of its own addresses
    // arriving from outside) unless a1 accepts local sources. Real clients are reached by
    // B's own routes.
    chain.a.sysctl("net/ipv4/conf/a1/accept_local", "1")?;
    Ok(chain)
}

fn vips(served_by: Option<&str>) -> String {
    let sites = served_by.map(|s| format!("sites = [\"{s}\"]\n")).unwrap_or_default();
    format!(
        "\n[[vips]]\nname = \"udp\"\naddress = \"{VIP}\"\nport = {UDP_PORT}\nprotocol = \"udp\"\n{sites}\
         \n[[vips]]\nname = \"tcp\"\naddress = \"{VIP}\"\nport = {TCP_PORT}\nprotocol = \"tcp\"\n{sites}"
    )
}

/// A's config body: both sites, equal weights, both VIPs.
pub fn config_a() -> String {
    r#"[local]
interfaces = ["a0", "a1"]
tunnel_v4 = "10.2.0.1"

[[sites]]
name = "a"
local = true
capacity = 100

[[sites]]
name = "b"
endpoint = "10.2.0.2"
encap = "ip"
capacity = 100
"#
    .to_owned()
        + &vips(None)
}

/// B's config body: it serves the VIPs itself and decapsulates what A sends.
pub fn config_b() -> String {
    r#"[local]
interfaces = ["b0"]
tunnel_v4 = "10.2.0.2"

[[sites]]
name = "b"
local = true
capacity = 100

[[sites]]
name = "a"
endpoint = "10.2.0.1"
encap = "ip"
capacity = 100
"#
    .to_owned()
        + &vips(Some("b"))
}

/// B's peer listener, for [`start_watched`].
pub const B_PEER: &str = "10.2.0.2:9101";
/// `[health]` at A for [`start_watched`]: down after 3 failed probes 250 ms apart.
pub const HEALTH: &str = "\n[health]\ninterval_ms = 250\ntimeout_ms = 200\nrise = 2\nfall = 3\n";

/// [`start`], with A watching B: A probes B through the data path (`[health]`) and polls
/// B's load report (B's `peer_listen`). Returns once A holds B up (a site starts down until
/// it passed its probes) and steers to it.
pub fn start_watched(chain: &ForwardChain) -> (Daemon<'_>, Daemon<'_>) {
    let mut b = Daemon::new(&chain.b).expect("B's daemon");
    b.set_peer_listen(B_PEER.parse().expect("address"));
    b.write_config(&config_b()).expect("B's config");
    b.start().expect("start B's controller");
    let mut a = Daemon::new(&chain.a).expect("A's daemon");
    let config = config_a().replacen(
        "encap = \"ip\"\ncapacity = 100\n",
        &format!("encap = \"ip\"\ncapacity = 100\npeer = \"{B_PEER}\"\n"),
        1,
    ) + HEALTH;
    a.write_config(&config).expect("A's config");
    a.start().expect("start A's controller");
    // Up at A, and its weight in A's tables (the owner applied it: the Maglev tables hold it).
    let weight = |a: &Daemon| metric(&a.get("/metrics").ok()?, r#"anycast_site_weight{site="b"}"#);
    let up = testkit::wait::until(Duration::from_secs(10), || {
        site_up(&a, "b") == Some(1) && weight(&a) == Some(100)
    });
    assert!(up.is_some(), "A never held B up:\n{}", a.log());
    (a, b)
}

/// `anycast_site_up{site}` at `d`.
pub fn site_up(d: &Daemon, site: &str) -> Option<u64> {
    metric(&d.get("/metrics").ok()?, &format!("anycast_site_up{{site=\"{site}\"}}"))
}

/// Starts B's controller, then A's (A redirects into a1, which delivers only once b0 runs
/// XDP). `flow_table_size` for A, if given.
pub fn start<'a>(chain: &'a ForwardChain, flow_table_size: Option<u32>) -> (Daemon<'a>, Daemon<'a>) {
    start_configured(chain, |a| {
        if let Some(n) = flow_table_size {
            a.set_flow_table_size(n);
        }
    })
}

/// [`start`], with `configure` applied to A's daemon before its config is written (its
/// `[datapath]` options).
pub fn start_configured<'a>(
    chain: &'a ForwardChain,
    configure: impl FnOnce(&mut Daemon<'a>),
) -> (Daemon<'a>, Daemon<'a>) {
    let mut b = Daemon::new(&chain.b).expect("B's daemon");
    b.write_config(&config_b()).expect("B's config");
    b.start().expect("start B's controller");
    let mut a = Daemon::new(&chain.a).expect("A's daemon");
    configure(&mut a);
    a.write_config(&config_a()).expect("A's config");
    a.start().expect("start A's controller");
    (a, b)
}

/// A VIP's Maglev table at A, read through the pins: the site of every bucket, as A's
/// steering `hash` picks them.
#[derive(Clone, PartialEq, Eq)]
pub struct Table {
    hash: Steering,
    /// The site index of each bucket (flags masked off).
    sites: Vec<u32>,
    /// The indices of [`SITES`] in A's site table.
    index: [u32; 2],
}

impl Table {
    /// VIP `vip`'s table as A steers by it now.
    pub fn read(a: &Daemon, hash: Steering, vip: &str) -> Table {
        // `/status` as plain JSON (release 0.1.0 serves it on TCP, this build on its admin
        // socket) and the tables through the pinned MAGLEV alone: the same for every release.
        let body = match hash {
            Steering::Current => a.admin(Method::GET, "/status", None).expect("A's /status").1,
            Steering::Release010 => a.get("/status").expect("A's /status"),
        };
        let status: serde_json::Value = serde_json::from_str(&body).expect("/status JSON");
        let slot = |list: &str, name: &str| -> u32 {
            status[list]
                .as_array()
                .and_then(|l| l.iter().find(|e| e["name"] == name))
                .and_then(|e| e["index"].as_u64())
                .unwrap_or_else(|| panic!("{name} in /status {list}: {status}")) as u32
        };
        let maglev =
            Maglev::from_pin(&a.pin_dir().join(anycast_common::maps::MAGLEV)).expect("A's pinned MAGLEV");
        let table = maglev.table(slot("vips", vip)).expect("Maglev map").expect("a Maglev table");
        let sites = match hash {
            Steering::Current => table.iter().map(|e| e & MAGLEV_SITE).collect(),
            Steering::Release010 => table,
        };
        Table { hash, sites, index: SITES.map(|name| slot("sites", name)) }
    }

    /// Which of [`SITES`] the bucket of `key` names (`None`: another site, or none).
    pub fn site(&self, key: &FlowKey) -> Option<usize> {
        match self.hash {
            Steering::Current => self.site_of_hash(reference::flow_hash(key, &reference::KEY)),
            Steering::Release010 => self.named(reference::v1_bucket(&self.sites, key)),
        }
    }

    /// [`Table::site`] of a flow of flow hash `hash` ([`reference::flow_hash`]), in a table of
    /// this build's steering: for many flows in several tables, each hashed once.
    pub fn site_of_hash(&self, hash: u64) -> Option<usize> {
        assert_eq!(self.hash, Steering::Current, "release 0.1.0 steered by another hash");
        self.named(self.sites[reference::maglev_slot(hash, self.sites.len())])
    }

    /// Buckets in which `other` names another site (all of them, for tables of two sizes).
    pub fn differing(&self, other: &Table) -> usize {
        match self.sites.len() == other.sites.len() {
            true => self.sites.iter().zip(&other.sites).filter(|(a, b)| a != b).count(),
            false => self.sites.len().max(other.sites.len()),
        }
    }

    pub fn buckets(&self) -> usize {
        self.sites.len()
    }

    fn named(&self, site: u32) -> Option<usize> {
        self.index.iter().position(|&i| i == site)
    }
}

/// Client source ports from `first` on whose flows to VIP:`dport` (`proto`) A's Maglev
/// table sends to each site: `n` for A, then `n` for B.
fn ports_by_site(
    a: &Daemon,
    hash: Steering,
    vip: &str,
    proto: u8,
    dport: u16,
    first: u16,
    n: usize,
) -> [Vec<u16>; 2] {
    let table = Table::read(a, hash, vip);
    let mut ports = [Vec::new(), Vec::new()];
    for port in first..=u16::MAX {
        if let Some(i) = table.site(&flow_key(port, dport, proto)) {
            if ports[i].len() < n {
                ports[i].push(port);
            }
        }
        if ports.iter().all(|p| p.len() == n) {
            return ports;
        }
    }
    panic!("no {n} ports from {first} for each site in A's Maglev table");
}

/// The flow table's key of the client's flow from `sport` to VIP:`dport`.
pub fn flow_key(sport: u16, dport: u16, proto: u8) -> FlowKey {
    let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
    src[..4].copy_from_slice(&CLIENT.octets());
    dst[..4].copy_from_slice(&VIP.octets());
    FlowKey { src, dst, sport, dport, proto, family: Family::V4 as u8, pad: [0; 2] }
}

/// What one scenario measured.
pub struct Measured {
    /// Per UDP stream: the site it was steered to, the datagrams sent, and what arrived.
    pub udp: Vec<(&'static str, u32, Received)>,
    /// Every TCP connection, from the client.
    pub tcp: Vec<Report>,
    /// Per site: the connections its TCP service saw.
    pub served: [Vec<Served>; 2],
    /// Per site: the client ports of the TCP connections steered there.
    pub tcp_ports: [Vec<u16>; 2],
}

impl Measured {
    pub fn datagrams_sent(&self) -> u32 {
        self.udp.iter().map(|(_, sent, _)| sent).sum()
    }

    pub fn datagrams_lost(&self) -> usize {
        self.udp.iter().map(|(_, sent, got)| got.missing(*sent).len()).sum()
    }

    pub fn resets(&self) -> usize {
        tcp::resets(&self.tcp).len()
    }

    /// One line of figures for the test's output.
    pub fn summary(&self) -> String {
        let bytes: u64 = self.tcp.iter().map(|r| r.acknowledged).sum();
        let streams: Vec<String> = self.udp.iter().map(|(site, sent, _)| format!("{site} {sent}")).collect();
        format!(
            "UDP: {} datagrams sent ({}), {} lost; TCP: {} connections (A {}, B {}), {} bytes acknowledged, {} reset",
            self.datagrams_sent(),
            streams.join(", "),
            self.datagrams_lost(),
            self.tcp.len(),
            self.tcp_ports[0].len(),
            self.tcp_ports[1].len(),
            bytes,
            self.resets()
        )
    }

    /// Nothing lost, duplicated or reset; every connection served, by the site A's Maglev
    /// table named, and counted there byte for byte.
    pub fn assert_clean(&self, what: &str) {
        for (site, sent, got) in &self.udp {
            let missing = got.missing(*sent);
            assert!(
                *sent > 0 && missing.is_empty() && got.duplicates == 0 && got.foreign == 0,
                "{what}: UDP stream to site {site}: {} of {sent} lost (first: {:?}), {} duplicates, {} foreign",
                missing.len(),
                &missing[..missing.len().min(20)],
                got.duplicates,
                got.foreign
            );
        }
        let resets = tcp::resets(&self.tcp);
        assert!(resets.is_empty(), "{what}: {} TCP connections reset: {resets:#?}", resets.len());
        for (i, site) in SITES.iter().enumerate() {
            let mut seen: Vec<u16> = self.served[i].iter().map(|s| s.peer.port()).collect();
            seen.sort_unstable();
            assert_eq!(seen, self.tcp_ports[i], "{what}: the TCP connections site {site} served");
            for s in &self.served[i] {
                let sent = self.tcp.iter().find(|r| r.local.port() == s.peer.port()).map(|r| r.sent);
                assert!(
                    s.clean && Some(s.bytes) == sent,
                    "{what}: site {site} served {s:?}, the client sent {sent:?}"
                );
            }
        }
    }
}

/// Socket `addr` made inside `ns`.
fn udp_socket(ns: &Netns, addr: SocketAddr) -> UdpSocket {
    ns.run(|| UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name()))
}

/// Stops the UDP senders when dropped: a failing step in the middle of the traffic must not
/// leave the test waiting for the streams' caps.
struct StopOnDrop<'a>(&'a [Sender], &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.iter().for_each(Sender::stop);
        self.1.store(true, Ordering::Relaxed);
    }
}

/// The client's flows of a scenario, by the site A steers them to: one UDP stream (or none)
/// and some TCP connections per site (their source ports).
pub struct Flows {
    pub udp: [Vec<u16>; 2],
    pub tcp: [Vec<u16>; 2],
}

/// Whose steering A runs: this build's (the keyed hash, flagged entries) or release
/// 0.1.0's (before an upgrade test migrates it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steering {
    Current,
    Release010,
}

impl Flows {
    /// From A's Maglev tables as they are now.
    pub fn pick(a: &Daemon, tcp_per_site: usize) -> Flows {
        Flows::pick_with(a, Steering::Current, tcp_per_site)
    }

    /// [`Flows::pick`] for A running `steering`.
    pub fn pick_with(a: &Daemon, steering: Steering, tcp_per_site: usize) -> Flows {
        Flows::pick_from(a, steering, tcp_per_site, 0)
    }

    /// [`Flows::pick_with`] from client ports `offset` above the usual ones: a second
    /// scenario on the same sites must not reuse the 4-tuples of the first while their
    /// pins are still in the flow table (docs/datapath.md §6, the port-reuse limitation).
    pub fn pick_from(a: &Daemon, steering: Steering, tcp_per_site: usize, offset: u16) -> Flows {
        let mut tcp = ports_by_site(
            a,
            steering,
            "tcp",
            libc::IPPROTO_TCP as u8,
            TCP_PORT,
            41_000 + offset,
            tcp_per_site,
        );
        tcp.iter_mut().for_each(|p| p.sort_unstable());
        Flows {
            udp: ports_by_site(a, steering, "udp", libc::IPPROTO_UDP as u8, UDP_PORT, 40_000 + offset, 1),
            tcp,
        }
    }

    /// The TCP connections alone: for a scenario that loses packets on purpose (a flood),
    /// which TCP retransmits and a sequenced stream would count as lost.
    pub fn without_udp(self) -> Flows {
        Flows { udp: Default::default(), ..self }
    }
}

/// Runs the `flows` (a sequenced UDP stream and long-lived TCP transfers to each site),
/// lets them flow for `settle`, calls `disturb`, lets them flow for `settle` again, stops
/// them and returns what was measured. `disturb` runs on the caller's thread (a daemon it
/// restarts stays tied to that thread: `PR_SET_PDEATHSIG`).
pub fn under_traffic(
    chain: &ForwardChain,
    flows: Flows,
    settle: Duration,
    disturb: impl FnOnce(),
) -> Measured {
    let vip = |port| SocketAddr::new(IpAddr::V4(VIP), port);
    let from = |port| SocketAddr::new(IpAddr::V4(CLIENT), port);
    let Flows { udp: udp_ports, tcp: tcp_ports } = flows;
    let streams: Vec<(usize, u16)> =
        udp_ports.iter().enumerate().filter_map(|(site, p)| p.first().map(|&port| (site, port))).collect();
    let receivers: Vec<UdpSocket> =
        streams.iter().map(|&(site, _)| udp_socket([&chain.a, &chain.b][site], vip(UDP_PORT))).collect();
    let sinks = [
        Sink::start(&chain.a, vip(TCP_PORT)).expect("TCP service in A"),
        Sink::start(&chain.b, vip(TCP_PORT)).expect("TCP service in B"),
    ];
    let senders: Vec<Sender> = streams
        .iter()
        .map(|&(_, port)| {
            Sender::new(udp_socket(&chain.client, from(port)), vip(UDP_PORT), UDP_RATE, UDP_MAX)
        })
        .collect();
    let connections: Vec<Connection> = tcp_ports
        .iter()
        .flatten()
        .map(|&p| {
            Connection::open(&chain.client, from(p), vip(TCP_PORT))
                .unwrap_or_else(|e| panic!("TCP connection from port {p}: {e}"))
        })
        .collect();
    let stop_tcp = AtomicBool::new(false);
    let (udp, tcp) = thread::scope(|s| {
        let _stop = StopOnDrop(&senders, &stop_tcp);
        let tx: Vec<_> = senders.iter().map(|sender| s.spawn(|| sender.run())).collect();
        let rx: Vec<_> = receivers
            .iter()
            .zip(&senders)
            .map(|(sock, sender)| s.spawn(|| sequenced::receive(sock, sender, IDLE)))
            .collect();
        let tcp = s.spawn(|| tcp::transfer(connections, TCP_RATE, TCP_MAX, &stop_tcp));
        thread::sleep(settle);
        disturb();
        thread::sleep(settle);
        senders.iter().for_each(Sender::stop);
        stop_tcp.store(true, Ordering::Relaxed);
        let sent: Vec<u32> = tx.into_iter().map(|t| t.join().expect("UDP sender")).collect();
        let got: Vec<Received> = rx.into_iter().map(|r| r.join().expect("UDP receiver")).collect();
        let udp =
            streams.iter().zip(sent.into_iter().zip(got)).map(|(&(site, _), (n, r))| (SITES[site], n, r));
        (udp.collect(), tcp.join().expect("TCP transfers"))
    });
    let served = [sinks[0].wait_served(tcp_ports[0].len()), sinks[1].wait_served(tcp_ports[1].len())];
    Measured { udp, tcp, served, tcp_ports }
}

/// `anycast_vip_packets_total{vip="udp"}` of A: every datagram of the streams went through
/// A's program (whichever program ran at the time) and was counted in the pinned counters.
pub fn udp_vip_packets(a: &Daemon) -> Option<u64> {
    metric(&a.get("/metrics").expect("A's /metrics"), r#"anycast_vip_packets_total{vip="udp"}"#)
}
