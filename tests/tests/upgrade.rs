//! Upgrades across a map-layout change (issue 14), with a real build of the previous release
//! (release 0.1.0, map layout 1; `testkit::previous` builds it from git), through the two
//! sites of `anycast_tests::sustained` (client → A, which serves the VIPs itself and
//! forwards part of the flows to B over IPIP). A runs the previous release under sequenced
//! UDP streams and long-lived TCP transfers to both sites, whose client ports are chosen
//! from A's tables with that release's own hash; then:
//!
//! 1. `upgrade_from_the_previous_release_…`: A's controller is replaced by this build, which
//!    finds layout 1 pinned and migrates it under the traffic: every datagram arrives, no
//!    connection is reset, each stays at the site the old release sent it to and is counted
//!    there byte for byte, the per-VIP counters go on from where they were (they equal
//!    every datagram sent, whichever program counted it). Then the roll-back: the previous
//!    release, started on the migrated maps, refuses them before it touches anything (its
//!    own layout check), under traffic again, and the running program is the same after.
//! 2. `upgrade_killed_in_the_middle_…`: the new controller is killed (SIGKILL, by the fault
//!    injection of `anycast_user::datapath::fault`) at each step of the migration — maps
//!    staged, first link swapped, first pin renamed — and started again: the data path
//!    forwards throughout and the next start completes the migration.
//! 3. `upgrade_from_a_build_with_flow_seen_…`: A runs the last build of layout 2
//!    that kept pinned flows' closing state in an array of its own (`FLOW_SEEN`,
//!    `testkit::previous::FLOW_SEEN_COMMIT`); this build, started on its pins under the
//!    same traffic, shares its flow table as it is (the old values read "not closing"),
//!    swaps the programs, moves nothing, and removes the stale `FLOW_SEEN` pin.

use std::time::Duration;

use anycast_common::maps::LAYOUT_VERSION;
use anycast_tests::{
    pinned::Pinned,
    sustained::{self, Flows, Steering, under_traffic},
};
use anycast_user::datapath::fault;
use testkit::{
    daemon::{self, Daemon, DaemonError},
    previous,
    require::{Need, require},
    serial,
};

const SETTLE: Duration = Duration::from_secs(2);
const TCP_PER_SITE: usize = 4;
const LOG_TIMEOUT: Duration = Duration::from_secs(20);
/// What release 0.1.0 logs once it serves, and when it stops.
const READY_010: &str = "metrics and admin on http://";
const STOPPED: &str = "controller stopped";

/// B (this build) and A (the previous release), started; A's config has no `hash_key`,
/// which that release does not know.
fn start_on_previous_release(chain: &anycast_tests::topology::ForwardChain) -> (Daemon<'_>, Daemon<'_>) {
    let old = previous::binary().unwrap_or_else(|e| panic!("the previous release {}: {e}", previous::TAG));
    start_on(chain, old, READY_010, false)
}

/// B (this build) and A (`old`, which logs `ready` once it serves), started.
fn start_on<'a>(
    chain: &'a anycast_tests::topology::ForwardChain,
    old: &std::path::Path,
    ready: &'static str,
    hash_key: bool,
) -> (Daemon<'a>, Daemon<'a>) {
    let mut b = Daemon::new(&chain.b).expect("B's daemon");
    b.write_config(&sustained::config_b()).expect("B's config");
    b.start().expect("start B's controller");
    let mut a = Daemon::with_binary(&chain.a, old).expect("A's daemon");
    a.set_binary(old, ready, hash_key);
    a.write_config(&sustained::config_a()).expect("A's config");
    a.start().unwrap_or_else(|e| panic!("start A's controller ({}): {e}", old.display()));
    (a, b)
}

/// Stops A's controller (SIGTERM: the data path stays) and starts `bin` on the same pins.
/// The result of the start: an error when that controller refuses to run.
fn replace_a(
    a: &mut Daemon,
    bin: &std::path::Path,
    ready: &'static str,
    hash_key: bool,
) -> Result<String, DaemonError> {
    if a.running() {
        let mark = a.log_mark();
        a.signal(libc::SIGTERM).expect("SIGTERM A's controller");
        a.wait_for_log(mark, STOPPED, LOG_TIMEOUT).expect("A's controller stops");
    }
    // Reaps it (it has exited, or was killed: nothing is left to kill).
    let _ = a.kill();
    a.set_binary(bin, ready, hash_key);
    a.write_config(&sustained::config_a()).expect("A's config");
    a.start()
}

fn layout(a: &Daemon) -> u32 {
    a.maps().expect("A's maps in this build's layout").layout().expect("A's LAYOUT")
}

#[test]
fn upgrade_from_the_previous_release_under_traffic_moves_nothing_and_roll_back_is_refused() {
    if !require(
        "upgrade_from_the_previous_release_under_traffic_moves_nothing_and_roll_back_is_refused",
        &[Need::Kernel],
    ) {
        return;
    }
    let _turn = serial::heavy();
    let current = daemon::anycast_bin().expect("this build's anycast binary");
    let old = previous::binary().expect("the previous release");
    let chain = sustained::topology("upg").unwrap();
    let (mut a, _b) = start_on_previous_release(&chain);
    // Beforehand, this build's `anycast plan` says what a start would migrate, touching
    // nothing.
    let out = std::process::Command::new(current).arg("plan").arg(a.config_path()).output().unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "anycast plan: {out:?}");
    for line in [
        "upgrade: pinned maps are layout 1; this build's is 2",
        "upgrade: kept as they run (state and counters go on): SITES, TUNNEL_PEERS, FLOWS",
        "upgrade: rebuilt from the config",
        "upgrade: rolling back:",
    ] {
        assert!(plan.contains(line), "no {line:?} in `anycast plan`:\n{plan}");
    }
    assert!(!a.pin_dir().join(anycast_user::datapath::layout::STAGING).exists(), "the plan staged something");
    let flows = Flows::pick_with(&a, Steering::Release010, TCP_PER_SITE);
    let mut log = String::new();
    let measured = under_traffic(&chain, flows, SETTLE, || {
        log = replace_a(&mut a, current, daemon::READY, true)
            .expect("this build starts on the previous release's pins");
    });
    eprintln!("upgrade from {} under traffic: {}", previous::TAG, measured.summary());
    measured.assert_clean("across the upgrade from the previous release");
    for step in [
        "upgrade: pinned maps are layout 1, this build's is",
        "upgrade: new maps staged",
        "program upgraded in place",
        "upgrade: layout 1 → 2 complete",
    ] {
        assert!(log.contains(step), "no {step:?} in A's start log:\n{log}");
    }
    assert_eq!(layout(&a), LAYOUT_VERSION);
    // The per-VIP counters are kept (shared by both programs): every datagram of the
    // streams, counted by the old program or the new one.
    assert_eq!(
        sustained::udp_vip_packets(&a),
        Some(u64::from(measured.datagrams_sent())),
        "A's VIP counter after the upgrade"
    );

    // Roll back: the previous release refuses the migrated maps, and touches nothing.
    let program = [a.link_program_id("a0").unwrap(), a.link_program_id("a1").unwrap()];
    let flows = Flows::pick_from(&a, Steering::Current, TCP_PER_SITE, 500);
    let mut refusal = None;
    let measured = under_traffic(&chain, flows, SETTLE, || {
        refusal = Some(replace_a(&mut a, old, READY_010, false));
        // And back to this build, which adopts what runs.
        replace_a(&mut a, current, daemon::READY, true).expect("this build starts again");
    });
    eprintln!("roll-back attempt under traffic: {}", measured.summary());
    measured.assert_clean("across a refused roll-back");
    match refusal.expect("the roll-back was tried") {
        Err(DaemonError::Exited { log, .. }) => assert!(
            log.contains("map layout changed") && log.contains("CONFIG"),
            "the previous release's refusal does not say why:\n{log}"
        ),
        other => panic!("the previous release started on layout-2 maps: {other:?}"),
    }
    assert_eq!([a.link_program_id("a0").unwrap(), a.link_program_id("a1").unwrap()], program);
    assert_eq!(layout(&a), LAYOUT_VERSION);
}

#[test]
fn upgrade_killed_in_the_middle_keeps_forwarding_and_the_next_start_completes_it() {
    if !require(
        "upgrade_killed_in_the_middle_keeps_forwarding_and_the_next_start_completes_it",
        &[Need::Kernel],
    ) {
        return;
    }
    let _turn = serial::heavy();
    let current = daemon::anycast_bin().expect("this build's anycast binary");
    for point in ["staged", "swap", "commit"] {
        let chain = sustained::topology(&format!("upk{}", &point[..2])).unwrap();
        let (mut a, _b) = start_on_previous_release(&chain);
        let flows = Flows::pick_with(&a, Steering::Release010, TCP_PER_SITE);
        let mut logs = Vec::new();
        let measured = under_traffic(&chain, flows, SETTLE, || {
            a.set_env(fault::ENV, Some(point));
            match replace_a(&mut a, current, daemon::READY, true) {
                Err(DaemonError::Exited { log, .. }) => logs.push(log),
                other => panic!("{point}: the controller was to be killed there: {other:?}"),
            }
            a.set_env(fault::ENV, None);
            logs.push(replace_a(&mut a, current, daemon::READY, true).expect("the next start"));
        });
        eprintln!("upgrade killed at `{point}`, then completed: {}", measured.summary());
        measured.assert_clean(&format!("across an upgrade killed at `{point}`"));
        assert!(logs[0].contains(&format!("killed at `{point}`")), "{point}:\n{}", logs[0]);
        assert!(
            logs[1].contains("layout 1 → 2 complete"),
            "{point}: the next start did not complete:\n{}",
            logs[1]
        );
        assert!(logs[1].contains("resuming"), "{point}: the next start did not resume:\n{}", logs[1]);
        assert_eq!(layout(&a), LAYOUT_VERSION);
        assert!(!a.pin_dir().join(anycast_user::datapath::layout::STAGING).exists(), "{point}: staging left");
    }
}

#[test]
fn upgrade_from_a_build_with_flow_seen_removes_it_and_moves_nothing() {
    if !require("upgrade_from_a_build_with_flow_seen_removes_it_and_moves_nothing", &[Need::Kernel]) {
        return;
    }
    let _turn = serial::heavy();
    let current = daemon::anycast_bin().expect("this build's anycast binary");
    let old = previous::flow_seen_binary().expect("the build with FLOW_SEEN");
    let chain = sustained::topology("ufs").unwrap();
    let (mut a, _b) = start_on(&chain, old, daemon::READY, true);
    let stale = a.pin_dir().join("FLOW_SEEN");
    assert!(stale.exists(), "that build pins FLOW_SEEN");
    assert_eq!(layout(&a), LAYOUT_VERSION, "that build's layout");
    let program = a.link_program_id("a0").unwrap();
    let flows = Flows::pick_with(&a, Steering::Current, TCP_PER_SITE);
    let mut log = String::new();
    let measured = under_traffic(&chain, flows, SETTLE, || {
        log =
            replace_a(&mut a, current, daemon::READY, true).expect("this build starts on that build's pins");
    });
    eprintln!("start on the pins of {} under traffic: {}", previous::FLOW_SEEN_COMMIT, measured.summary());
    measured.assert_clean("across a start on the pins of the build with FLOW_SEEN");
    for step in ["program upgraded in place", "removed the pinned FLOW_SEEN"] {
        assert!(log.contains(step), "no {step:?} in A's start log:\n{log}");
    }
    assert!(!log.contains("upgrade: pinned maps are layout"), "a migration ran:\n{log}");
    assert!(!stale.exists(), "the stale FLOW_SEEN pin is still there");
    assert_ne!(a.link_program_id("a0").unwrap(), program, "the program was not replaced");
    assert_eq!(layout(&a), LAYOUT_VERSION);
    assert_eq!(
        sustained::udp_vip_packets(&a),
        Some(u64::from(measured.datagrams_sent())),
        "A's VIP counter after the start"
    );
}
