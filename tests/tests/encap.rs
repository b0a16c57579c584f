//! Real packets of every family and encapsulation through the real daemons (docs/datapath.md
//! §5, §7, §8): a client sends to VIPs that site A forwards to site B, each site its own
//! `anycast run --config` in a namespace ([`DualChain`]). Until now only IPv4 over IPIP
//! crossed a real link; the rest was BPF_PROG_RUN fixtures.
//!
//! 1. `encap_ip_every_family`: IPv4 and IPv6 VIPs over IPv4 and IPv6 outer headers
//!    (IPIP, 6in4, 4in6, IPv6-in-IPv6): UDP datagrams and a TCP transfer each, every one
//!    delivered, A's forwarded = B's received = what the client sent, no exception.
//! 2. `encap_gue_every_family`: the same over GUE (outer UDP to B's `gue_port`), which B
//!    decapsulates.
//! 3. `encap_vlan_tagged_uplink`: tagged frames from the client; A's program reads past the
//!    tag and forwards (keeping it, §7), B decapsulates; a priority tag (VLAN 0) is
//!    delivered to B's service.
//! 4. `encap_fragmented_datagrams_reassembled_at_the_site`: UDP datagrams larger than the
//!    client's MTU; every fragment goes to B through the VIP's any-port entry (§2), B's
//!    kernel reassembles, every datagram arrives whole.
//! 5. `encap_pmtu_too_big_lowers_the_path_mtu_and_the_transfer_completes`: a client behind a
//!    1500-byte path, a 1500-byte backbone: full-size TCP segments do not fit the tunnel, A
//!    answers with ICMP frag-needed / packet-too-big (§8, XDP_TX: the client's veth runs a
//!    pass-everything XDP program, as a real NIC would receive it), the client lowers its path
//!    MTU and the transfer completes with every byte. Both families.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use anycast_tests::{packet, topology::DualChain};
use testkit::{
    daemon::Daemon,
    metrics::metric,
    netns::Netns,
    require::{Need, require},
    sequenced::{assert_all_arrived, bind, send_and_receive},
    tcp::{Connection, Outcome, Sink},
    wait,
    xdp::PassProgram,
};

/// B's GUE port (decapsulation of GUE is on when `[local] gue_port` is set).
const GUE_PORT: u16 = 6080;
const DATAGRAMS: u32 = 40;
/// Bytes of each TCP transfer: many full-size segments.
const TCP_BYTES: usize = 256 << 10;
/// Enough for IPv6-in-IPv6's 40 bytes over the client's 1500 (the PMTU test has its own).
const BACKBONE_MTU: u32 = 1600;
const SETTLE: Duration = Duration::from_secs(5);

/// One VIP of the configs below: its name, address, port, protocol, and the site A sends it
/// to (`b4`: B's IPv4 endpoint, `b6`: its IPv6 one) with B's name for A at that family.
struct Vip {
    name: &'static str,
    address: &'static str,
    port: &'static str,
    protocol: &'static str,
    via: &'static str,
}

impl Vip {
    fn addr(&self) -> SocketAddr {
        let ip: std::net::IpAddr = self.address.parse().unwrap();
        SocketAddr::new(ip, self.port.parse().unwrap_or(7000))
    }

    /// B's name for A on the outer family of this VIP's tunnel.
    fn peer(&self) -> &'static str {
        if self.via == "b4" { "a4" } else { "a6" }
    }
}

const fn vip(
    name: &'static str,
    address: &'static str,
    port: &'static str,
    protocol: &'static str,
    via: &'static str,
) -> Vip {
    Vip { name, address, port, protocol, via }
}

/// Every VIP: each inner family over each outer family, UDP and TCP; and any-port VIPs for
/// fragments.
const VIPS: [Vip; 10] = [
    vip("udp-4in4", DualChain::VIPS[0], "5301", "udp", "b4"),
    vip("udp-4in6", DualChain::VIPS[0], "5302", "udp", "b6"),
    vip("udp-6in6", DualChain::VIPS[1], "5301", "udp", "b6"),
    vip("udp-6in4", DualChain::VIPS[1], "5302", "udp", "b4"),
    vip("tcp-4in4", DualChain::VIPS[0], "5301", "tcp", "b4"),
    vip("tcp-4in6", DualChain::VIPS[0], "5302", "tcp", "b6"),
    vip("tcp-6in6", DualChain::VIPS[1], "5301", "tcp", "b6"),
    vip("tcp-6in4", DualChain::VIPS[1], "5302", "tcp", "b4"),
    vip("frag4", DualChain::VIPS[2], "any", "udp", "b4"),
    vip("frag6", DualChain::VIPS[3], "any", "udp", "b6"),
];

fn vips(sites: impl Fn(&Vip) -> String) -> String {
    VIPS.iter()
        .map(|v| {
            let port = if v.port == "any" { "\"any\"".to_owned() } else { v.port.to_owned() };
            format!(
                "\n[[vips]]\nname = \"{}\"\naddress = \"{}\"\nport = {port}\nprotocol = \"{}\"\nsites = {}\n",
                v.name,
                v.address,
                v.protocol,
                sites(v)
            )
        })
        .collect()
}

/// A steers every VIP to B, at B's IPv4 or IPv6 endpoint, encapsulated with `encap`
/// (`ip`: IPIP, 6in4, 4in6 or IPv6-in-IPv6 by the families; `gue`).
fn config_a(encap: &str) -> String {
    let gue = if encap == "gue" { format!("gue_port = {GUE_PORT}\n") } else { String::new() };
    format!(
        "[local]\ninterfaces = [\"a0\", \"a1\"]\ntunnel_v4 = \"10.2.0.1\"\ntunnel_v6 = \"fd02::1\"\n\
         \n[[sites]]\nname = \"a\"\nlocal = true\ncapacity = 100\n\
         \n[[sites]]\nname = \"b4\"\nendpoint = \"10.2.0.2\"\nencap = \"{encap}\"\n{gue}capacity = 100\n\
         \n[[sites]]\nname = \"b6\"\nendpoint = \"fd02::2\"\nencap = \"{encap}\"\n{gue}capacity = 100\n"
    ) + &vips(|v| format!("[\"{}\"]", v.via))
}

/// B serves every VIP and decapsulates what A sends from either of its addresses, IPIP or
/// GUE.
fn config_b() -> String {
    format!(
        "[local]\ninterfaces = [\"b0\"]\ntunnel_v4 = \"10.2.0.2\"\ntunnel_v6 = \"fd02::2\"\ngue_port = {GUE_PORT}\n\
         \n[[sites]]\nname = \"b\"\nlocal = true\ncapacity = 100\n\
         \n[[sites]]\nname = \"a4\"\nendpoint = \"10.2.0.1\"\ncapacity = 100\n\
         \n[[sites]]\nname = \"a6\"\nendpoint = \"fd02::1\"\ncapacity = 100\n"
    ) + &vips(|_| "[\"b\"]".to_owned())
}

/// B's controller, then A's (A redirects into a1, which delivers only once b0 runs XDP).
fn start<'a>(chain: &'a DualChain, encap: &str) -> (Daemon<'a>, Daemon<'a>) {
    let b = Daemon::started(&chain.b, &config_b()).unwrap();
    let a = Daemon::started(&chain.a, &config_a(encap)).unwrap();
    (a, b)
}

/// The counters of one VIP's path: what A counted at the VIP and forwarded to its site,
/// what B received from A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Path {
    vip: u64,
    forwarded: u64,
    received: u64,
}

fn site_packets(text: &str, site: &str, action: &str) -> u64 {
    metric(text, &format!("anycast_site_packets_total{{site=\"{site}\",action=\"{action}\"}}")).unwrap_or(0)
}

fn path(a: &Daemon, b: &Daemon, v: &Vip) -> Path {
    let (ta, tb) = (a.get("/metrics").unwrap(), b.get("/metrics").unwrap());
    Path {
        vip: metric(&ta, &format!("anycast_vip_packets_total{{vip=\"{}\"}}", v.name)).unwrap_or(0),
        forwarded: site_packets(&ta, v.via, "forwarded"),
        received: site_packets(&tb, v.peer(), "received"),
    }
}

/// Every exception counted by reason, whatever family of series carries them (one series
/// per reason, or per reason and action): reason → count, the non-zero ones.
fn exceptions(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter(|l| l.starts_with("anycast_drops_total{") || l.starts_with("anycast_exceptions_total{"))
        .filter_map(|l| {
            let reason = l.split("reason=\"").nth(1)?.split('"').next()?.to_owned();
            let n: u64 = l.rsplit(' ').next()?.parse().ok()?;
            (n > 0).then_some((reason, n))
        })
        .collect()
}

fn exception(text: &str, reason: &str) -> u64 {
    exceptions(text).iter().filter(|(r, _)| r == reason).map(|(_, n)| n).sum()
}

/// How often the data path saw `event` (docs/datapath.md §9: events are not exceptions).
fn event(text: &str, event: &str) -> u64 {
    metric(text, &format!("anycast_datapath_events_total{{event=\"{event}\"}}")).unwrap_or(0)
}

/// Waits until `path` has moved by `packets` at each of its counters (or [`SETTLE`]); the
/// movement.
fn moved(a: &Daemon, b: &Daemon, v: &Vip, before: Path, packets: u64) -> Path {
    let delta = || {
        let now = path(a, b, v);
        Path {
            vip: now.vip - before.vip,
            forwarded: now.forwarded - before.forwarded,
            received: now.received - before.received,
        }
    };
    wait::until(SETTLE, || delta().received >= packets);
    delta()
}

/// Datagrams and a TCP transfer to every VIP of `names`, each checked end to end.
fn exchange_all(chain: &DualChain, a: &Daemon, b: &Daemon, names: &[&str], what: &str) {
    for v in VIPS.iter().filter(|v| names.contains(&v.name)) {
        let before = path(a, b, v);
        let sent = match v.protocol {
            "udp" => {
                let srv = bind(&chain.b, &v.addr().to_string());
                assert_all_arrived(
                    &send_and_receive(&chain.client, v.addr(), &srv, DATAGRAMS),
                    DATAGRAMS,
                    v.name,
                );
                u64::from(DATAGRAMS)
            }
            _ => {
                let sink = Sink::start(&chain.b, v.addr()).unwrap();
                let from = SocketAddr::new(
                    if v.addr().is_ipv6() { "::".parse().unwrap() } else { "0.0.0.0".parse().unwrap() },
                    0,
                );
                let mut c = Connection::open(&chain.client, from, v.addr())
                    .unwrap_or_else(|e| panic!("{what} {}: {e}", v.name));
                c.send(TCP_BYTES);
                let report = c.finish();
                assert_eq!(report.outcome, Outcome::Completed, "{what} {}: {report:?}", v.name);
                assert_eq!(report.acknowledged, TCP_BYTES as u64, "{what} {}", v.name);
                assert_eq!(sink.wait_served(1).len(), 1, "{what} {}: B's service", v.name);
                // Every segment the client sent (SYN, data, ACKs, FIN) went through A to B.
                report.segments
            }
        };
        let d = moved(a, b, v, before, sent);
        assert_eq!(
            d,
            Path { vip: sent, forwarded: sent, received: sent },
            "{what} {}: the packets' path",
            v.name
        );
    }
    for (site, d) in [("A", a), ("B", b)] {
        let text = d.get("/metrics").unwrap();
        assert_eq!(exceptions(&text), [], "{what}: exceptions at {site}");
    }
}

const EVERY_FAMILY: [&str; 8] =
    ["udp-4in4", "udp-4in6", "udp-6in6", "udp-6in4", "tcp-4in4", "tcp-4in6", "tcp-6in6", "tcp-6in4"];

#[test]
fn encap_ip_every_family() {
    if !require("encap_ip_every_family", &[Need::Kernel]) {
        return;
    }
    let chain = DualChain::new("eip", 1500, BACKBONE_MTU).unwrap();
    let (a, b) = start(&chain, "ip");
    exchange_all(&chain, &a, &b, &EVERY_FAMILY, "IPIP/IPv6-in-IPv6");
}

#[test]
fn encap_gue_every_family() {
    if !require("encap_gue_every_family", &[Need::Kernel]) {
        return;
    }
    let chain = DualChain::new("egue", 1500, BACKBONE_MTU).unwrap();
    let (a, b) = start(&chain, "gue");
    exchange_all(&chain, &a, &b, &EVERY_FAMILY, "GUE");
}

#[test]
fn encap_vlan_tagged_uplink() {
    if !require("encap_vlan_tagged_uplink", &[Need::Kernel]) {
        return;
    }
    let chain = DualChain::new("evl", 1500, BACKBONE_MTU).unwrap();
    let (a, b) = start(&chain, "ip");
    let (c0, a0) = (chain.client.mac("c0").unwrap(), chain.a.mac("a0").unwrap());
    // This kernel has no 802.1Q devices, so the client's frames are made here and sent on
    // its veth with a packet socket, tagged. A's program reads past the tag and forwards,
    // keeping it (§7); B's decapsulates, keeping it. A tag with VLAN id 0 (priority only)
    // is one B's stack then takes as untagged and delivers: every datagram must arrive. One
    // with VLAN id 100 B's stack drops (no such VLAN device here), after B's data path
    // counted it received: the counters must add up.
    for (tci, delivered) in [(3 << 13, true), (100, false)] {
        for name in ["udp-4in4", "udp-6in6"] {
            let v = VIPS.iter().find(|v| v.name == name).unwrap();
            let client = if v.addr().is_ipv6() { "fd01::2" } else { "10.1.0.2" };
            let what = format!("{name}, VLAN tag {tci:#06x}");
            let before = path(&a, &b, v);
            let srv = bind(&chain.b, &v.addr().to_string());
            srv.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            for i in 0..DATAGRAMS {
                let frame = packet::udp(client, v.address, 40_000 + i as u16, v.addr().port())
                    .tags(&[(packet::TPID_8021Q, tci)])
                    .macs(a0, c0)
                    .frame();
                chain.client.send_frame("c0", &frame).unwrap();
            }
            let d = moved(&a, &b, v, before, u64::from(DATAGRAMS));
            let n = u64::from(DATAGRAMS);
            assert_eq!(d, Path { vip: n, forwarded: n, received: n }, "{what}: the packets' path");
            let mut got = 0;
            let mut buf = [0u8; 64];
            while srv.recv(&mut buf).is_ok_and(|len| buf[..len] == packet::payload(18)[..]) {
                got += 1;
            }
            assert_eq!(got, if delivered { DATAGRAMS } else { 0 }, "{what}: datagrams B's service got");
        }
    }
    for (site, d) in [("A", &a), ("B", &b)] {
        assert_eq!(exceptions(&d.get("/metrics").unwrap()), [], "exceptions at {site}");
    }
}

/// Fragments of an `l4`-byte IP payload on a link of `mtu`: IPv4 carries up to `mtu − 20`
/// bytes per fragment, IPv6 `mtu − 40 − 8` (its fragment header), rounded down to 8.
fn fragments(l4: usize, mtu: usize, v6: bool) -> u64 {
    let per = if v6 { (mtu - 48) / 8 * 8 } else { (mtu - 20) / 8 * 8 };
    l4.div_ceil(per) as u64
}

#[test]
fn encap_fragmented_datagrams_reassembled_at_the_site() {
    if !require("encap_fragmented_datagrams_reassembled_at_the_site", &[Need::Kernel]) {
        return;
    }
    const COUNT: u32 = 20;
    const LEN: usize = 4000;
    let chain = DualChain::new("efr", 1500, BACKBONE_MTU).unwrap();
    let (a, b) = start(&chain, "ip");
    for v in VIPS.iter().filter(|v| v.name.starts_with("frag")) {
        let v6 = v.addr().is_ipv6();
        let frags = fragments(8 + LEN, 1500, v6) * u64::from(COUNT);
        let before = path(&a, &b, v);
        let frag_before = event(&a.get("/metrics").unwrap(), "fragment");
        let srv = bind(&chain.b, &v.addr().to_string());
        srv.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let client = bind(&chain.client, if v6 { "[::]:0" } else { "0.0.0.0:0" });
        let mut payload = vec![0x5a_u8; LEN];
        for seq in 0..COUNT {
            payload[..4].copy_from_slice(&seq.to_be_bytes());
            assert_eq!(
                client.send_to(&payload, v.addr()).unwrap(),
                LEN,
                "{}: a datagram larger than the MTU",
                v.name
            );
        }
        let mut got = vec![false; COUNT as usize];
        let mut buf = vec![0u8; 2 * LEN];
        let received = wait::until(SETTLE, || {
            while let Ok(n) = UdpSocket::recv(&srv, &mut buf) {
                let seq = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                assert_eq!(
                    (n, buf[LEN - 1]),
                    (LEN, 0x5a),
                    "{}: datagram {seq} reassembled short or wrong",
                    v.name
                );
                got[seq] = true;
            }
            got.iter().all(|&g| g)
        });
        assert!(
            received.is_some(),
            "{}: datagrams missing: {:?}",
            v.name,
            got.iter().enumerate().filter(|(_, g)| !**g).map(|(i, _)| i).collect::<Vec<_>>()
        );
        let d = moved(&a, &b, v, before, frags);
        assert_eq!(
            d,
            Path { vip: frags, forwarded: frags, received: frags },
            "{}: {frags} fragments' path",
            v.name
        );
        let frag_seen = event(&a.get("/metrics").unwrap(), "fragment") - frag_before;
        assert_eq!(frag_seen, frags, "{}: fragments A counted", v.name);
    }
}

/// The path MTU the client's kernel holds for `dst` (`ip route get`: "mtu N" once lowered).
fn path_mtu(client: &Netns, dst: &str) -> Option<u32> {
    let out = client.ip(&["route", "get", dst]).unwrap();
    let mut words = out.split_whitespace();
    words.by_ref().find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

#[test]
fn encap_pmtu_too_big_lowers_the_path_mtu_and_the_transfer_completes() {
    if !require("encap_pmtu_too_big_lowers_the_path_mtu_and_the_transfer_completes", &[Need::Kernel]) {
        return;
    }
    const BYTES: usize = 1 << 20;
    let chain = DualChain::new("epm", 1500, 1500).unwrap();
    // The too-big replies leave a0 by XDP_TX: a veth delivers them only to a peer running an
    // XDP program, as the client's NIC would receive them.
    let _pass = PassProgram::attach(&chain.client, "c0").expect("an XDP program on the client's veth");
    let (a, b) = start(&chain, "ip");
    for (name, overhead) in [("tcp-4in4", 20), ("tcp-6in6", 40)] {
        let v = VIPS.iter().find(|v| v.name == name).unwrap();
        let address = v.address;
        assert_eq!(path_mtu(&chain.client, address), None, "{name}: a path MTU before the transfer");
        let too_big_before = exception(&a.get("/metrics").unwrap(), "too_big");
        let sink = Sink::start(&chain.b, v.addr()).unwrap();
        let from = SocketAddr::new(
            if v.addr().is_ipv6() { "::".parse().unwrap() } else { "0.0.0.0".parse().unwrap() },
            0,
        );
        let mut c = Connection::open(&chain.client, from, v.addr()).unwrap();
        c.send(BYTES);
        let report = c.finish();
        assert_eq!(report.outcome, Outcome::Completed, "{name}: {report:?}");
        assert_eq!(report.acknowledged, BYTES as u64, "{name}: every byte");
        assert_eq!(sink.wait_served(1)[0].bytes, BYTES as u64, "{name}: B's service");
        let too_big = exception(&a.get("/metrics").unwrap(), "too_big") - too_big_before;
        assert!(too_big > 0, "{name}: A never found a segment too big for the tunnel");
        assert_eq!(
            path_mtu(&chain.client, address),
            Some(1500 - overhead),
            "{name}: the client's path MTU after A's too-big ({too_big} of them)"
        );
    }
    let text = b.get("/metrics").unwrap();
    assert_eq!(exceptions(&text), [], "exceptions at B");
}
