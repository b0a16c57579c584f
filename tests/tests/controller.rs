//! The `anycast` controller binary, run as an operator runs it (`anycast run --config`),
//! inside network namespaces with real traffic through the data path it attaches:
//!
//! 1. `controller_restart_loses_nothing`: the controller is SIGKILLed in the middle of a
//!    stream of numbered datagrams to a local VIP and started again; it adopts the pinned
//!    program (same kernel program id) and every datagram arrives, every one counted by
//!    the data path (so none slipped past it while no controller ran).
//! 2. `controller_reload_refuses_broken_config`: SIGHUP with a broken file is refused with
//!    line and reason, nothing of it is applied, the daemon and the traffic carry on.
//! 3. `controller_reload_applies_new_weights`: SIGHUP with a new site weight changes the
//!    Maglev table in the kernel; the sites' shares follow the weights within 1%.
//! 4. `controller_metrics_match_packets_sent`: `/metrics` counts exactly the datagrams sent
//!    to the VIP, none of the others, and names every drop reason.
//! 5. `controller_second_instance_and_cli_defer_to_the_daemon`: a second `anycast run` on
//!    the same pins (an operator's slip, an overlapping service restart) is refused before
//!    it changes anything; `anycast status` reaches the daemon even with an HTTP proxy in
//!    its environment.
//! 6. `controller_restart_keeps_forwarding_to_remote_site`: two sites, each with its own
//!    controller; A sends the VIP to B (IPIP), B decapsulates and serves it. A's controller
//!    is SIGKILLed and restarted mid-stream: here a datagram that missed A's XDP program
//!    would be lost (A has no route to the VIP), and none is; A's forwarded count equals
//!    B's received count equals what B's service got.
//! 7. `controller_restart_with_another_maglev_size_rebuilds_the_tables_and_loses_nothing`:
//!    the same chain; A restarts with another `maglev_table_size` under traffic: its tables
//!    are rebuilt at the new size, the program swapped onto them, nothing lost; a reload
//!    that changes the size again is refused.
//! 8. `controller_rebuild_killed_at_the_swap_keeps_the_running_state_and_the_next_start_
//!    completes_it`: a restart with another table size *and* a new VIP, killed after the
//!    first link's swap: the new tables hold the running state and nothing of the new
//!    config was written yet (a slot the new config reuses must not be steered by the old
//!    tables meanwhile); the next start completes it; no datagram lost.
//! 9. `controller_restart_without_an_interface_detaches_its_link`: A restarts under traffic
//!    with an interface dropped from its config: that interface's pinned link is removed (no
//!    XDP program left on it, which would run on maps nobody writes any more), the others
//!    are adopted and nothing is lost.
//! 10. `controller_restart_with_no_vip_adopts_the_running_instance`: an outer Maglev map
//!     that holds no table yet keeps its shape known (its name): a restart adopts, it does
//!     not rebuild the tables and swap every program.
//! 11. `controller_clears_check_flags_once_no_pin_needs_them`: A sheds half of a TCP VIP
//!     to B; three connections are pinned to B by their handshakes (real frames through
//!     A's program); B is drained, so their buckets come home flagged. After the grace,
//!     the sweep clears every flag but those of the idle connection and of the
//!     half-closed one whose client keeps ACKing; the closed one's bucket loses its flag
//!     although its pin is still in the table: its next packet stays local (no lookup),
//!     the others still go to B.
//!
//! Every topology has a client namespace sending to the VIP 10.200.0.1:5353 (UDP), which a
//! socket in the serving site's namespace receives (the address on its loopback).

use std::{
    ffi::OsStr,
    net::{SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anycast_common::{
    Action, Exception,
    site::{MAGLEV_CHECK, MAGLEV_SITE},
};
use anycast_tests::{
    admin::AdminApi,
    packet::{self, ACK, PSH_ACK, SYN},
    pinned::Pinned,
    reference::{self, KEY},
    topology::{ForwardChain, LOCAL_SITE, local_site},
};
use anycast_user::{datapath::fault, model::status::Status};
use testkit::{
    daemon::{Daemon, DaemonError},
    frames::PacketSocket,
    metrics::metric,
    netns::Netns,
    require::{Need, require},
    sequenced::{self, Received, Sender, assert_all_arrived, bind, send_and_receive},
};

const VIP: &str = anycast_tests::topology::LOCAL_VIP;
const VIP_PORT: u16 = anycast_tests::topology::LOCAL_VIP_PORT;
/// Ethernet + IPv4 + UDP + payload: the frame length XDP sees and counts.
const FRAME: u64 = (14 + 20 + 8 + sequenced::PAYLOAD) as u64;
/// How long a receiver waits for a straggler once the sender has finished.
const IDLE: Duration = Duration::from_secs(2);
/// Sequenced streams across a restart: rate and a cap (10 s at that rate) that bounds the
/// stream even if the test fails before it stops the sender.
const RATE: u32 = 1000;
const MAX_STREAM: u32 = 10_000;
/// How long to let traffic flow before and after a restart.
const SETTLE: Duration = Duration::from_millis(500);
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

fn vip() -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), VIP_PORT)
}

/// Stops the sender when dropped: a failing assertion in the middle of a stream must not
/// leave the test waiting for the stream's cap.
struct StopOnDrop<'a>(&'a Sender);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// When what happened to the stream happened.
#[derive(Debug)]
struct Timeline {
    /// Datagrams sent before the SIGKILL.
    killed_after: u32,
    /// Datagrams sent before the new controller was up.
    restarted_after: u32,
    sent: u32,
    /// From the SIGKILL to the new controller serving `/metrics`.
    down_ms: f64,
}

impl Timeline {
    fn assert_restart_mid_stream(&self) {
        assert!(
            0 < self.killed_after
                && self.killed_after < self.restarted_after
                && self.restarted_after < self.sent,
            "the restart did not happen in the middle of the stream: {self:?}"
        );
    }
}

impl std::fmt::Display for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} datagrams sent; SIGKILL after #{}, controller back after #{} ({:.0} ms without one)",
            self.sent, self.killed_after, self.restarted_after, self.down_ms
        )
    }
}

/// Streams numbered datagrams from `from` to the VIP, received on `to`; in the middle,
/// SIGKILLs `daemon` and starts it again. Returns what arrived, the timeline and the log
/// of the restarted daemon.
fn stream_across_restart(from: &Netns, to: &UdpSocket, daemon: &mut Daemon) -> (Received, Timeline, String) {
    let sender = Sender::new(bind(from, "0.0.0.0:0"), vip(), RATE, MAX_STREAM);
    thread::scope(|s| {
        let _stop = StopOnDrop(&sender);
        let tx = s.spawn(|| sender.run());
        let rx = s.spawn(|| sequenced::receive(to, &sender, IDLE));
        thread::sleep(SETTLE);
        let killed_after = sender.sent();
        let killed = Instant::now();
        daemon.kill().expect("SIGKILL the controller");
        // A moment with no controller at all: the pinned data path alone forwards.
        thread::sleep(Duration::from_millis(100));
        let log = daemon.start().expect("restart the controller");
        let down_ms = killed.elapsed().as_secs_f64() * 1e3;
        let restarted_after = sender.sent();
        thread::sleep(SETTLE);
        sender.stop();
        let sent = tx.join().expect("sender");
        let got = rx.join().expect("receiver");
        (got, Timeline { killed_after, restarted_after, sent, down_ms }, log)
    })
}

fn metrics(daemon: &Daemon) -> String {
    daemon.get("/metrics").expect("GET /metrics")
}

#[test]
fn controller_restart_loses_nothing() {
    if !require("controller_restart_loses_nothing", &[Need::Kernel]) {
        return;
    }
    let (cl, site) = local_site("crs");
    let mut daemon = Daemon::new(&site).unwrap();
    daemon.write_config(LOCAL_SITE).unwrap();
    let log = daemon.start().unwrap();
    assert!(log.contains("l0: attached (native XDP), pinned"), "{log}");
    let program = daemon.link_program_id("l0").unwrap();
    let srv = bind(&site, "10.200.0.1:5353");

    let (got, timeline, log) = stream_across_restart(&cl, &srv, &mut daemon);
    eprintln!("local restart: {timeline}; {} received", got.count());
    timeline.assert_restart_mid_stream();
    assert_all_arrived(&got, timeline.sent, "datagrams across the restart");
    assert!(log.contains("l0: adopted the running instance"), "restart log:\n{log}");
    assert!(log.contains("maps reconciled: 0 writes, 0 Maglev tables"), "restart log:\n{log}");
    assert_eq!(daemon.link_program_id("l0").unwrap(), program, "the restart replaced the program");
    // Every datagram went through the program and matched the VIP, also while no
    // controller ran: the counters (pinned, summed by the new controller) say so.
    let text = metrics(&daemon);
    let sent = u64::from(timeline.sent);
    assert_eq!(metric(&text, r#"anycast_vip_packets_total{vip="svc"}"#), Some(sent), "{text}");
    assert_eq!(
        metric(&text, r#"anycast_site_packets_total{site="here",action="local"}"#),
        Some(sent),
        "{text}"
    );
}

/// The state directory's generated key lost while the data path runs (a wiped or
/// re-provisioned state directory): the restarted controller writes the running key back
/// rather than generating another, which would put every flow in another bucket.
#[test]
fn controller_restart_without_its_generated_key_keeps_the_running_one() {
    if !require("controller_restart_without_its_generated_key_keeps_the_running_one", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("cgk");
    let mut daemon = Daemon::new(&site).unwrap();
    daemon.generate_hash_key();
    daemon.write_config(LOCAL_SITE).unwrap();
    let log = daemon.start().unwrap();
    assert!(log.contains("generated a flow hash key"), "{log}");
    let running = daemon.maps().unwrap().config().unwrap().hash_key;
    assert_ne!(running, anycast_common::HashKey::default(), "no key in CONFIG");
    let file = daemon.dir().join("state").join("hash_key");
    let written = std::fs::read_to_string(&file).unwrap();
    let (status, _) = daemon.stop(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    assert!(status.success());
    std::fs::remove_file(&file).unwrap();
    let log = daemon.start().unwrap();
    assert!(log.contains("was missing: wrote the running data path's flow hash key there"), "{log}");
    assert_eq!(
        daemon.maps().unwrap().config().unwrap().hash_key,
        running,
        "the restart rekeyed the data path"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written, "another key written back");
    assert!(
        log.contains("maps reconciled: 0 writes, 0 Maglev tables"),
        "the restart rewrote the maps:\n{log}"
    );
}

#[test]
fn controller_reload_refuses_broken_config() {
    if !require("controller_reload_refuses_broken_config", &[Need::Kernel]) {
        return;
    }
    const COUNT: u32 = 200;
    let (cl, site) = local_site("crb");
    let mut daemon = Daemon::started(&site, LOCAL_SITE).unwrap();
    let srv = bind(&site, "10.200.0.1:5353");
    let srv2 = bind(&site, "10.200.0.1:5354");
    assert_all_arrived(&send_and_receive(&cl, vip(), &srv, COUNT), COUNT, "before the reload");

    // A valid change (a second VIP) and a syntax error (line 7, column 12) in one file: the
    // whole file is refused, the valid part included.
    let broken = LOCAL_SITE.replace("capacity = 100", "capacity = = 100")
        + "\n[[vips]]\nname = \"svc2\"\naddress = \"10.200.0.1\"\nport = 5354\nprotocol = \"udp\"\n";
    assert_eq!(broken.lines().nth(6), Some("capacity = = 100"));
    daemon.write_config(&broken).unwrap();
    let mark = daemon.log_mark();
    daemon.signal(libc::SIGHUP).unwrap();
    let log = daemon.wait_for_log(mark, "nothing applied", LOG_TIMEOUT).unwrap();
    let path = daemon.config_path();
    let located = format!("{}:7:12: ", path.display());
    assert!(log.contains("SIGHUP: config refused"), "{log}");
    let reason = log
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(&located))
        .unwrap_or_else(|| panic!("no {located}… in\n{log}"));
    assert!(!reason.trim().is_empty(), "no reason given: {log}");
    // Nothing of the file applied (and, after the traffic below, still running).
    assert_eq!(daemon.maps().unwrap().vips().unwrap().len(), 1, "a VIP of the refused file was applied");

    // Traffic keeps flowing through the data path: every datagram after the reload arrives
    // and is counted by the program (so the program is still there, with its VIP).
    assert_all_arrived(&send_and_receive(&cl, vip(), &srv, COUNT), COUNT, "after the refused reload");
    let svc2 = SocketAddr::new(VIP.parse().unwrap(), 5354);
    assert_all_arrived(&send_and_receive(&cl, svc2, &srv2, COUNT), COUNT, "to the port of the refused VIP");
    let text = metrics(&daemon);
    let vip_packets = metric(&text, r#"anycast_vip_packets_total{vip="svc"}"#);
    assert_eq!(vip_packets, Some(2 * u64::from(COUNT)), "{text}");
    assert_eq!(metric(&text, r#"anycast_vip_packets_total{vip="svc2"}"#), None, "{text}");
    assert!(daemon.running(), "the daemon exited after a broken config:\n{}", daemon.log());
}

#[test]
fn controller_reload_removing_a_vip_releases_its_table() {
    if !require("controller_reload_removing_a_vip_releases_its_table", &[Need::Kernel]) {
        return;
    }
    const COUNT: u32 = 100;
    let (cl, site) = local_site("crr");
    let mut daemon = Daemon::new(&site).unwrap();
    let two = format!(
        "{LOCAL_SITE}\n[[vips]]\nname = \"svc2\"\naddress = \"10.200.0.1\"\nport = 5354\nprotocol = \"udp\"\n"
    );
    daemon.write_config(&two).unwrap();
    daemon.start().unwrap();
    let status: Status = daemon.status().expect("/status");
    let svc2 = status.vips.iter().find(|v| v.name == "svc2").expect("svc2 in /status").index;
    assert!(daemon.maps().unwrap().maglev_id(svc2).unwrap().is_some(), "svc2 has a table");

    daemon.write_config(LOCAL_SITE).unwrap();
    let mark = daemon.log_mark();
    daemon.signal(libc::SIGHUP).unwrap();
    daemon.wait_for_log(mark, "SIGHUP: config applied", LOG_TIMEOUT).unwrap();
    // The kernel holds no table for the removed VIP any more (it would stay allocated, up to
    // 256 KiB per VIP, for as long as the pins live), and the remaining VIP serves on.
    let maps = daemon.maps().unwrap();
    assert_eq!(maps.maglev_id(svc2).unwrap(), None, "the removed VIP's table is still in MAGLEV");
    assert_eq!(maps.vips().unwrap().len(), 1);
    let srv = bind(&site, "10.200.0.1:5353");
    assert_all_arrived(&send_and_receive(&cl, vip(), &srv, COUNT), COUNT, "after the removal");
}

/// A local and a remote site serving the VIP, with static weights.
fn two_site_config(here: u32, there: u32) -> String {
    format!(
        r#"[local]
interfaces = ["l0"]
tunnel_v4 = "10.1.0.1"

[[sites]]
name = "here"
local = true
capacity = 100
weight = {here}

[[sites]]
name = "there"
endpoint = "10.9.0.2"
encap = "ip"
capacity = 100
weight = {there}

[[vips]]
name = "svc"
address = "10.200.0.1"
port = 5353
protocol = "udp"
"#
    )
}

/// The share of each site in the VIP's Maglev table as the kernel holds it, read through
/// the pins; sites by name (their slots from `/status`).
fn shares(daemon: &Daemon) -> (f64, f64, Vec<u32>) {
    let status: Status = daemon.status().expect("/status");
    let index = |name: &str| status.sites.iter().find(|s| s.name == name).expect("site in /status").index;
    let vip = status.vips.iter().find(|v| v.name == "svc").expect("svc in /status").index;
    let table = daemon.maps().unwrap().maglev(vip).unwrap().expect("a Maglev table for svc");
    // An entry is a site index plus flags (docs/datapath.md §6).
    let share =
        |site: u32| table.iter().filter(|&&s| s & MAGLEV_SITE == site).count() as f64 / table.len() as f64;
    let (here, there) = (share(index("here")), share(index("there")));
    assert!((here + there - 1.0).abs() < 1e-9, "entries for neither site: {here} + {there}");
    (here, there, table)
}

#[test]
fn controller_reload_applies_new_weights() {
    if !require("controller_reload_applies_new_weights", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("crw");
    let mut daemon = Daemon::new(&site).unwrap();
    daemon.write_config(&two_site_config(100, 100)).unwrap();
    let started = Instant::now();
    daemon.start().unwrap();
    let start_ms = started.elapsed().as_secs_f64() * 1e3;
    let (here, there, before) = shares(&daemon);
    assert!((here - 0.5).abs() < 0.01 && (there - 0.5).abs() < 0.01, "1:1 gave {here:.4} : {there:.4}");
    assert_eq!(before.len(), 65537, "the default Maglev table size");

    daemon.write_config(&two_site_config(100, 300)).unwrap();
    let mark = daemon.log_mark();
    let started = Instant::now();
    daemon.signal(libc::SIGHUP).unwrap();
    let log = daemon.wait_for_log(mark, "SIGHUP: config applied", LOG_TIMEOUT).unwrap();
    let applied_ms = started.elapsed().as_secs_f64() * 1e3;
    let (here, there, after) = shares(&daemon);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / before.len() as f64;
    eprintln!(
        "reload 1:1 → 1:3: {here:.4} : {there:.4}, {:.1}% of entries moved, {applied_ms:.0} ms (start: {start_ms:.0} ms)",
        moved * 100.0
    );
    assert!(
        (here - 0.25).abs() < 0.01 && (there - 0.75).abs() < 0.01,
        "1:3 gave {here:.4} : {there:.4}\n{log}"
    );
    // A quarter of the table must change hands (here's share halves); Maglev moves somewhat
    // more, but rebuilding the table from scratch would move about half of it.
    assert!((0.24..=0.32).contains(&moved), "{:.1} % of the entries moved for 1:1 → 1:3", moved * 100.0);
    // A reload writes only the differences: far less than a start, which loads and verifies
    // the program and writes everything.
    assert!(applied_ms < start_ms, "the reload took {applied_ms:.0} ms, the start {start_ms:.0} ms");
    let text = metrics(&daemon);
    assert_eq!(metric(&text, r#"anycast_site_weight{site="there"}"#), Some(300), "{text}");
    assert_eq!(metric(&text, r#"anycast_site_weight{site="here"}"#), Some(100), "{text}");
}

#[test]
fn controller_second_instance_and_cli_defer_to_the_daemon() {
    if !require("controller_second_instance_and_cli_defer_to_the_daemon", &[Need::Kernel]) {
        return;
    }
    const CLI_TIMEOUT: Duration = Duration::from_secs(30);
    let (_cl, site) = local_site("c2");
    let daemon = Daemon::started(&site, &two_site_config(100, 300)).unwrap();
    let (_, _, table) = shares(&daemon);
    let program = daemon.link_program_id("l0").unwrap();

    // Same pins, other weights. The running daemon holds the pin directory's lock, and the
    // second instance finds that out before it binds, loads, adopts or writes anything; had
    // it written its weights, the running daemon would go on believing the maps hold its own.
    let other = daemon.write_config_to("other.toml", &two_site_config(100, 100)).unwrap();
    let out =
        daemon.cli([OsStr::new("run"), OsStr::new("--config"), other.as_os_str()], &[], CLI_TIMEOUT).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second instance ran:\n{stderr}");
    assert!(stderr.contains("is held by another anycast process"), "{stderr}");
    assert!(!stderr.contains("maps reconciled"), "the second instance wrote the maps:\n{stderr}");
    assert_eq!(shares(&daemon).2, table, "the second instance changed the Maglev table");
    assert_eq!(daemon.link_program_id("l0").unwrap(), program, "the second instance replaced the program");

    // An HTTP proxy in the environment (nothing listens at that address of the client
    // namespace) does not divert the CLI from the local daemon's socket.
    let proxy = "http://10.1.0.2:3128";
    let env = [("ALL_PROXY", proxy), ("HTTP_PROXY", proxy), ("http_proxy", proxy)];
    let socket = daemon.socket();
    let out = daemon
        .cli(
            [OsStr::new("status"), OsStr::new("--json"), OsStr::new("--socket"), socket.as_os_str()],
            &env,
            CLI_TIMEOUT,
        )
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "anycast status with a proxy set:\n{stderr}");
    let status: Status = serde_json::from_slice(&out.stdout).expect("status --json");
    let weights: Vec<(&str, u32)> = status.sites.iter().map(|s| (s.name.as_str(), s.weight)).collect();
    assert_eq!(weights, [("here", 100), ("there", 300)]);
}

#[test]
fn controller_metrics_match_packets_sent() {
    if !require("controller_metrics_match_packets_sent", &[Need::Kernel]) {
        return;
    }
    const TO_VIP: u32 = 300;
    const ELSEWHERE: u32 = 200;
    let (cl, site) = local_site("cm");
    let daemon = Daemon::started(&site, LOCAL_SITE).unwrap();
    let srv = bind(&site, "10.200.0.1:5353");
    let other = bind(&site, "10.1.0.1:6000");
    assert_all_arrived(&send_and_receive(&cl, vip(), &srv, TO_VIP), TO_VIP, "to the VIP");
    let host = "10.1.0.1:6000".parse().unwrap();
    assert_all_arrived(&send_and_receive(&cl, host, &other, ELSEWHERE), ELSEWHERE, "to the host");

    let text = metrics(&daemon);
    let n = u64::from(TO_VIP);
    for (series, want) in [
        (r#"anycast_vip_packets_total{vip="svc"}"#, n),
        (r#"anycast_vip_bytes_total{vip="svc"}"#, n * FRAME),
        (r#"anycast_site_packets_total{site="here",action="local"}"#, n),
        (r#"anycast_site_bytes_total{site="here",action="local"}"#, n * FRAME),
        (r#"anycast_site_packets_total{site="here",action="forwarded"}"#, 0),
        (r#"anycast_site_packets_total{site="here",action="received"}"#, 0),
        ("anycast_site_weight{site=\"here\"}", 100),
        ("anycast_flow_table_capacity", 16384),
    ] {
        assert_eq!(metric(&text, series), Some(want), "{series} in\n{text}");
    }
    // Every exception reason and action is exposed (a dashboard can rely on the series
    // existing), and none was counted: all the traffic was well-formed.
    for e in Exception::ALL {
        for a in Action::ALL {
            let series =
                format!("anycast_exceptions_total{{reason=\"{}\",action=\"{}\"}}", e.name(), a.name());
            assert_eq!(metric(&text, &series), Some(0), "{series} in\n{text}");
        }
    }
    assert!(text.lines().any(|l| l.starts_with("anycast_build_info{version=")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("process_resident_memory_bytes ")), "{text}");
}

/// B's config: serves the VIP.
const CHAIN_B: &str = r#"[local]
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

[[vips]]
name = "svc"
address = "10.200.0.1"
port = 5353
protocol = "udp"
sites = ["b"]
"#;

/// A's config: serves nothing itself (weight 0), so all of the VIP goes to B. a1 is listed
/// so that the program may redirect to it (the controller puts its interfaces in DEVMAP).
const CHAIN_A: &str = r#"[local]
interfaces = ["a0", "a1"]
tunnel_v4 = "10.2.0.1"

[[sites]]
name = "a"
local = true
capacity = 100
weight = 0

[[sites]]
name = "b"
endpoint = "10.2.0.2"
encap = "ip"
capacity = 100

[[vips]]
name = "svc"
address = "10.200.0.1"
port = 5353
protocol = "udp"
"#;

/// B's daemon and A's, started.
fn forward_chain_daemons<'a>(a: &'a Netns, b: &'a Netns) -> (Daemon<'a>, Daemon<'a>) {
    // B first: XDP_REDIRECT into a veth delivers only when the peer (b0) runs XDP.
    let daemon_b = Daemon::started(b, CHAIN_B).unwrap();
    let daemon_a = Daemon::started(a, CHAIN_A).unwrap();
    (daemon_b, daemon_a)
}

#[test]
fn controller_restart_keeps_forwarding_to_remote_site() {
    if !require("controller_restart_keeps_forwarding_to_remote_site", &[Need::Kernel]) {
        return;
    }
    let ForwardChain { client: cl, a, b } = ForwardChain::new("crf", VIP).unwrap();

    let (daemon_b, mut daemon_a) = forward_chain_daemons(&a, &b);
    let program = daemon_a.link_program_id("a0").unwrap();
    let srv = bind(&b, "10.200.0.1:5353");

    let (got, timeline, log) = stream_across_restart(&cl, &srv, &mut daemon_a);
    eprintln!("remote restart: {timeline}; {} received at B", got.count());
    timeline.assert_restart_mid_stream();
    let text_a = metrics(&daemon_a);
    let text_b = metrics(&daemon_b);
    let report = format!("A's log:\n{log}\nA's metrics:\n{text_a}\nB's metrics:\n{text_b}");
    assert_all_arrived(
        &got,
        timeline.sent,
        &format!("datagrams forwarded A → B across A's restart\n{report}"),
    );
    assert!(log.contains("a0: adopted the running instance"), "{report}");
    assert_eq!(daemon_a.link_program_id("a0").unwrap(), program, "the restart replaced A's program");
    let sent = u64::from(timeline.sent);
    let forwarded = metric(&text_a, r#"anycast_site_packets_total{site="b",action="forwarded"}"#);
    let received = metric(&text_b, r#"anycast_site_packets_total{site="a",action="received"}"#);
    assert_eq!(forwarded, Some(sent), "A's forwarded count\n{report}");
    assert_eq!(received, Some(sent), "B's received count\n{report}");
    assert_eq!(
        metric(&text_a, r#"anycast_site_packets_total{site="a",action="local"}"#),
        Some(0),
        "{report}"
    );
    // B does not steer what it decapsulated: its own VIP counters stay at zero.
    assert_eq!(metric(&text_b, r#"anycast_vip_packets_total{vip="svc"}"#), Some(0), "{report}");
}

/// A restart with another `maglev_table_size` rebuilds A's Maglev tables (their size is
/// fixed when the data path starts) under traffic: the program is swapped onto the new
/// tables, every datagram still reaches B, and a reload that changes the size again is
/// refused with the reason.
#[test]
fn controller_restart_with_another_maglev_size_rebuilds_the_tables_and_loses_nothing() {
    if !require(
        "controller_restart_with_another_maglev_size_rebuilds_the_tables_and_loses_nothing",
        &[Need::Kernel],
    ) {
        return;
    }
    let ForwardChain { client: cl, a, b } = ForwardChain::new("crm", VIP).unwrap();
    let (daemon_b, mut daemon_a) = forward_chain_daemons(&a, &b);
    let program = daemon_a.link_program_id("a0").unwrap();
    let table = |d: &Daemon| d.maps().unwrap().maglev(0).unwrap().expect("the VIP's table").len();
    assert_eq!(table(&daemon_a), 65537);
    let srv = bind(&b, "10.200.0.1:5353");

    daemon_a.add_datapath_option("maglev_table_size = 1021");
    daemon_a.write_config(CHAIN_A).unwrap();
    let (got, timeline, log) = stream_across_restart(&cl, &srv, &mut daemon_a);
    eprintln!("restart with another table size: {timeline}; {} received at B", got.count());
    timeline.assert_restart_mid_stream();
    let text_a = metrics(&daemon_a);
    let report = format!("A's log:\n{log}\nA's metrics:\n{text_a}\nB's metrics:\n{}", metrics(&daemon_b));
    assert_all_arrived(
        &got,
        timeline.sent,
        &format!("datagrams forwarded A → B across the rebuild\n{report}"),
    );
    assert!(log.contains("rebuilding them"), "{report}");
    assert!(log.contains("a0: program upgraded in place"), "{report}");
    assert_ne!(daemon_a.link_program_id("a0").unwrap(), program, "the program still runs on the old tables");
    assert_eq!(table(&daemon_a), 1021, "{report}");
    let forwarded = metric(&text_a, r#"anycast_site_packets_total{site="b",action="forwarded"}"#);
    assert_eq!(forwarded, Some(u64::from(timeline.sent)), "A's forwarded count\n{report}");

    daemon_a.clear_datapath_options();
    daemon_a.add_datapath_option("maglev_table_size = 251");
    daemon_a.write_config(CHAIN_A).unwrap();
    let mark = daemon_a.log_mark();
    daemon_a.signal(libc::SIGHUP).unwrap();
    daemon_a.wait_for_log(mark, "SIGHUP: refused", LOG_TIMEOUT).unwrap();
    let outcome = daemon_a.status().unwrap().reload.expect("the reload's outcome");
    assert!(!outcome.ok, "{outcome:?}");
    assert!(
        outcome.message.contains("datapath.maglev_table_size cannot change while the controller runs"),
        "{outcome:?}"
    );
    assert_eq!(table(&daemon_a), 1021, "the refused reload changed the tables");
}

/// A restart with an interface dropped from the config detaches that interface's pinned
/// link (left attached, its program would steer by maps that no reconcile, health check or
/// weight change reaches any more); the configured interfaces carry on untouched.
#[test]
fn controller_restart_without_an_interface_detaches_its_link() {
    if !require("controller_restart_without_an_interface_detaches_its_link", &[Need::Kernel]) {
        return;
    }
    let ForwardChain { client: cl, a, b } = ForwardChain::new("crd", VIP).unwrap();
    a.add_veth("ax", &a, "ay").unwrap();
    let with_ax = CHAIN_A.replace(r#"interfaces = ["a0", "a1"]"#, r#"interfaces = ["a0", "a1", "ax"]"#);
    assert_ne!(with_ax, CHAIN_A);
    let _daemon_b = Daemon::started(&b, CHAIN_B).unwrap();
    let mut daemon_a = Daemon::started(&a, &with_ax).unwrap();
    let xdp_on = |ifname: &str| {
        a.ip(&["-d", "link", "show", "dev", ifname])
            .unwrap()
            .lines()
            .any(|l| l.trim().starts_with("prog/xdp"))
    };
    assert!(xdp_on("ax"), "the program is not on ax");
    let program = daemon_a.link_program_id("a0").unwrap();
    let srv = bind(&b, "10.200.0.1:5353");

    daemon_a.write_config(CHAIN_A).unwrap();
    let (got, timeline, log) = stream_across_restart(&cl, &srv, &mut daemon_a);
    eprintln!("restart without ax: {timeline}; {} received at B", got.count());
    timeline.assert_restart_mid_stream();
    let report = format!("A's log:\n{log}");
    assert_all_arrived(
        &got,
        timeline.sent,
        &format!("datagrams forwarded A → B across the restart\n{report}"),
    );
    assert!(log.contains("ax: detached (no longer configured)"), "{report}");
    assert!(!xdp_on("ax"), "the program is still on ax\n{report}");
    assert!(!daemon_a.pin_dir().join("links").join("ax").exists(), "ax's link is still pinned");
    assert!(log.contains("a0: adopted the running instance"), "{report}");
    assert_eq!(daemon_a.link_program_id("a0").unwrap(), program, "the restart replaced a0's program");
}

/// A Maglev rebuild goes before the config: a start with another table size and a new VIP,
/// killed after the first link's swap, has written nothing of the new config (VIP slots,
/// sites) while links still ran the old tables, and the swapped link steers by the running
/// state; the next start completes the rebuild and applies the config. The stream through
/// A loses nothing.
#[test]
fn controller_rebuild_killed_at_the_swap_keeps_the_running_state_and_the_next_start_completes_it() {
    let name =
        "controller_rebuild_killed_at_the_swap_keeps_the_running_state_and_the_next_start_completes_it";
    if !require(name, &[Need::Kernel]) {
        return;
    }
    let ForwardChain { client: cl, a, b } = ForwardChain::new("crk", VIP).unwrap();
    let (_daemon_b, mut daemon_a) = forward_chain_daemons(&a, &b);
    let programs = |d: &Daemon| [d.link_program_id("a0").unwrap(), d.link_program_id("a1").unwrap()];
    let before = programs(&daemon_a);
    let vips = |d: &Daemon| d.maps().unwrap().vips().unwrap().len();
    assert_eq!(vips(&daemon_a), 1);
    let srv = bind(&b, "10.200.0.1:5353");
    let with_vip = format!(
        "{CHAIN_A}\n[[vips]]\nname = \"other\"\naddress = \"10.200.0.9\"\nport = 53\nprotocol = \"udp\"\n"
    );

    let sender = Sender::new(bind(&cl, "0.0.0.0:0"), vip(), RATE, MAX_STREAM);
    let (got, logs, killed) = thread::scope(|s| {
        let _stop = StopOnDrop(&sender);
        let tx = s.spawn(|| sender.run());
        let rx = s.spawn(|| sequenced::receive(&srv, &sender, IDLE));
        thread::sleep(SETTLE);
        daemon_a.kill().expect("SIGKILL A's controller");
        daemon_a.add_datapath_option("maglev_table_size = 1021");
        daemon_a.write_config(&with_vip).unwrap();
        daemon_a.set_env(fault::ENV, Some("swap"));
        let killed_log = match daemon_a.start() {
            Err(DaemonError::Exited { log, .. }) => log,
            other => panic!("the controller was to be killed at the swap: {other:?}"),
        };
        // What the kill left: one link on the new tables, the other on the old ones, and
        // the shared maps as the running config had them.
        let killed = (programs(&daemon_a), vips(&daemon_a));
        thread::sleep(SETTLE);
        daemon_a.set_env(fault::ENV, None);
        let log = daemon_a.start().expect("the next start");
        thread::sleep(SETTLE);
        sender.stop();
        tx.join().expect("sender");
        (rx.join().expect("receiver"), [killed_log, log], killed)
    });
    let report = format!("killed start:\n{}\nnext start:\n{}", logs[0], logs[1]);
    assert!(logs[0].contains("killed at `swap`"), "{report}");
    let ([a0, a1], vips_killed) = killed;
    assert!(
        a0 != before[0] && a1 == before[1],
        "links after the kill: {:?} (before {before:?})\n{report}",
        [a0, a1]
    );
    assert_eq!(vips_killed, 1, "the new config's VIP was written before the swap\n{report}");
    assert_all_arrived(&got, sender.sent(), &format!("datagrams through A across the rebuild\n{report}"));
    assert_eq!(vips(&daemon_a), 2, "{report}");
    assert_eq!(daemon_a.maps().unwrap().maglev(0).unwrap().expect("svc's table").len(), 1021, "{report}");
    let after = programs(&daemon_a);
    assert!(after[0] != before[0] && after[1] != before[1], "links still on the old tables: {after:?}");
    assert!(!daemon_a.pin_dir().join(anycast_user::datapath::layout::STAGING).exists(), "staging left");
}

/// With no VIP configured the Maglev outer map holds no table, and the shape of its tables
/// is read off its name: a restart adopts the running program, it does not rebuild the
/// tables and swap it.
#[test]
fn controller_restart_with_no_vip_adopts_the_running_instance() {
    if !require("controller_restart_with_no_vip_adopts_the_running_instance", &[Need::Kernel]) {
        return;
    }
    let ns = Netns::new("crn").unwrap();
    ns.add_veth("n0", &ns, "n1").unwrap();
    let mut daemon = Daemon::new(&ns).unwrap();
    daemon
        .write_config(
            "[local]\ninterfaces = [\"n0\"]\n\n[[sites]]\nname = \"a\"\nlocal = true\ncapacity = 100\n",
        )
        .unwrap();
    daemon.start().unwrap();
    let program = daemon.link_program_id("n0").unwrap();
    daemon.kill().unwrap();
    let log = daemon.start().unwrap();
    assert!(!log.contains("rebuilding them"), "{log}");
    assert!(log.contains("n0: adopted the running instance"), "{log}");
    assert_eq!(daemon.link_program_id("n0").unwrap(), program, "the restart replaced the program");
}

/// A sheds half of a TCP VIP to B; `check_grace` short enough for a test.
const CHECK_A: &str = r#"[local]
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

[[vips]]
name = "web"
address = "10.200.0.1"
port = 80
protocol = "tcp"
"#;
const CHECK_GRACE_S: u64 = 2;
const FIN_ACK: u8 = 0x11;

#[test]
fn controller_clears_check_flags_once_no_pin_needs_them() {
    if !require("controller_clears_check_flags_once_no_pin_needs_them", &[Need::Kernel]) {
        return;
    }
    let chain = ForwardChain::new("ccf", VIP).unwrap();
    let mut a = Daemon::new(&chain.a).unwrap();
    a.add_datapath_option(&format!("check_grace = {CHECK_GRACE_S}"));
    a.write_config(CHECK_A).unwrap();
    a.start().unwrap();
    let status: Status = a.status().expect("/status");
    let site = |name: &str| status.sites.iter().find(|s| s.name == name).expect("site in /status").index;
    let site_b = site("b");
    let vip = status.vips.iter().find(|v| v.name == "web").expect("web in /status").index;
    let table = a.maps().unwrap().maglev(vip).unwrap().expect("web's table");
    let key = |sport: u16| packet::tcp("10.1.0.2", VIP, sport, 80, ACK).key();
    let slot = |sport: u16| reference::maglev_slot(reference::flow_hash(&key(sport), &KEY), table.len());
    // Three connections in distinct buckets that name B.
    let mut ports: Vec<u16> = Vec::new();
    for sport in 40000.. {
        if table[slot(sport)] & MAGLEV_SITE == site_b && ports.iter().all(|&p| slot(p) != slot(sport)) {
            ports.push(sport);
        }
        if ports.len() == 3 {
            break;
        }
    }
    let (idle, closed, half_closed) = (ports[0], ports[1], ports[2]);
    let remote = table.iter().filter(|&&e| e & MAGLEV_SITE == site_b).count() as u64;

    let socket = PacketSocket::open(&chain.client, "c0").expect("a packet socket on c0");
    let (a0, c0) = (chain.a.mac("a0").unwrap(), chain.client.mac("c0").unwrap());
    let send = |sport: u16, flags: u8| {
        let frame = packet::tcp("10.1.0.2", VIP, sport, 80, flags).macs(a0, c0).frame();
        socket.send(&frame).expect("a frame sent");
    };
    for &p in &ports {
        send(p, SYN);
        send(p, ACK);
    }
    let pinned = |maps: &anycast_user::datapath::maps::DataPathMaps| {
        ports.iter().all(|&p| maps.flow(&key(p)).unwrap().is_some_and(|v| u32::from(v.site) == site_b))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pinned(&a.maps().unwrap()) {
        assert!(Instant::now() < deadline, "the handshakes did not pin their flows to B\n{}", a.log());
        thread::sleep(Duration::from_millis(50));
    }
    let checked = |a: &Daemon| metric(&metrics(a), "anycast_maglev_checked_buckets");
    assert_eq!(checked(&a), Some(0), "nothing was remote before this table");

    let out = a.cli(["drain", "b", "--config", a.config_path().to_str().unwrap()], &[], LOG_TIMEOUT).unwrap();
    assert!(out.status.success(), "drain: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(checked(&a), Some(remote), "every bucket that named B came home flagged");
    let mark = a.log_mark();
    send(closed, FIN_ACK);
    send(half_closed, FIN_ACK);
    // The FINs mark their pins closing, in their own entries (bit 15 of the state, beside
    // the site); the idle one's stays 0.
    let closing = |p: u16| a.maps().unwrap().flow(&key(p)).unwrap().map(|v| (v.site, v.state & 0x8000));
    let b16 = site_b as u16;
    let deadline = Instant::now() + Duration::from_secs(2);
    while closing(closed) != Some((b16, 0x8000)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        [closing(idle), closing(closed), closing(half_closed)],
        [Some((b16, 0)), Some((b16, 0x8000)), Some((b16, 0x8000))],
        "the pins' (site, closing bit) after the FINs"
    );
    // The half-closed connection's client ACKs the server's data while the flags are swept.
    let deadline = Instant::now() + Duration::from_secs(8 * CHECK_GRACE_S + 10);
    let mut kept = checked(&a);
    while kept != Some(2) && Instant::now() < deadline {
        send(half_closed, ACK);
        thread::sleep(Duration::from_millis(250));
        kept = checked(&a);
    }
    let log = a.log();
    assert_eq!(
        kept,
        Some(2),
        "the buckets of the idle and the half-closed connections stay flagged, no other\n{log}"
    );
    let table = a.maps().unwrap().maglev(vip).unwrap().unwrap();
    for (what, p, flagged) in
        [("idle", idle, true), ("closed", closed, false), ("half-closed", half_closed, true)]
    {
        assert_eq!(table[slot(p)] & MAGLEV_CHECK != 0, flagged, "the {what} connection's bucket\n{log}");
    }
    let swept = a.wait_for_log(mark, "check flags: cleared", LOG_TIMEOUT).unwrap();
    eprintln!("{}", swept.lines().find(|l| l.contains("check flags: cleared")).unwrap_or(""));
    assert!(pinned(&a.maps().unwrap()), "the sweep writes no pin: the closed one is still in the table");

    let count = |site: &str, action: &str| {
        let text = metrics(&a);
        let n = metric(&text, &format!(r#"anycast_site_packets_total{{site="{site}",action="{action}"}}"#));
        (n.unwrap_or(0), text)
    };
    let (fwd, local) = (count("b", "forwarded").0, count("a", "local").0);
    send(idle, PSH_ACK);
    send(half_closed, ACK);
    send(closed, ACK);
    // The frames reach A's program from c0's queue: within moments.
    let deadline = Instant::now() + Duration::from_secs(2);
    let settled = || count("b", "forwarded").0 >= fwd + 2 && count("a", "local").0 > local;
    while !settled() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let (now_fwd, text) = count("b", "forwarded");
    assert_eq!(now_fwd, fwd + 2, "the idle and half-closed connections still go to B\n{text}");
    assert_eq!(
        count("a", "local").0,
        local + 1,
        "the closed connection's bucket is local: no lookup\n{text}"
    );
}
