//! The data path's hardening with real packets through the real daemons (issue 12;
//! docs/datapath.md §5, §7, §8), on the two sites of `anycast_tests::sustained`:
//!
//! ```text
//! client c0 10.1.0.2 ⇄ a0 10.1.0.1 [A] a1 10.2.0.1 ⇄ b0 10.2.0.2 [B]
//! ```
//!
//! 1. `hardening_spoofed_tunnel_packet_is_never_relayed`: B forwards (as every host whose
//!    XDP forwards must), and a tunnel packet comes from A's address — anyone can spoof
//!    it — with an inner packet for the client. Release 0.1.0 (a real build) decapsulates
//!    it and its kernel relays it to the client: the test sees the relay. This build drops
//!    it (decap_foreign), nothing reaches the client, `received` does not move; the same
//!    frames with the VIP inside are delivered to B's service.
//! 2. `hardening_next_hops_resolved_by_the_controller_under_live_tcp`: no permanent
//!    neighbour anywhere. A's controller makes B's address a managed neighbour (the
//!    kernel resolves it), so forwarding works from the start; the entry is deleted twice
//!    under live TCP transfers to B: the controller puts it back, the kernel resolves it,
//!    no connection is reset and B's service counts every byte.
//! 3. `hardening_too_big_flood_answered_at_the_configured_rate`: 10,000 datagrams too big for
//!    the tunnel (DF set): A answers with ICMP frag-needed at most at `icmp_rate` (plus the
//!    burst) per CPU, counts the rest as suppressed, and every answer reaches the client.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anycast_tests::{
    admin::AdminApi,
    packet::{ip_in_ip, udp},
    sustained::{self, CLIENT, TCP_PORT, UDP_PORT, VIP},
    topology::ForwardChain,
};
use testkit::{
    daemon::Daemon,
    metrics::metric,
    netns::Netns,
    previous,
    require::{Need, require},
    serial,
    tcp::{self, Connection, Sink},
    wait,
    xdp::PassProgram,
};

const SETTLE: Duration = Duration::from_secs(5);
/// Spoofed frames per run, and the control frames with the VIP inside.
const FRAMES: u64 = 20;
/// The client port the spoofed inner packets are for.
const RELAY_PORT: u16 = 7777;

fn exception(d: &Daemon, reason: &str, action: &str) -> u64 {
    let text = d.get("/metrics").expect("/metrics");
    metric(&text, &format!("anycast_exceptions_total{{reason=\"{reason}\",action=\"{action}\"}}"))
        .unwrap_or(0)
}

fn received_from(d: &Daemon, site: &str) -> u64 {
    let text = d.get("/metrics").expect("/metrics");
    metric(&text, &format!("anycast_site_packets_total{{site=\"{site}\",action=\"received\"}}")).unwrap_or(0)
}

/// A UDP socket inside `ns` that waits at most 200 ms per read.
fn listener(ns: &Netns, addr: SocketAddr) -> UdpSocket {
    let sock = ns.run(|| UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    sock
}

/// Datagrams `sock` receives until it has been quiet for a second (at most [`SETTLE`]).
fn count_received(sock: &UdpSocket) -> u64 {
    let (mut n, mut buf, start, mut last) = (0, [0u8; 2048], Instant::now(), Instant::now());
    while start.elapsed() < SETTLE && last.elapsed() < Duration::from_secs(1) {
        if sock.recv(&mut buf).is_ok() {
            n += 1;
            last = Instant::now();
        }
    }
    n
}

/// Sends `FRAMES` IPIP frames from A's address to B on the A–B link, each around a UDP
/// datagram from `inner_src` to `inner_dst`:`port`.
fn send_tunnelled(chain: &ForwardChain, inner_src: &str, inner_dst: &str, port: u16) {
    let frame = ip_in_ip("10.2.0.1", "10.2.0.2", &udp(inner_src, inner_dst, 40_000, port).payload_len(32))
        .macs(chain.b.mac("b0").unwrap(), chain.a.mac("a1").unwrap())
        .frame();
    for _ in 0..FRAMES {
        chain.a.send_frame("a1", &frame).expect("a frame on a1");
    }
}

/// One run of B (release 0.1.0 or this build): the spoofed frames, then the control frames;
/// what reached the client and B's service.
fn spoof_and_control(chain: &ForwardChain) -> (u64, u64) {
    let relayed = listener(&chain.client, SocketAddr::new(IpAddr::V4(CLIENT), RELAY_PORT));
    let service = listener(&chain.b, SocketAddr::new(IpAddr::V4(VIP), UDP_PORT));
    // The inner source is on the A–B link, so that no reverse-path check anywhere stands in
    // for the data path: only decapsulation decides.
    send_tunnelled(chain, "10.2.0.9", &CLIENT.to_string(), RELAY_PORT);
    let at_client = count_received(&relayed);
    send_tunnelled(chain, &CLIENT.to_string(), &VIP.to_string(), UDP_PORT);
    (at_client, count_received(&service))
}

#[test]
fn hardening_spoofed_tunnel_packet_is_never_relayed() {
    if !require("hardening_spoofed_tunnel_packet_is_never_relayed", &[Need::Kernel]) {
        return;
    }
    let chain = sustained::topology("hrl").unwrap();
    chain.b.enable_forwarding().unwrap();

    // Release 0.1.0 accepted any inner packet from a known peer's address: the client gets
    // it through B's kernel. This is what the test would see of a relay.
    let old = previous::binary().unwrap_or_else(|e| panic!("the previous release {}: {e}", previous::TAG));
    {
        let mut b = Daemon::with_binary(&chain.b, old).unwrap();
        b.set_binary(old, "metrics and admin on http://", false);
        b.write_config(&sustained::config_b()).unwrap();
        b.start().expect("start B's controller (the previous release)");
        let (at_client, served) = spoof_and_control(&chain);
        println!(
            "release {}: {at_client} of {FRAMES} spoofed packets relayed to the client, {served} served",
            previous::TAG
        );
        assert_eq!(
            (at_client, served),
            (FRAMES, FRAMES),
            "release {} relays (the test's control)",
            previous::TAG
        );
    }

    let mut b = Daemon::new(&chain.b).unwrap();
    b.write_config(&sustained::config_b()).unwrap();
    b.start().expect("start B's controller");
    let (at_client, served) = spoof_and_control(&chain);
    let foreign = exception(&b, "decap_foreign", "drop");
    let received = received_from(&b, "a");
    println!(
        "this build: {at_client} relayed, {foreign} counted decap_foreign/drop, {served} served, received {received}"
    );
    assert_eq!(at_client, 0, "a spoofed tunnel packet left B");
    assert_eq!(foreign, FRAMES, "every spoofed packet counted as decap_foreign/drop");
    assert_eq!(served, FRAMES, "the control packets (the VIP inside) reach B's service");
    assert_eq!(received, FRAMES, "`received` counts only what decapsulation accepted");
}

/// The neighbour entry of B's address at A, as `ip -j neigh` shows it: (state, managed).
fn neighbour_of_b(chain: &ForwardChain) -> Option<(String, bool)> {
    let out = chain.a.ip(&["-j", "neigh", "show", "to", "10.2.0.2", "dev", "a1"]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let entry = v.as_array()?.first()?;
    let state = entry["state"].as_array()?.first()?.as_str()?.to_owned();
    // iproute2 shows NTF_EXT_MANAGED as a key without a value.
    let managed = entry.get("managed").is_some();
    Some((state, managed))
}

/// Resolved and managed: an entry `bpf_fib_lookup` uses (NUD_VALID: a STALE or DELAY one
/// is still used, and a managed one is re-confirmed by the kernel) that the kernel keeps.
fn resolved(chain: &ForwardChain) -> bool {
    neighbour_of_b(chain)
        .is_some_and(|(s, managed)| managed && ["REACHABLE", "STALE", "DELAY", "PROBE"].contains(&s.as_str()))
}

#[test]
fn hardening_next_hops_resolved_by_the_controller_under_live_tcp() {
    if !require("hardening_next_hops_resolved_by_the_controller_under_live_tcp", &[Need::Kernel]) {
        return;
    }
    let _turn = serial::heavy();
    let chain = sustained::topology("hnh").unwrap();
    // The topology pins B's MAC at A; a real host has no such entry.
    chain.a.ip(&["neigh", "del", "10.2.0.2", "dev", "a1"]).unwrap();
    assert_eq!(neighbour_of_b(&chain), None, "no neighbour entry before the controller");
    let (a, _b) = sustained::start(&chain, None);
    assert!(
        wait::until(SETTLE, || resolved(&chain)).is_some(),
        "A's controller never got B's address resolved: {:?}\n{}",
        neighbour_of_b(&chain),
        a.log()
    );
    let hops = a.status().expect("A's status").next_hops;
    assert_eq!(hops.mode, "managed", "{hops:?}");
    assert!(hops.hops.len() == 1 && hops.hops[0].resolved && hops.hops[0].managed, "{hops:?}");
    let text = a.get("/metrics").unwrap();
    assert_eq!(
        metric(&text, r#"anycast_next_hop_resolved{site="b",address="10.2.0.2",dev="a1"}"#),
        Some(1),
        "{text}"
    );

    // Live TCP transfers to B (and to A, which must not care).
    let flows = sustained::Flows::pick(&a, 4);
    let vip = SocketAddr::new(IpAddr::V4(VIP), TCP_PORT);
    let sinks = [Sink::start(&chain.a, vip).unwrap(), Sink::start(&chain.b, vip).unwrap()];
    let connections: Vec<Connection> = flows
        .tcp
        .iter()
        .flatten()
        .map(|&p| Connection::open(&chain.client, SocketAddr::new(IpAddr::V4(CLIENT), p), vip).unwrap())
        .collect();
    let stop = AtomicBool::new(false);
    let mut restored = Vec::new();
    let reports = std::thread::scope(|s| {
        let t = s.spawn(|| tcp::transfer(connections, 128 << 10, Duration::from_secs(8), &stop));
        for _ in 0..2 {
            std::thread::sleep(Duration::from_secs(2));
            chain.a.ip(&["neigh", "del", "10.2.0.2", "dev", "a1"]).expect("delete B's neighbour entry");
            let back = wait::until(SETTLE, || resolved(&chain));
            restored.push(back);
        }
        t.join().unwrap()
    });
    println!(
        "neighbour deleted twice under {} connections: back, managed and resolved after {restored:?}; {} fib_no_neigh drops meanwhile",
        reports.len(),
        exception(&a, "fib_no_neigh", "drop")
    );
    assert!(
        restored.iter().all(Option::is_some),
        "the controller did not restore the entry: {:?}",
        neighbour_of_b(&chain)
    );
    let resets = tcp::resets(&reports);
    assert!(resets.is_empty(), "connections reset: {resets:#?}");
    for (site, sink) in ["a", "b"].iter().zip(&sinks) {
        let served = sink.wait_served(flows.tcp[if *site == "a" { 0 } else { 1 }].len());
        for s in &served {
            let sent = reports.iter().find(|r| r.local.port() == s.peer.port()).map(|r| r.sent);
            assert!(s.clean && Some(s.bytes) == sent, "site {site} served {s:?}, the client sent {sent:?}");
        }
    }
}

/// ICMP frag-needed messages `icmp` reads while `sending`, and for a second after.
fn frag_needed_received(icmp: &socket2::Socket, sending: &AtomicBool) -> u64 {
    let (mut answers, mut buf) = (0, [std::mem::MaybeUninit::<u8>::uninit(); 2048]);
    let mut done: Option<Instant> = None;
    while done.is_none_or(|t| t.elapsed() < Duration::from_secs(1)) {
        if done.is_none() && !sending.load(Ordering::Relaxed) {
            done = Some(Instant::now());
        }
        let Ok(n) = icmp.recv(&mut buf) else { continue };
        // SAFETY: recv initialised the first n bytes.
        let bytes: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
        let ihl = usize::from(bytes[0] & 0x0f) * 4;
        if bytes.get(ihl) == Some(&3) && bytes.get(ihl + 1) == Some(&4) {
            answers += 1;
        }
    }
    answers
}

/// `IP_PMTUDISC_PROBE`: DF set on every datagram, and the path MTU the kernel learns from
/// the answers ignored, so that every one of them is a trigger (linux/in.h).
const IP_PMTUDISC_PROBE: libc::c_int = 3;

const ICMP_RATE: u64 = 50;
const ICMP_BURST: u64 = 5;
const TRIGGERS: u64 = 10_000;

#[test]
fn hardening_too_big_flood_answered_at_the_configured_rate() {
    if !require("hardening_too_big_flood_answered_at_the_configured_rate", &[Need::Kernel]) {
        return;
    }
    let chain = sustained::topology("htb").unwrap();
    // Full-size datagrams do not fit the tunnel (1500 + 20 bytes of IPIP).
    chain.a.set_mtu("a1", 1500).unwrap();
    chain.b.set_mtu("b0", 1500).unwrap();
    // The client's veth must run XDP to receive A's XDP_TX answers (as a NIC would).
    let _pass = PassProgram::attach(&chain.client, "c0").unwrap();
    let _b = Daemon::started(&chain.b, &sustained::config_b()).unwrap();
    let mut a = Daemon::new(&chain.a).unwrap();
    a.add_datapath_option(&format!("icmp_rate = {ICMP_RATE}"));
    a.add_datapath_option(&format!("icmp_burst = {ICMP_BURST}"));
    a.write_config(&sustained::config_a()).unwrap();
    a.start().unwrap();

    // A UDP flow that A sends to B, and a raw socket that counts the answers.
    let flows = sustained::Flows::pick(&a, 1);
    let port = flows.udp[1][0];
    let icmp = chain
        .client
        .run(|| {
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(socket2::Protocol::ICMPV4))
        })
        .unwrap();
    icmp.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let sock = chain.client.run(|| UdpSocket::bind(SocketAddr::new(IpAddr::V4(CLIENT), port))).unwrap();
    let probe = IP_PMTUDISC_PROBE;
    // SAFETY: a valid socket and an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&probe as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IP_MTU_DISCOVER");
    // Paced over about a second (100 every 10 ms), so that the buckets refill while the
    // triggers come: the answers show the rate, not only the burst. The answers are read
    // meanwhile, and for a second after the last trigger.
    let sending = AtomicBool::new(true);
    let (elapsed, answers) = std::thread::scope(|s| {
        let reader = s.spawn(|| frag_needed_received(&icmp, &sending));
        let payload = [0u8; 1472];
        let start = Instant::now();
        for i in 0..TRIGGERS {
            sock.send_to(&payload, SocketAddr::new(IpAddr::V4(VIP), UDP_PORT)).expect("send");
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let elapsed = start.elapsed();
        sending.store(false, Ordering::Relaxed);
        (elapsed, reader.join().expect("the ICMP reader"))
    });
    let sent = exception(&a, "too_big", "tx");
    let suppressed = exception(&a, "too_big", "drop");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    // Each CPU's bucket: its burst, and what the rate refills while the triggers come.
    let bound = cpus * (ICMP_BURST + (ICMP_RATE as f64 * elapsed.as_secs_f64()).ceil() as u64);
    println!(
        "{TRIGGERS} triggers in {elapsed:?}: {answers} answers at the client, A counted {sent} tx and {suppressed} suppressed; bound {bound} ({cpus} CPUs × ({ICMP_BURST} + {ICMP_RATE}/s))"
    );
    assert!(answers > cpus * ICMP_BURST, "beyond the bursts, the rate lets answers through");
    assert!(sent <= bound, "{sent} answers is above the configured rate's {bound}");
    assert_eq!(answers, sent, "every answer A sent reached the client");
    assert_eq!(sent + suppressed, TRIGGERS, "every trigger counted once: answered or suppressed");
}
