//! BGP (issue 8), end to end: the site's controller drives a real BIRD (the site's
//! speaker), peered over eBGP with a second BIRD (the "upstream router") in another
//! namespace whose import honours GRACEFUL_SHUTDOWN (RFC 8326: LOCAL_PREF 0, as README
//! "BGP" shows); the test reads what the upstream learned. Root only. Transition times are
//! printed for the issue's note.
//!
//! ```text
//! [site: anycast run + BIRD AS 65001] s0 10.9.0.1 ⇄ u0 10.9.0.2 [upstream: BIRD AS 65000]
//! ```

use std::{
    net::UdpSocket,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anycast_tests::{
    admin::AdminApi,
    bird::{Bird, Learned},
    pinned::Pinned,
};
use anycast_user::{
    bgp::{self, EXPORT_FILTER},
    config::Config,
    model::Route,
};
use testkit::{
    daemon::Daemon,
    metrics::metric,
    netns::Netns,
    require::{BIRD, BIRDC, Need, require},
    wait,
};

const VIP: &str = "10.200.0.1";
const VIP_NET: &str = "10.200.0.1/32";
const VIP6_NET: &str = "2001:db8:53::1/128";
const SITE_AS: u32 = 65001;
const UPSTREAM_AS: u32 = 65000;
const INTERVAL: Duration = Duration::from_millis(250);
const RISE: u32 = 2;
const FALL: u32 = 2;
const MED: u32 = 500;
const PREPEND: usize = 2;
/// `[bgp] graceful_shutdown_ms`: 8 intervals, short enough for a test, long enough to undo
/// a drain inside it.
const GRACEFUL: Duration = Duration::from_millis(2000);
/// The import policy of a router that honours GRACEFUL_SHUTDOWN (README "BGP").
const HONOUR_GSHUT: &str = "filter { if (65535, 0) ~ bgp_community then bgp_local_pref = 0; accept; };";
/// The most a transition may take: `fall` (or `rise`) intervals, one more for the phase of
/// the tick, birdc and the BGP update, with room for a CPU shared by other tests.
const WINDOW: Duration = Duration::from_secs(3);
/// Packets/s at utilisation 1 of the only site: the test's 1,000 pps overload it tenfold.
const CAPACITY: u32 = 100;

/// Upstream first in the struct: fields drop in order, the BIRDs before their namespaces.
struct Lab {
    upstream: Bird,
    speaker: Bird,
    up: Netns,
    site: Netns,
}

fn bgp_session(
    name: &str,
    local: &str,
    local_as: u32,
    neighbor: &str,
    neighbor_as: u32,
    channel: &str,
) -> String {
    // connect delay / retry of 1 s: the first attempt of whichever side starts first fails.
    format!(
        "protocol bgp {name} {{\n  local {local} as {local_as};\n  neighbor {neighbor} as {neighbor_as};\n  \
         connect delay time 1;\n  connect retry time 1;\n  ipv4 {{\n    import {channel}\n  }};\n}}\n"
    )
}

fn lab() -> Lab {
    let site = Netns::new("bgp-s").expect("site namespace");
    let up = Netns::new("bgp-u").expect("upstream namespace");
    site.add_veth("s0", &up, "u0").expect("veth");
    site.add_addr("s0", "10.9.0.1/24").expect("address");
    up.add_addr("u0", "10.9.0.2/24").expect("address");
    site.add_addr("lo", &format!("{VIP}/32")).expect("VIP");
    up.add_route(&[VIP_NET, "via", "10.9.0.1"]).expect("route to the VIP");

    let upstream_conf = format!(
        "router id 10.9.0.2;\nlog stderr all;\nprotocol device {{}}\n{}",
        bgp_session(
            "site",
            "10.9.0.2",
            UPSTREAM_AS,
            "10.9.0.1",
            SITE_AS,
            &format!("{HONOUR_GSHUT}\n    export none;")
        )
    );
    let upstream =
        Bird::start(&up, Bird::dir_for("upstream").expect("dir"), &upstream_conf).expect("upstream BIRD");
    // The speaker as an operator configures it (README "BGP"): the controller's file
    // included by pattern (it does not exist yet: BIRD must start anyway), the VIP routes
    // exported with the documented filter.
    let dir = Bird::dir_for("speaker").expect("dir");
    let export = EXPORT_FILTER.replace('\n', "\n    ");
    let speaker_conf = format!(
        "router id 10.9.0.1;\nlog stderr all;\nprotocol device {{}}\ninclude \"{}/anycast*.conf\";\n{}",
        dir.display(),
        bgp_session(
            "upstream",
            "10.9.0.1",
            SITE_AS,
            "10.9.0.2",
            UPSTREAM_AS,
            &format!("none;\n    {export}")
        )
    );
    let speaker = Bird::start(&site, dir, &speaker_conf).expect("speaker BIRD");
    upstream
        .wait_for("establish the session", Duration::from_secs(30), |b| b.established("site"))
        .expect("eBGP session");
    Lab { upstream, speaker, up, site }
}

/// The controller's config: one local site with its VIPs, `[load]` so that traffic can
/// overload it (no sibling: no headroom anywhere), `[bgp]` on the speaker.
fn config(speaker: &Path, socket: &Path, interfaces: &str) -> String {
    format!(
        r#"[local]
interfaces = [{interfaces}]

[[sites]]
name = "a"
local = true
capacity = {CAPACITY}

[[vips]]
name = "udp"
address = "{VIP}"
port = 5300
protocol = "udp"

[[vips]]
name = "dns6"
address = "2001:db8:53::1"
port = 53
protocol = "udp"

[load]
target = 0.8
high = 0.9
low = 0.7
interval_ms = 250
smoothing_ms = 500
cpu = false

[bgp]
socket = "{}"
include = "{}/anycast.conf"
interval_ms = {}
rise = {RISE}
fall = {FALL}
deprefer_med = {MED}
deprefer_prepend = {PREPEND}
local_as = {SITE_AS}
# The states, not the timescales (minutes by default), are under test here.
deprefer_after_ms = 0
hold_down_ms = 0
graceful_shutdown_ms = {}
"#,
        socket.display(),
        speaker.display(),
        INTERVAL.as_millis(),
        GRACEFUL.as_millis()
    )
}

/// The upstream's default LOCAL_PREF for what it learns.
const LOCAL_PREF: u32 = 100;

fn announced() -> Learned {
    Learned { as_path: vec![SITE_AS], med: None, local_pref: Some(LOCAL_PREF), communities: vec![] }
}

fn depreferred() -> Learned {
    Learned { as_path: vec![SITE_AS; PREPEND + 1], med: Some(MED), ..announced() }
}

/// `before` in graceful shutdown: its attributes, the community, and LOCAL_PREF 0 by the
/// upstream's policy.
fn shutting_down(before: Learned) -> Learned {
    Learned { local_pref: Some(0), communities: vec![bgp::GRACEFUL_SHUTDOWN], ..before }
}

/// Waits until the upstream loses the VIP's route, which it must hold as `meanwhile` until
/// then; the time it took.
fn held_until_withdrawn(lab: &Lab, meanwhile: &Learned, what: &str, d: &Daemon) -> Duration {
    lab.upstream
        .wait_for(what, GRACEFUL + WINDOW * 2, |b| match b.route(VIP_NET) {
            Ok(None) => true,
            Ok(Some(l)) => {
                assert_eq!(&l, meanwhile, "{what}: the upstream's route changed\n{}", d.log());
                false
            }
            Err(_) => false,
        })
        .unwrap_or_else(|e| panic!("{e}\ndaemon log:\n{}", d.log()))
}

/// Waits until the upstream's route for the VIP is `want` (`None`: withdrawn).
fn wait_route(lab: &Lab, want: Option<Learned>, what: &str) -> Duration {
    lab.upstream
        .wait_for(what, WINDOW * 3, |b| b.route(VIP_NET).ok() == Some(want.clone()))
        .unwrap_or_else(|e| panic!("{e}\nupstream has {:?}", lab.upstream.route(VIP_NET)))
}

fn bgp_metric(d: &Daemon, series: &str) -> u64 {
    let text = d.get("/metrics").expect("/metrics");
    metric(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

fn state(d: &Daemon, state: &str) -> u64 {
    bgp_metric(d, &format!("anycast_bgp_state{{vip=\"{VIP_NET}\",state=\"{state}\"}}"))
}

fn transitions(d: &Daemon, to: &str) -> u64 {
    bgp_metric(d, &format!("anycast_bgp_transitions_total{{vip=\"{VIP_NET}\",to=\"{to}\"}}"))
}

/// The figures `read` gives once they are `want`, or as they stand after 2 s: the upstream
/// can learn a route a moment before the daemon's metrics show the transition that sent it
/// (BIRD exports while the daemon is still publishing).
fn settled<const N: usize>(want: [u64; N], read: impl Fn() -> [u64; N]) -> [u64; N] {
    let _ = wait::until(Duration::from_secs(2), || read() == want);
    read()
}

/// `anycast ARGS` in the site namespace; panics with its output unless it succeeds.
fn cli(d: &Daemon, args: &[&str]) -> String {
    let out = d.cli(args, &[], Duration::from_secs(20)).expect("anycast cli");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "anycast {args:?} failed: {text}");
    text
}

/// 1,000 UDP datagrams/s to the VIP from the upstream side until `stop` (at most 30 s).
fn overload(up: &Netns, stop: &AtomicBool) {
    up.run(|| {
        let sock = UdpSocket::bind("10.9.0.2:0").expect("bind");
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(30) {
            for _ in 0..10 {
                // Errors (an ICMP unreachable reported back) do not matter: the data path
                // has counted the datagram by then.
                let _ = sock.send_to(b"load", (VIP, 5300));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

#[test]
fn bgp_announce_withdraw_deprefer_follow_the_site() {
    if !require("bgp_announce_withdraw_deprefer_follow_the_site", &[Need::Kernel, BIRD, BIRDC]) {
        return;
    }
    let lab = lab();
    let mut d = Daemon::new(&lab.site).expect("daemon");
    let speaker_dir = lab.speaker.dir().to_owned();
    d.write_config(&config(&speaker_dir, &lab.speaker.socket(), "\"s0\"")).expect("config");
    d.start().expect("start");
    let config_path = d.config_path();
    let config_arg = config_path.to_str().expect("utf-8 path");

    // Healthy: learned as is; the IPv6 VIP is in the speaker's table (the session is IPv4).
    let learned = wait_route(&lab, Some(announced()), "learn the VIP");
    assert!(lab.speaker.route(VIP6_NET).expect("speaker").is_some(), "{}", lab.speaker.log());
    assert_eq!(settled([1, 1], || [state(&d, "announce"), bgp_metric(&d, "anycast_bgp_in_sync")]), [1, 1]);
    assert_eq!(bgp_metric(&d, "anycast_bgp_apply_failures_total"), 0);
    println!("bgp: learned {:.2} s after the daemon was ready", learned.as_secs_f64());

    // Drained: within the fall window the upstream learns the route with GRACEFUL_SHUTDOWN
    // (and so LOCAL_PREF 0), holds it so for `graceful_shutdown_ms`, then loses it.
    let t0 = Instant::now();
    cli(&d, &["drain", "a", "--config", config_arg]);
    wait_route(&lab, Some(shutting_down(announced())), "graceful shutdown after drain");
    let drained = t0.elapsed();
    assert!(drained <= WINDOW, "drain → graceful shutdown took {drained:?}");
    // The daemon is in its graceful shutdown — or past it already, when the upstream
    // learned the route late (BIRD's propagation on a loaded machine): its transitions say.
    // The state is published once BIRD's answer reaches the daemon, which may be after the
    // upstream learned the route.
    let [graceful] = settled([1], || [state(&d, "graceful_shutdown")]);
    assert!(
        graceful == 1 || t0.elapsed() >= GRACEFUL,
        "not in graceful shutdown {:?} after the drain",
        t0.elapsed()
    );
    assert_eq!(settled([1], || [transitions(&d, "graceful_shutdown")]), [1]);
    let shut =
        held_until_withdrawn(&lab, &shutting_down(announced()), "withdraw after the graceful shutdown", &d);
    // Held for the graceful time: measured from the drain, since the upstream may have
    // learned the graceful route late (a withdraw with no hold comes FALL intervals after it).
    assert!(
        drained + shut >= GRACEFUL - INTERVAL,
        "withdrawn {:?} after the drain (graceful shutdown seen after {drained:?})",
        drained + shut
    );
    assert!(shut <= GRACEFUL + WINDOW, "graceful shutdown → withdrawn took {shut:?}");
    assert_eq!(settled([1, 1], || [state(&d, "withdraw"), transitions(&d, "withdraw")]), [1, 1]);
    for line in [
        format!(
            "bgp: {VIP_NET} (udp): announce → graceful_shutdown (drained, {FALL} intervals; withdrawn in {GRACEFUL:?})"
        ),
        format!("bgp: {VIP_NET} (udp): graceful_shutdown → withdraw (drained, after its graceful shutdown)"),
    ] {
        assert_eq!(d.log().matches(&line).count(), 1, "one log line per transition:\n{}", d.log());
    }

    // Undrained: announced again, after `rise` intervals (never sooner than rise - 1).
    let t0 = Instant::now();
    cli(&d, &["undrain", "a", "--config", config_arg]);
    wait_route(&lab, Some(announced()), "announce after undrain");
    let undrained = t0.elapsed();
    assert!(undrained <= WINDOW, "undrain → announced took {undrained:?}");
    assert!(undrained >= INTERVAL * (RISE - 1), "announced after {undrained:?}: no rise hysteresis");
    assert_eq!(settled([1], || [transitions(&d, "announce")]), [1]);

    // Drained and undrained within the graceful shutdown: announced as before at the next
    // interval (the route never left the upstream), nothing withdrawn.
    cli(&d, &["drain", "a", "--config", config_arg]);
    wait_route(&lab, Some(shutting_down(announced())), "graceful shutdown after the second drain");
    let t0 = Instant::now();
    cli(&d, &["undrain", "a", "--config", config_arg]);
    let cancelled = lab
        .upstream
        .wait_for("announce after a cancelled graceful shutdown", WINDOW, |b| match b.route(VIP_NET) {
            Ok(r) => {
                assert!(r.is_some(), "withdrawn although undrained in the graceful shutdown:\n{}", d.log());
                r == Some(announced())
            }
            Err(_) => false,
        })
        .unwrap_or_else(|e| panic!("{e}\ndaemon log:\n{}", d.log()));
    assert!(t0.elapsed() < GRACEFUL, "undrain → announced took {cancelled:?}");
    let counts =
        || [transitions(&d, "graceful_shutdown"), transitions(&d, "withdraw"), transitions(&d, "announce")];
    assert_eq!(settled([2, 1, 2], counts), [2, 1, 2]);

    // The controller crashes inside a graceful shutdown and comes back: it resumes it with
    // the time it had left (as the include file says), not from the start, and withdraws.
    cli(&d, &["drain", "a", "--config", config_arg]);
    wait_route(&lab, Some(shutting_down(announced())), "graceful shutdown before the crash");
    let began = Instant::now();
    d.kill().expect("kill");
    d.start().expect("restart");
    let restart = began.elapsed();
    held_until_withdrawn(&lab, &shutting_down(announced()), "withdraw after the restart", &d);
    let resumed = began.elapsed();
    assert!(d.log().contains("graceful_shutdown (as BIRD holds it; wanted: withdraw)"), "{}", d.log());
    assert_eq!(
        settled([0, 1], || [transitions(&d, "graceful_shutdown"), transitions(&d, "withdraw")]),
        [0, 1]
    );
    assert!(resumed <= GRACEFUL + WINDOW, "graceful shutdown with a restart → withdrawn took {resumed:?}");
    // Started over, it would end a whole graceful_shutdown_ms after the restart.
    assert!(
        resumed < restart + GRACEFUL,
        "withdrawn {resumed:?} after it began, restart {restart:?}: started over"
    );
    cli(&d, &["undrain", "a", "--config", config_arg]);
    wait_route(&lab, Some(announced()), "announce after the resumed graceful shutdown");

    // Overloaded, and no other site to shed to: de-preferred (MED and AS path length) while
    // it lasts, announced as is once the load is gone.
    let stop = AtomicBool::new(false);
    let (to_deprefer, back) = std::thread::scope(|s| {
        s.spawn(|| overload(&lab.up, &stop));
        let t0 = Instant::now();
        let to_deprefer = lab.upstream.wait_for("de-prefer under overload", Duration::from_secs(10), |b| {
            b.route(VIP_NET).ok() == Some(Some(depreferred()))
        });
        stop.store(true, Ordering::Relaxed);
        let t1 = Instant::now();
        let back = lab.upstream.wait_for("announce after the overload", Duration::from_secs(10), |b| {
            b.route(VIP_NET).ok() == Some(Some(announced()))
        });
        (to_deprefer.map(|_| t0.elapsed()), back.map(|_| t1.elapsed()))
    });
    let to_deprefer = to_deprefer.unwrap_or_else(|e| panic!("{e}\ndaemon log:\n{}", d.log()));
    let back = back.expect("announce after the overload");
    assert_eq!(settled([1, 2], || [transitions(&d, "deprefer"), transitions(&d, "announce")]), [1, 2]);

    // SIGHUP with a VIP more but a wrong BIRD socket: the failure is counted and retried,
    // nothing changes at the upstream.
    let base = config(&speaker_dir, &lab.speaker.socket(), "\"s0\"");
    let more = "\n[[vips]]\nname = \"late\"\naddress = \"10.200.0.9\"\nport = 80\nprotocol = \"tcp\"\n";
    let wrong = config(&speaker_dir, &speaker_dir.join("no-such.ctl"), "\"s0\"");
    d.write_config(&format!("{wrong}{more}")).expect("config");
    d.signal(libc::SIGHUP).expect("SIGHUP");
    // Retried every interval: two failures come within a few (the reload first builds the
    // new VIP's table); a loaded machine gets the time it needs.
    let retried = wait::until(INTERVAL * 20, || bgp_metric(&d, "anycast_bgp_apply_failures_total") >= 2);
    let failures = bgp_metric(&d, "anycast_bgp_apply_failures_total");
    assert!(retried.is_some(), "{failures} failures in 20 intervals: not retried?\n{}", d.log());
    assert_eq!(bgp_metric(&d, "anycast_bgp_in_sync"), 0);
    assert_eq!(lab.upstream.route("10.200.0.9/32").expect("upstream"), None);
    assert!(d.log().contains("no-such.ctl"), "the failure is not in the log:\n{}", d.log());
    // Fixed: announced at the next interval; the others untouched.
    d.write_config(&format!("{base}{more}")).expect("config");
    d.signal(libc::SIGHUP).expect("SIGHUP");
    let late = lab
        .upstream
        .wait_for("learn the VIP added by SIGHUP", WINDOW, |b| {
            b.route("10.200.0.9/32").ok() == Some(Some(announced()))
        })
        .unwrap_or_else(|e| panic!("{e}\ndaemon log:\n{}", d.log()));
    assert_eq!(lab.upstream.route(VIP_NET).expect("upstream"), Some(announced()));
    // In sync once BIRD's answer reaches the daemon, which may be after the upstream learned.
    assert_eq!(settled([1], || [bgp_metric(&d, "anycast_bgp_in_sync")]), [1]);
    d.write_config(&base).expect("config");
    d.signal(libc::SIGHUP).expect("SIGHUP");
    lab.upstream
        .wait_for("withdraw the VIP removed by SIGHUP", WINDOW, |b| {
            b.route("10.200.0.9/32").ok() == Some(None)
        })
        .unwrap_or_else(|e| panic!("{e}\ndaemon log:\n{}", d.log()));

    // The controller crashes (SIGKILL) and restarts: the VIP stays learned throughout (BIRD
    // keeps the last state; the pinned data path keeps forwarding), and the restart does
    // not flap it.
    d.kill().expect("kill");
    let until = Instant::now() + INTERVAL * 6;
    while Instant::now() < until {
        assert_eq!(
            lab.upstream.route(VIP_NET).expect("upstream"),
            Some(announced()),
            "lost with the controller"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.start().expect("restart");
    let until = Instant::now() + INTERVAL * 6;
    while Instant::now() < until {
        assert_eq!(lab.upstream.route(VIP_NET).expect("upstream"), Some(announced()), "flapped on restart");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The restarted daemon publishes its BGP state after its first step (steering's first
    // report), not at once.
    let published = || d.get("/metrics").is_ok_and(|t| t.contains("anycast_bgp_state{"));
    assert!(wait::until(Duration::from_secs(5), published).is_some(), "no BGP state:\n{}", d.log());
    assert_eq!(settled([1, 0], || [state(&d, "announce"), transitions(&d, "withdraw")]), [1, 0]);

    // Detach while the daemon runs: refused (it holds the links; unpinning would detach
    // nothing until it exits), nothing withdrawn or detached.
    let out = d.cli(["detach", "--config", config_arg], &[], Duration::from_secs(20)).expect("cli");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("a daemon is running"), "{stderr}");
    assert!(d.pin_dir().exists(), "detached under a running daemon");
    assert_eq!(lab.upstream.route(VIP_NET).expect("upstream"), Some(announced()));

    // The daemon stopped (the withdrawal is detach's own). Detach while BIRD cannot be told:
    // refused, nothing detached, the VIP still learned.
    d.signal(libc::SIGTERM).expect("SIGTERM");
    let stopped = Instant::now();
    while d.running() && stopped.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!d.running(), "the daemon did not stop on SIGTERM");
    let dead = d
        .write_config_to("dead-bird.toml", &config(&speaker_dir, &speaker_dir.join("no-such.ctl"), "\"s0\""))
        .expect("config");
    let out =
        d.cli(["detach", "--config", dead.to_str().unwrap()], &[], Duration::from_secs(20)).expect("cli");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("nothing detached"), "{stderr}");
    assert!(d.pin_dir().exists(), "detached although BIRD was not told");
    assert_eq!(lab.upstream.route(VIP_NET).expect("upstream"), Some(announced()));
    // The include BIRD refused was put back: it says what BIRD holds.
    let include = std::fs::read_to_string(speaker_dir.join("anycast.conf")).expect("include");
    assert_eq!(bgp::parse_states(&include)[VIP_NET], Route::Announce.into(), "{include}");

    // Detach: the routes in graceful shutdown first, the pins still there (the data path
    // forwards meanwhile); withdrawn `graceful_shutdown_ms` later, as soon as it returns.
    let t0 = Instant::now();
    let said = std::thread::scope(|s| {
        let detach = s.spawn(|| cli(&d, &["detach", "--config", config_arg]));
        wait_route(&lab, Some(shutting_down(announced())), "graceful shutdown on detach");
        assert!(d.pin_dir().exists(), "detached before the withdraw");
        detach.join().expect("detach")
    });
    assert!(said.contains("GRACEFUL_SHUTDOWN") && said.contains("every VIP withdrawn"), "{said}");
    wait_route(&lab, None, "withdraw after detach");
    let detached = t0.elapsed();
    assert!(!d.pin_dir().exists(), "pins left after detach");
    assert!(detached >= GRACEFUL, "detach → withdrawn took {detached:?}: no graceful shutdown");
    assert!(detached <= GRACEFUL + WINDOW, "detach → withdrawn took {detached:?}");

    println!(
        "bgp: drain → graceful shutdown {:.2} s → withdrawn {:.2} s later (graceful_shutdown_ms {}), \
         undrain → announced {:.2} s, undrain in the graceful shutdown → announced {:.2} s, restart in it → withdrawn \
         {:.2} s after it began (restart {:.2} s), overload → de-preferred {:.2} s, \
         load gone → announced {:.2} s, VIP added by SIGHUP (BIRD fixed) → announced {:.2} s, detach → withdrawn {:.2} s \
         (interval {} ms, rise {RISE}, fall {FALL})",
        drained.as_secs_f64(),
        shut.as_secs_f64(),
        GRACEFUL.as_millis(),
        undrained.as_secs_f64(),
        cancelled.as_secs_f64(),
        resumed.as_secs_f64(),
        restart.as_secs_f64(),
        to_deprefer.as_secs_f64(),
        back.as_secs_f64(),
        late.as_secs_f64(),
        detached.as_secs_f64(),
        INTERVAL.as_millis()
    );
}

/// The routes are bound to the first configured interface: when it goes away while the
/// controller is dead (nobody to notice), BIRD withdraws the VIP by itself.
#[test]
fn bgp_route_follows_its_interface_without_the_controller() {
    if !require("bgp_route_follows_its_interface_without_the_controller", &[Need::Kernel, BIRD, BIRDC]) {
        return;
    }
    let lab = lab();
    lab.site.add_veth("d0", &lab.site, "d1").expect("veth");
    let mut d = Daemon::new(&lab.site).expect("daemon");
    let speaker_dir = lab.speaker.dir().to_owned();
    d.write_config(&config(&speaker_dir, &lab.speaker.socket(), "\"d0\", \"s0\"")).expect("config");
    d.start().expect("start");
    wait_route(&lab, Some(announced()), "learn the VIP");
    d.kill().expect("kill");
    let t0 = Instant::now();
    lab.site.ip(&["link", "del", "d0"]).expect("delete d0");
    wait_route(&lab, None, "withdraw with the interface");
    let gone = t0.elapsed();
    println!("bgp: interface gone → withdrawn {:.2} s (no controller running)", gone.as_secs_f64());
    assert!(gone <= WINDOW, "interface gone → withdrawn took {gone:?}");
}

/// What the controller writes parses in BIRD 2 (`bird -p`), with every state in both
/// families, included by pattern and exported with [`EXPORT_FILTER`]; and BIRD starts when
/// the file does not exist yet.
#[test]
fn bgp_include_file_parses_in_bird() {
    if !require("bgp_include_file_parses_in_bird", &[BIRD]) {
        return;
    }
    let dir = Bird::dir_for("parse").expect("dir");
    let text = "[local]\ninterfaces = [\"eth0\"]\n[[sites]]\nname = \"a\"\nlocal = true\ncapacity = 1\n\
                [bgp]\ndeprefer_med = 500\ndeprefer_prepend = 3\nlocal_as = 65001\n";
    let bgp_config = Config::parse(text, "t.toml").expect("config").bgp.expect("[bgp]");
    let until = std::time::SystemTime::now() + Duration::from_secs(30);
    let shutdown = |from| bgp::Export { route: Route::Shutdown, shutdown: Some((from, until)) };
    let routes: std::collections::BTreeMap<std::net::IpAddr, bgp::Export> = [
        ("192.0.2.1", Route::Announce.into()),
        ("192.0.2.2", Route::Deprefer.into()),
        ("192.0.2.3", Route::Withdraw.into()),
        ("192.0.2.4", shutdown(Route::Announce)),
        ("192.0.2.5", shutdown(Route::Deprefer)),
        ("2001:db8::1", Route::Announce.into()),
        ("2001:db8::2", Route::Deprefer.into()),
        ("2001:db8::3", Route::Withdraw.into()),
        ("2001:db8::4", shutdown(Route::Announce)),
        ("2001:db8::5", shutdown(Route::Deprefer)),
    ]
    .into_iter()
    .map(|(a, r)| (a.parse().unwrap(), r))
    .collect();
    let names = routes.keys().map(|a| (*a, vec![format!("vip-{a}")])).collect();
    let conf = dir.join("bird.conf");
    let export = EXPORT_FILTER.replace('\n', "\n    ");
    std::fs::write(
        &conf,
        format!(
            "router id 10.9.0.1;\nprotocol device {{}}\ninclude \"{}/anycast*.conf\";\n\
             protocol bgp upstream {{\n  local as 65001;\n  neighbor 10.9.0.2 as 65000;\n  \
             ipv4 {{ import none; {export} }};\n  ipv6 {{ import none; {export} }};\n}}\n",
            dir.display()
        ),
    )
    .expect("bird.conf");
    let parse =
        || std::process::Command::new("bird").arg("-p").arg("-c").arg(&conf).output().expect("bird -p");
    let out = parse();
    assert!(out.status.success(), "without the file: {}", String::from_utf8_lossy(&out.stderr));
    let include = bgp::render(&bgp_config, "eth0", &names, &routes);
    bgp::write_include(&dir.join("anycast.conf"), &include).expect("include");
    let out = parse();
    assert!(out.status.success(), "{}\n{include}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// A restart remembers: a remote site that is down stays down (its SITES entry never gets
/// SITE_UP back, it never gets a flow), and a de-preferred route stays de-preferred: no
/// BGP transition, no announce in between, no second de-prefer.
#[test]
fn bgp_restart_keeps_a_down_site_and_the_deprefer() {
    if !require("bgp_restart_keeps_a_down_site_and_the_deprefer", &[Need::Kernel, BIRD, BIRDC]) {
        return;
    }
    let lab = lab();
    let mut d = Daemon::new(&lab.site).expect("daemon");
    let speaker_dir = lab.speaker.dir().to_owned();
    // A second site whose tunnel endpoint nobody answers: its probes fail, it is down; with
    // it down no site has headroom, so the overload de-prefers.
    let body = config(&speaker_dir, &lab.speaker.socket(), "\"s0\"")
        .replace("interfaces = [\"s0\"]\n", "interfaces = [\"s0\"]\ntunnel_v4 = \"10.9.0.1\"\n")
        .replacen(
            "[[vips]]",
            "[[sites]]\nname = \"dead\"\nendpoint = \"10.9.0.77\"\ncapacity = 1000\n\n[[vips]]",
            1,
        )
        + "\n[health]\ninterval_ms = 250\ntimeout_ms = 200\nrise = 2\nfall = 2\n";
    d.write_config(&body).expect("config");
    d.start().expect("start");
    let dead_up = |d: &Daemon| {
        let slot = d.status().expect("/status").sites.iter().find(|s| s.name == "dead").expect("dead").index;
        d.maps().expect("maps").site(slot).expect("SITES").flags & anycast_common::site::SITE_UP != 0
    };
    assert!(!dead_up(&d), "a site never proven up has SITE_UP");
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| overload(&lab.up, &stop));
        lab.upstream
            .wait_for("de-prefer under overload", Duration::from_secs(10), |b| {
                b.route(VIP_NET).ok() == Some(Some(depreferred()))
            })
            .unwrap_or_else(|e| panic!("{e}\ndaemon log:\n{}", d.log()));
        assert_eq!(metric(&d.get("/metrics").unwrap(), r#"anycast_site_up{site="dead"}"#), Some(0));

        // The controller crashes and comes back while the overload goes on.
        d.kill().expect("kill");
        d.start().expect("restart");
        let until = Instant::now() + INTERVAL * 12;
        while Instant::now() < until {
            assert_eq!(
                lab.upstream.route(VIP_NET).expect("upstream"),
                Some(depreferred()),
                "the restart changed the route:\n{}",
                d.log()
            );
            assert!(!dead_up(&d), "the restart brought the dead site back up:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
    });
    for to in ["announce", "deprefer", "withdraw"] {
        assert_eq!(transitions(&d, to), 0, "a transition to {to} after the restart:\n{}", d.log());
    }
    assert_eq!(state(&d, "deprefer"), 1);
    let text = d.get("/metrics").unwrap();
    assert_eq!(metric(&text, r#"anycast_site_up{site="dead"}"#), Some(0), "{text}");
    assert_eq!(metric(&text, r#"anycast_site_weight{site="dead"}"#), Some(0), "{text}");
    assert!(d.log().contains("as BIRD holds it"), "{}", d.log());
}
