//! Health probes through the data path (anycast-user/src/probe.rs), with real packets
//! between two namespaces: A (the prober) `a0` 10.3.0.1 / fd03::1 ⇄ `b0` 10.3.0.2 / fd03::2
//! B, where B runs the real `anycast run` daemon with A as a remote site (one per family:
//! a site has one endpoint).
//!
//! 1. `health_probe_through_remote_data_path`: probes over IPIP, IPv6-in-IPv6, GUE/IPv4 and
//!    GUE/IPv6, several at once, all answered; B counts each as a probe of the sending
//!    site and none as received data. A probe from an address B does not know as a peer is
//!    not answered (so a reply really needs B's decapsulation: B's kernel has no tunnel
//!    modules), nor is any probe once B's data path is detached; each fails with a timeout
//!    error within its timeout.
//! 2. `health_probe_silent_address_times_out`: a probe to an address nobody holds times
//!    out within its timeout, IPv4 and IPv6.

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anycast_common::{Action, AddrKey, Exception, SiteCounters, counters::exception_index};
use anycast_tests::pinned::Pinned;

/// B's `decap_unknown_peer` counter (always dropped).
const UNKNOWN_PEER: usize = exception_index(Exception::DecapUnknownPeer, Action::Drop) as usize;
use anycast_user::{
    config::Encap,
    datapath::maps::DataPathMaps,
    steering::probe::{ProbeError, Prober},
};
use testkit::{
    daemon::Daemon,
    netns::Netns,
    require::{Need, require},
};

const A4: Ipv4Addr = Ipv4Addr::new(10, 3, 0, 1);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd03, 0, 0, 0, 0, 0, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(10, 3, 0, 2);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd03, 0, 0, 0, 0, 0, 0, 2);
/// On A, not known to B as a tunnel peer.
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 3, 0, 3);
const GUE_PORT: u16 = 6080;
/// Answered probes return as soon as the reply is in: a generous bound for a shared CI box.
const ANSWERED_TIMEOUT: Duration = Duration::from_secs(2);
/// Unanswered probes wait this long; they must fail within it plus `SLACK`.
const SILENT_TIMEOUT: Duration = Duration::from_millis(300);
const SLACK: Duration = Duration::from_millis(200);
/// Rounds of the four probe kinds, sent concurrently within a round.
const ROUNDS: u64 = 3;
const DETACH_TIMEOUT: Duration = Duration::from_secs(10);

const B_CONFIG: &str = r#"[local]
interfaces = ["b0"]
tunnel_v4 = "10.3.0.2"
tunnel_v6 = "fd03::2"
gue_port = 6080

[[sites]]
name = "b"
local = true
capacity = 100

[[sites]]
name = "a4"
endpoint = "10.3.0.1"
encap = "ip"
capacity = 100

[[sites]]
name = "a6"
endpoint = "fd03::1"
encap = "gue"
gue_port = 6080
capacity = 100

[[vips]]
name = "svc"
address = "10.200.0.1"
port = 5353
protocol = "udp"
sites = ["b"]
"#;

/// A and B joined by a veth; A's probes leave with software checksums (what a NIC
/// without offload sends; a veth would otherwise hand B a partial one).
fn topology(tag: &str) -> (Netns, Netns) {
    let a = Netns::new(&format!("{tag}-a")).unwrap();
    let b = Netns::new(&format!("{tag}-b")).unwrap();
    a.add_veth("a0", &b, "b0").unwrap();
    a.add_addr("a0", "10.3.0.1/24").unwrap();
    a.add_addr("a0", "10.3.0.3/24").unwrap();
    a.add_addr("a0", "fd03::1/64").unwrap();
    b.add_addr("b0", "10.3.0.2/24").unwrap();
    b.add_addr("b0", "fd03::2/64").unwrap();
    a.software_checksums("a0").unwrap();
    (a, b)
}

/// Runs `f` with a Prober of A's tunnel addresses `v4`/`v6`, on a current-thread runtime
/// on a thread inside `ns` (the Prober's sockets belong to the namespace they are opened in).
fn with_prober<T: Send>(
    ns: &Netns,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
    f: impl AsyncFnOnce(&Prober) -> T + Send,
) -> T {
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // The Prober reads its replies in a task of the runtime it is made in.
        let _in_runtime = rt.enter();
        let prober = Prober::new(v4, v6, None).unwrap();
        rt.block_on(f(&prober))
    })
}

/// One probe that must fail with a timeout, within its timeout: no sooner, and no later
/// than a plain timer of the same length fires on this runtime right now (measured just
/// before, so a loaded machine's lateness is allowed for) plus [`SLACK`].
async fn assert_times_out(prober: &Prober, endpoint: IpAddr, encap: Encap, what: &str) {
    let timer = Instant::now();
    tokio::time::sleep(SILENT_TIMEOUT).await;
    let late = timer.elapsed() - SILENT_TIMEOUT;
    let start = Instant::now();
    let result = prober.probe(endpoint, encap, SILENT_TIMEOUT).await;
    let took = start.elapsed();
    assert!(
        matches!(result, Err(ProbeError::Timeout { endpoint: e, .. }) if e == endpoint),
        "{what}: expected a timeout, got {result:?}"
    );
    assert!(
        took >= SILENT_TIMEOUT && took < SILENT_TIMEOUT + late + SLACK,
        "{what}: failed after {took:?}, timeout {SILENT_TIMEOUT:?} (a timer of that length fired {late:?} late)"
    );
}

/// B's site index of the tunnel peer `addr`, from the data path's TUNNEL_PEERS.
fn peer_site(maps: &DataPathMaps, addr: AddrKey) -> u32 {
    let peers = maps.tunnel_peers().unwrap();
    peers
        .iter()
        .find(|(k, _)| *k == addr)
        .unwrap_or_else(|| panic!("{addr:?} not in TUNNEL_PEERS: {peers:?}"))
        .1
}

#[test]
fn health_probe_through_remote_data_path() {
    if !require("health_probe_through_remote_data_path", &[Need::Kernel]) {
        return;
    }
    let (a, b) = topology("hp");
    let mut daemon = Daemon::started(&b, B_CONFIG).unwrap();
    let maps = daemon.maps().unwrap();
    let (site4, site6) =
        (peer_site(&maps, AddrKey::v4(A4.octets())), peer_site(&maps, AddrKey::v6(A6.octets())));
    let before: Vec<SiteCounters> = [site4, site6].iter().map(|&s| maps.site_counters(s).unwrap()).collect();
    let unknown_before = maps.exceptions().unwrap()[UNKNOWN_PEER];

    // Every kind of probe, the four of a round concurrently (as the controller probes its
    // sites), each answered.
    let kinds = [
        (IpAddr::V4(B4), Encap::Ip, "IPIP"),
        (IpAddr::V6(B6), Encap::Ip, "IPv6-in-IPv6"),
        (IpAddr::V4(B4), Encap::Gue { port: GUE_PORT }, "GUE over IPv4"),
        (IpAddr::V6(B6), Encap::Gue { port: GUE_PORT }, "GUE over IPv6"),
    ];
    let rtts = with_prober(&a, Some(A4), Some(A6), async |p: &Prober| {
        let mut rtts = Vec::new();
        for _ in 0..ROUNDS {
            let [r0, r1, r2, r3] =
                kinds.map(|(endpoint, encap, _)| p.probe(endpoint, encap, ANSWERED_TIMEOUT));
            let (r0, r1, r2, r3) = tokio::join!(r0, r1, r2, r3);
            rtts.push([r0, r1, r2, r3]);
        }
        rtts
    });
    for round in &rtts {
        for (r, (endpoint, _, what)) in round.iter().zip(&kinds) {
            r.as_ref().unwrap_or_else(|e| panic!("{what} probe of {endpoint}: {e}"));
        }
    }
    let fmt =
        |k: usize| rtts.iter().map(|r| format!("{:?}", r[k].as_ref().unwrap())).collect::<Vec<_>>().join(" ");
    for (k, (_, _, what)) in kinds.iter().enumerate() {
        eprintln!("health probe rtt, {what}: {}", fmt(k));
    }

    // B counted each probe as a probe of the site that sent it, none as data.
    let after: Vec<SiteCounters> = [site4, site6].iter().map(|&s| maps.site_counters(s).unwrap()).collect();
    for (i, family) in ["IPv4 (site a4)", "IPv6 (site a6)"].iter().enumerate() {
        let (b, a) = (&before[i], &after[i]);
        assert_eq!(a.probe_packets - b.probe_packets, 2 * ROUNDS, "{family}: probes counted\n{a:?}");
        assert_eq!(a.received_packets, b.received_packets, "{family}: probes counted as data\n{a:?}");
        assert_eq!(a.received_bytes, b.received_bytes, "{family}: probes counted as data\n{a:?}");
    }

    // From an address B does not know: dropped by B's XDP (docs/datapath.md §5).
    with_prober(&a, Some(STRANGER), None, async |p: &Prober| {
        assert_times_out(p, IpAddr::V4(B4), Encap::Ip, "probe from an unknown peer").await;
    });
    let unknown_after = maps.exceptions().unwrap()[UNKNOWN_PEER];
    assert_eq!(unknown_after - unknown_before, 1, "B's decap_unknown_peer count");
    drop(maps);

    // B's data path gone (controller stopped, program detached): nothing answers.
    daemon.kill().unwrap();
    let pin_dir = daemon.pin_dir().to_owned();
    let out = daemon
        .cli([OsStr::new("detach"), OsStr::new("--pin-dir"), pin_dir.as_os_str()], &[], DETACH_TIMEOUT)
        .unwrap();
    assert!(out.status.success(), "anycast detach: {}", String::from_utf8_lossy(&out.stderr));
    with_prober(&a, Some(A4), Some(A6), async |p: &Prober| {
        for (endpoint, encap, what) in kinds {
            assert_times_out(p, endpoint, encap, &format!("{what} probe after B's detach")).await;
        }
    });
}

#[test]
fn health_probe_silent_address_times_out() {
    if !require("health_probe_silent_address_times_out", &[Need::Kernel]) {
        return;
    }
    let (a, _b) = topology("hs");
    with_prober(&a, Some(A4), Some(A6), async |p: &Prober| {
        let silent4 = IpAddr::V4(Ipv4Addr::new(10, 3, 0, 99));
        let silent6 = IpAddr::V6(Ipv6Addr::new(0xfd03, 0, 0, 0, 0, 0, 0, 0x99));
        assert_times_out(p, silent4, Encap::Ip, "IPIP probe of a silent address").await;
        assert_times_out(p, silent6, Encap::Gue { port: GUE_PORT }, "GUE probe of a silent address").await;
        // A family without a tunnel address is refused at once, not timed out.
        let only_v4 = Prober::new(Some(A4), None, None).unwrap();
        let err = only_v4.probe(silent6, Encap::Ip, SILENT_TIMEOUT).await.unwrap_err();
        assert!(matches!(err, ProbeError::NoTunnelAddress { family: 6, .. }), "{err}");
    });
}
