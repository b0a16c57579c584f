//! Real packets through the attached program: network namespaces joined by veth pairs,
//! the anycast XDP program attached in native mode, bounded UDP traffic from std sockets.
//!
//! 1. `netns_local_vip_and_other_traffic`: client ⇄ host. Datagrams to an IPv4 and an IPv6
//!    VIP served by the local site and to ordinary addresses of the host all arrive; the
//!    VIPs' and the site's counters equal exactly what was sent, nothing else moves.
//! 2. `netns_forward_to_remote_site_and_decap`: client → host A → site B. A forwards the
//!    VIP's datagrams to B (IPIP, XDP_REDIRECT from a0 to a1); B, running the same program
//!    configured with A as a tunnel peer, decapsulates them and hands them to its stack,
//!    where the service socket receives every one. A counts them forwarded, B received.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anycast_common::{
    AddrKey, Encap, LocalConfig, SiteInfo, VipInfo, VipKey,
    config::CONFIG_TUNNEL_V4,
    site::{MAGLEV_LOCAL, SITE_CONFIGURED, SITE_LOCAL, SITE_UP},
};
use anycast_tests::{harness::DataPath, netns::Netns, packet::PROTO_UDP, topology::ForwardChain};
use anycast_user::datapath::maps::DataPathMaps;
use aya::programs::XdpMode;
use testkit::require::{Need, require};

const VIP: [u8; 4] = [10, 200, 0, 1];
const VIP_PORT: u16 = 5353;
/// Datagrams per flow: enough to catch a miscount, few enough to never fill a socket buffer.
const COUNT: usize = 40;
const PAYLOAD: usize = 64;
/// Ethernet + IPv4 + UDP + payload: the frame length XDP sees (no FCS).
const FRAME: u64 = (14 + 20 + 8 + PAYLOAD) as u64;
/// How long a receiver waits for the next datagram before giving up.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

const VIP6: &str = "fd00:200::1";
/// The same frame over IPv6.
const FRAME6: u64 = FRAME + 20;

fn vip_key(port: u16) -> VipKey {
    VipKey { addr: v4(VIP), port, proto: PROTO_UDP, family: anycast_common::Family::V4 as u8 }
}

fn vip6_key(port: u16) -> VipKey {
    let addr = VIP6.parse::<std::net::Ipv6Addr>().unwrap().octets();
    VipKey { addr, port, proto: PROTO_UDP, family: anycast_common::Family::V6 as u8 }
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a);
    out
}

/// Loads the program and attaches it to `ifname` of `ns`, natively (veth supports native
/// XDP); the maps are returned for configuration and reading.
fn attach(ns: &Netns, ifname: &str) -> (DataPath, DataPathMaps) {
    let ifindex = ns.ifindex(ifname).expect("ifindex");
    ns.run(|| {
        let mut dp = DataPath::load().expect("load anycast");
        let maps = dp.maps().expect("maps");
        dp.attach(ifindex, XdpMode::Driver).expect("attach in native mode");
        (dp, maps)
    })
}

/// Sends `COUNT` datagrams from a socket in `ns` to `dst`.
fn send_from(ns: &Netns, dst: SocketAddr) {
    ns.run(|| {
        let any = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = UdpSocket::bind(any).expect("client socket");
        for i in 0..COUNT {
            let mut msg = vec![b'x'; PAYLOAD];
            msg[0] = i as u8;
            s.send_to(&msg, dst).expect("send");
        }
    });
}

/// Receives until `COUNT` datagrams arrived or none came for `RECV_TIMEOUT`; returns how
/// many arrived (each checked for its length).
fn receive(sock: &UdpSocket) -> usize {
    sock.set_read_timeout(Some(RECV_TIMEOUT)).expect("timeout");
    let deadline = Instant::now() + RECV_TIMEOUT * 4;
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while n < COUNT && Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(len) => {
                assert_eq!(len, PAYLOAD, "datagram length");
                n += 1;
            }
            Err(_) => break,
        }
    }
    n
}

/// Interface and veth driver statistics, for a failure message (where did frames go?).
fn link_stats(ns: &Netns, ifname: &str) -> String {
    let link = ns.ip(&["-s", "link", "show", "dev", ifname]).unwrap_or_else(|e| e.to_string());
    let driver = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "ethtool", "-S", ifname])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| e.to_string());
    let nonzero: Vec<&str> = driver.lines().filter(|l| !l.trim_end().ends_with(": 0")).collect();
    format!("--- {} {ifname}:\n{link}{}\n", ns.name(), nonzero.join("\n"))
}

#[test]
fn netns_local_vip_and_other_traffic() {
    if !require("netns_local_vip_and_other_traffic", &[Need::Kernel]) {
        return;
    }
    let cl = Netns::new("nl-cl").unwrap();
    let lb = Netns::new("nl-lb").unwrap();
    cl.add_veth("c0", &lb, "l0").unwrap();
    cl.add_addr("c0", "10.1.0.2/24").unwrap();
    lb.add_addr("l0", "10.1.0.1/24").unwrap();
    lb.add_addr("lo", "10.200.0.1/32").unwrap();
    cl.add_route(&["10.200.0.1/32", "via", "10.1.0.1"]).unwrap();
    cl.add_addr("c0", "fd01::2/64").unwrap();
    lb.add_addr("l0", "fd01::1/64").unwrap();
    lb.add_addr("lo", &format!("{VIP6}/128")).unwrap();
    cl.add_route(&[&format!("{VIP6}/128"), "via", "fd01::1"]).unwrap();
    cl.software_checksums("c0").unwrap();

    let (_dp, mut maps) = attach(&lb, "l0");
    let local =
        SiteInfo { flags: SITE_CONFIGURED | SITE_UP | SITE_LOCAL, generation: 1, ..SiteInfo::default() };
    maps.set_site(0, &local).unwrap();
    maps.set_maglev(0, &[MAGLEV_LOCAL]).unwrap();
    maps.set_maglev(1, &[MAGLEV_LOCAL]).unwrap();
    maps.set_vips_with_addresses(
        &[
            (vip_key(VIP_PORT), VipInfo { index: 0, flags: 0 }),
            (vip6_key(VIP_PORT), VipInfo { index: 1, flags: 0 }),
        ],
        &[],
    )
    .unwrap();

    let vip_srv = lb.run(|| UdpSocket::bind(("10.200.0.1", VIP_PORT)).expect("bind VIP"));
    let vip6_srv = lb.run(|| UdpSocket::bind((VIP6, VIP_PORT)).expect("bind IPv6 VIP"));
    let other_srv = lb.run(|| UdpSocket::bind("10.1.0.1:6000").expect("bind host address"));
    let other6_srv = lb.run(|| UdpSocket::bind("[fd01::1]:6000").expect("bind host IPv6 address"));
    send_from(&cl, "10.200.0.1:5353".parse().unwrap());
    send_from(&cl, format!("[{VIP6}]:5353").parse().unwrap());
    send_from(&cl, "10.1.0.1:6000".parse().unwrap());
    send_from(&cl, "[fd01::1]:6000".parse().unwrap());

    assert_eq!(receive(&vip_srv), COUNT, "VIP datagrams delivered");
    assert_eq!(receive(&vip6_srv), COUNT, "IPv6 VIP datagrams delivered");
    assert_eq!(receive(&other_srv), COUNT, "non-VIP datagrams delivered");
    assert_eq!(receive(&other6_srv), COUNT, "non-VIP IPv6 datagrams delivered");
    let vip = maps.vip_counters(0).unwrap();
    assert_eq!((vip.packets, vip.bytes), (COUNT as u64, COUNT as u64 * FRAME), "VIP counters");
    let vip6 = maps.vip_counters(1).unwrap();
    assert_eq!((vip6.packets, vip6.bytes), (COUNT as u64, COUNT as u64 * FRAME6), "IPv6 VIP counters");
    let site = maps.site_counters(0).unwrap();
    let local = (2 * COUNT as u64, COUNT as u64 * (FRAME + FRAME6));
    assert_eq!((site.local_packets, site.local_bytes), local, "local site");
    assert_eq!((site.forwarded_packets, site.received_packets), (0, 0));
    let exceptions = maps.exceptions().unwrap();
    assert!(exceptions.iter().all(|&n| n == 0), "exceptions counted: {exceptions:?}");
}

#[test]
fn netns_forward_to_remote_site_and_decap() {
    if !require("netns_forward_to_remote_site_and_decap", &[Need::Kernel]) {
        return;
    }
    let ForwardChain { client: cl, a, b } = ForwardChain::new("nf", "10.200.0.1").unwrap();

    // B first: XDP_REDIRECT into a veth delivers only when the peer (b0) runs XDP.
    let (_dp_b, mut maps_b) = attach(&b, "b0");
    const A_AT_B: u32 = 7; // A's site index in B's configuration
    maps_b
        .set_config(&LocalConfig {
            flags: CONFIG_TUNNEL_V4,
            tunnel_v4: [10, 2, 0, 2],
            ..LocalConfig::default()
        })
        .unwrap();
    maps_b
        .set_site(
            A_AT_B,
            &SiteInfo { flags: SITE_CONFIGURED | SITE_UP, generation: 1, ..SiteInfo::default() },
        )
        .unwrap();
    maps_b.set_tunnel_peer(&AddrKey::v4([10, 2, 0, 1]), A_AT_B).unwrap();
    // B decapsulates only inner packets for its own VIPs (docs/datapath.md §5).
    maps_b
        .set_vips_with_addresses(
            &[(vip_key(VIP_PORT), VipInfo { index: 0, flags: 0 })],
            &[AddrKey::v4([10, 2, 0, 2])],
        )
        .unwrap();

    let (_dp_a, mut maps_a) = attach(&a, "a0");
    const B_AT_A: u32 = 1;
    maps_a
        .set_config(&LocalConfig {
            flags: CONFIG_TUNNEL_V4,
            tunnel_v4: [10, 2, 0, 1],
            ..LocalConfig::default()
        })
        .unwrap();
    let site_b = SiteInfo {
        flags: SITE_CONFIGURED | SITE_UP,
        generation: 1,
        tunnel_addr: v4([10, 2, 0, 2]),
        tunnel_family: anycast_common::Family::V4 as u8,
        encap: Encap::Ip as u8,
        gue_port: 0,
    };
    maps_a.set_site(B_AT_A, &site_b).unwrap();
    maps_a.set_maglev(0, &[B_AT_A]).unwrap();
    maps_a.set_vips_with_addresses(&[(vip_key(VIP_PORT), VipInfo { index: 0, flags: 0 })], &[]).unwrap();
    // A DEVMAP update resolves the ifindex in the updating thread's namespace.
    let a1 = a.ifindex("a1").unwrap();
    a.run(|| maps_a.add_egress(a1)).unwrap();

    let srv = b.run(|| UdpSocket::bind(("10.200.0.1", VIP_PORT)).expect("bind VIP at B"));
    send_from(&cl, "10.200.0.1:5353".parse().unwrap());
    let got = receive(&srv);

    let vip = maps_a.vip_counters(0).unwrap();
    let fwd = maps_a.site_counters(B_AT_A).unwrap();
    let rcv = maps_b.site_counters(A_AT_B).unwrap();
    let report = format!(
        "B received {got}/{COUNT}; A: VIP {vip:?}, site B {fwd:?}, exceptions {:?}; B: site A {rcv:?}, exceptions {:?}\n{}{}{}",
        maps_a.exceptions().unwrap(),
        maps_b.exceptions().unwrap(),
        link_stats(&a, "a0"),
        link_stats(&a, "a1"),
        link_stats(&b, "b0"),
    );
    assert_eq!(got, COUNT, "{report}");
    assert_eq!((vip.packets, vip.bytes), (COUNT as u64, COUNT as u64 * FRAME), "{report}");
    assert_eq!(
        (fwd.forwarded_packets, fwd.forwarded_bytes),
        (COUNT as u64, COUNT as u64 * FRAME),
        "{report}"
    );
    // B counts the frame as received, outer IPv4 header (20 bytes) included.
    assert_eq!(
        (rcv.received_packets, rcv.received_bytes),
        (COUNT as u64, COUNT as u64 * (FRAME + 20)),
        "{report}"
    );
    assert!(maps_a.exceptions().unwrap().iter().all(|&n| n == 0), "{report}");
    assert!(maps_b.exceptions().unwrap().iter().all(|&n| n == 0), "{report}");
}
