//! The controller's promises about its own restarts and its control surfaces (issue 15),
//! with the real binary in the real kernel. Root only.
//!
//! 1. `control_sibling_controller_restart_moves_nothing`: B's controller SIGKILLed and
//!    restarted under A's live TCP transfers and UDP streams to B: nothing lost or reset,
//!    and A never takes B down (its data path kept forwarding, A's probes kept passing).
//! 2. `control_drain_while_busy_goes_through_the_daemon`: a drain sent while the daemon
//!    reconciles 256 sites × 64 VIPs waits for it and is applied by it, never around it.
//! 3. `control_forged_replayed_and_nan_reports_change_nothing`: a fake sibling serves a
//!    report with NaN, one signed with another key, a valid one, an older valid one, and
//!    the valid one over and over: the first two are refused, the third accepted, the
//!    fourth refused as a replay, the same bytes again no news and gone stale in 3 s; each
//!    refusal counted; what A believes and does changes only with the accepted one.
//! 4. `control_tcp_listener_is_read_only_and_the_socket_has_a_group`: POST to the TCP
//!    listener refused, nothing drained; the admin socket refuses a user outside its group
//!    and serves one in it.
//! 5. `control_recreated_interface_is_attached_again`: a link whose interface was deleted
//!    and created again is attached afresh, while the controller runs and at its start.
//! 6. `control_tells_systemd_ready_watchdog_and_stopping`: READY=1, WATCHDOG=1, STOPPING=1
//!    on a notify socket of the test's.
//! 7. `control_a_dead_task_ends_the_daemon`: a task that panics ends the daemon with a
//!    failure (for systemd to restart it); the data path stays attached.
//! 8. `control_plan_reload_json_completions_version`: `plan` reports the share of the table
//!    a new site takes and changes nothing; `reload` applies and says so, a broken file is
//!    refused with its line and recorded as the last reload's outcome; JSON output,
//!    completions, `--version` with the git revision.
//! 9. `control_run_refuses_a_host_that_does_not_forward`: `doctor` fails the forwarding
//!    check with the sysctl to set; `run` refuses before attaching, and starts with
//!    `--allow-no-forwarding`, warning.

use std::{
    ffi::OsStr,
    io::{Read, Write},
    net::TcpListener,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anycast_tests::{
    admin::AdminApi,
    pinned::Pinned,
    sustained::{self, Flows, site_up, under_traffic},
    topology::{LOCAL_SITE, local_site},
};
use anycast_user::{
    api::client::Method,
    model::LoadReport,
    steering::peers::{PeerKey, Published, SIGNATURE_HEADER},
};
use testkit::{
    daemon::{Daemon, PEER_KEY, anycast_bin},
    metrics::{gauge, metric},
    require::{Need, require},
    wait,
};

/// How long the traffic flows before and after the disturbance.
const SETTLE: Duration = Duration::from_secs(2);

fn metrics(d: &Daemon) -> String {
    d.get("/metrics").unwrap_or_else(|e| panic!("/metrics: {e}\n{}", d.log()))
}

#[test]
fn control_sibling_controller_restart_moves_nothing() {
    if !require("control_sibling_controller_restart_moves_nothing", &[Need::Kernel]) {
        return;
    }
    let chain = sustained::topology("csr").expect("topology");
    let (a, mut b) = sustained::start_watched(&chain);
    let flows = Flows::pick(&a, 4);
    let mut lowest = u64::MAX;
    let mut down_for = Duration::ZERO;
    let measured = under_traffic(&chain, flows, SETTLE, || {
        b.kill().expect("SIGKILL B's controller");
        // Far longer than A needs to take a site down (3 failed probes, 250 ms apart): had
        // A counted B's silent controller as a failure, B would be down by now.
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            lowest = lowest.min(site_up(&a, "b").expect("anycast_site_up{site=\"b\"} at A"));
            thread::sleep(Duration::from_millis(50));
        }
        let restarted = Instant::now();
        b.start().expect("restart B's controller");
        down_for = restarted.elapsed();
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            lowest = lowest.min(site_up(&a, "b").expect("anycast_site_up at A"));
            thread::sleep(Duration::from_millis(50));
        }
    });
    println!(
        "sibling restart: B's controller down 3 s, restarted in {:.2} s; {}",
        down_for.as_secs_f64(),
        measured.summary()
    );
    measured.assert_clean("B's controller SIGKILLed and restarted");
    assert_eq!(lowest, 1, "A took B down while only B's controller was restarting:\n{}", a.log());
    let text = metrics(&a);
    assert_eq!(metric(&text, r#"anycast_site_weight{site="b"}"#), Some(100), "{text}");
    // B's restarted controller adopted its running data path: its counters went on.
    let received = metric(&metrics(&b), r#"anycast_site_packets_total{site="a",action="received"}"#);
    assert!(received.is_some_and(|n| n > 0), "B's counters: {received:?}");
}

/// A config of `sites` sites (the local one first) and `vips` VIPs, each VIP served by a
/// different subset of the sites (so every VIP has a Maglev table of its own to build).
fn big_config(sites: usize, vips: usize) -> String {
    let mut text = String::from(
        "[local]\ninterfaces = [\"l0\"]\ntunnel_v4 = \"10.1.0.1\"\n\n[[sites]]\nname = \"here\"\nlocal = true\ncapacity = 100\n",
    );
    for i in 1..sites {
        text += &format!(
            "\n[[sites]]\nname = \"s{i}\"\nendpoint = \"10.{}.{}.{}\"\ncapacity = {}\n",
            50 + i / 65_536,
            (i / 256) % 256,
            i % 256,
            100 + i
        );
    }
    for v in 0..vips {
        let members: Vec<String> = std::iter::once("\"here\"".to_owned())
            .chain((1..sites).filter(|&i| i != v + 1).map(|i| format!("\"s{i}\"")))
            .collect();
        text += &format!(
            "\n[[vips]]\nname = \"v{v}\"\naddress = \"10.201.{}.{}\"\nport = 53\nprotocol = \"udp\"\nsites = [{}]\n",
            v / 256,
            v % 256,
            members.join(", ")
        );
    }
    text
}

#[test]
fn control_drain_while_busy_goes_through_the_daemon() {
    if !require("control_drain_while_busy_goes_through_the_daemon", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("cdb");
    let mut d = Daemon::started(&site, LOCAL_SITE).unwrap();
    // The daemon busy: a reload to 256 sites × 64 VIPs, 64 Maglev tables of 65,537 slots.
    d.write_config(&big_config(256, 64)).unwrap();
    let mark = d.log_mark();
    d.signal(libc::SIGHUP).unwrap();
    // As soon as the owner has started on it.
    d.wait_for_log(mark, "reload: planning 256 sites, 64 VIPs", Duration::from_secs(10)).unwrap();
    let drained_at = Instant::now();
    // The daemon's views answer meanwhile: a read never waits for the reconcile.
    let (code, _) = d.admin(Method::GET, "/status", None).unwrap();
    assert_eq!(code, 200);
    let status_ms = drained_at.elapsed().as_secs_f64() * 1e3;
    let config = d.config_path();
    let out = d
        .cli(
            [OsStr::new("drain"), OsStr::new("s7"), OsStr::new("--config"), config.as_os_str()],
            &[],
            Duration::from_secs(120),
        )
        .unwrap();
    let answered = drained_at.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "drain: {stderr}");
    assert!(!stderr.contains("pinned maps"), "the drain went around the busy daemon: {stderr}");
    let log = d.wait_for_log(mark, "SIGHUP: config applied", Duration::from_secs(5)).unwrap();
    assert!(log.contains("site s7: drained"), "the daemon did not apply the drain:\n{log}");
    let applied = log.find("SIGHUP: config applied").unwrap();
    let reload_ms: f64 = log[applied..]
        .split("applied in ")
        .nth(1)
        .and_then(|r| r.split(" ms").next())
        .and_then(|n| n.parse().ok())
        .expect("the reload's duration");
    let answered_ms = answered.as_secs_f64() * 1e3;
    println!(
        "drain while busy: the reload of 256 sites x 64 VIPs took {reload_ms:.0} ms; /status answered in \
         {status_ms:.1} ms meanwhile; the drain answered after {answered_ms:.0} ms, applied by the daemon"
    );
    assert!(reload_ms > 200.0, "the daemon was not busy ({reload_ms:.0} ms): the test proves nothing");
    // It waited for the reconcile in the owner (sent once the reload had started, it cannot
    // have been answered much before the reload ended).
    assert!(
        answered_ms + 100.0 >= reload_ms,
        "answered in {answered_ms:.0} ms, the reload took {reload_ms:.0} ms"
    );
    let status = d.status().unwrap();
    let s7 = status.sites.iter().find(|s| s.name == "s7").expect("s7");
    assert_eq!((s7.state.as_str(), s7.weight), ("drained", 0));
    assert_eq!(status.sites.len(), 256);
    // The maps agree: s7's slot is in no Maglev table.
    let maps = d.maps().unwrap();
    for v in &status.vips {
        let table = maps.maglev(v.index).unwrap().expect("a table");
        assert!(
            table.iter().all(|&e| e & anycast_common::site::MAGLEV_SITE != s7.index),
            "s7 still in {}",
            v.name
        );
    }
}

/// A sibling that answers `GET /load` with what `respond` gives it, counting requests.
struct FakePeer {
    body: Arc<Mutex<(String, Option<String>)>>,
    requests: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
}

impl FakePeer {
    fn start(ns: &testkit::netns::Netns, addr: &str) -> FakePeer {
        let listener = ns.run(|| TcpListener::bind(addr)).expect("fake peer's listener");
        listener.set_nonblocking(true).unwrap();
        let body = Arc::new(Mutex::new((String::new(), None)));
        let requests = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, r, s) = (body.clone(), requests.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf);
                let (text, sig) = b.lock().unwrap().clone();
                let sig = sig.map(|s| format!("{SIGNATURE_HEADER}: {s}\r\n")).unwrap_or_default();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{sig}connection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = conn.write_all(reply.as_bytes());
                *r.lock().unwrap() += 1;
            }
        });
        FakePeer { body, requests, stop }
    }

    fn serve(&self, body: String, signature: Option<String>) {
        *self.body.lock().unwrap() = (body, signature);
    }

    fn requests(&self) -> u64 {
        *self.requests.lock().unwrap()
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn report(seq: u64) -> LoadReport {
    LoadReport {
        site: "b".into(),
        capacity: 200.0,
        served: 84.0,
        utilisation: 0.42,
        target: 0.8,
        drained: false,
        attached: true,
        overloaded: false,
        no_headroom: false,
        epoch: 1,
        seq,
        measured_at: unix_ms(),
        claims: Default::default(),
        host: None,
        host_load: None,
        decisions: Vec::new(),
        deciding_host: None,
    }
}

#[test]
fn control_forged_replayed_and_nan_reports_change_nothing() {
    if !require("control_forged_replayed_and_nan_reports_change_nothing", &[Need::Kernel]) {
        return;
    }
    const FAKE: &str = "127.0.0.1:19101";
    let (_cl, site) = local_site("cfr");
    let peer = FakePeer::start(&site, FAKE);
    let mut d = Daemon::new(&site).unwrap();
    let body = TWO_SITES.replace("name = \"there\"", "name = \"b\"").replacen(
        "capacity = 100\n\n[[vips]]",
        &format!("capacity = 100\npeer = \"{FAKE}\"\n\n[[vips]]"),
        1,
    ) + "\n[load]\ninterval_ms = 250\ncpu = false\n";
    d.write_config(&body).unwrap();
    d.start().unwrap();
    let key = PeerKey::from_bytes(PEER_KEY.as_bytes());
    let refused = |reason: &str| {
        metric(&metrics(&d), &format!("anycast_peer_reports_refused_total{{site=\"b\",reason=\"{reason}\"}}"))
            .unwrap_or(0)
    };
    let believed = || gauge(&metrics(&d), r#"anycast_site_load_ratio{site="b"}"#);
    let weights = || {
        let text = metrics(&d);
        ["here", "b"].map(|s| metric(&text, &format!("anycast_site_weight{{site=\"{s}\"}}")).unwrap())
    };
    let before = weights();
    let wait_refused = |reason: &str| {
        let at = peer.requests();
        wait::until(Duration::from_secs(5), || refused(reason) > 0 && peer.requests() > at + 1)
            .unwrap_or_else(|| panic!("no {reason} refusal counted:\n{}", metrics(&d)));
    };

    // NaN, correctly signed: JSON cannot carry it; refused as invalid.
    let nan = Published::new(report(1), None).body.replace("\"utilisation\":0.42", "\"utilisation\":NaN");
    peer.serve(nan.clone(), Some(key.sign(nan.as_bytes())));
    wait_refused("invalid");
    // Finite but out of range: a target of 10 (the review's inf/NaN attack).
    let wild = Published::new(LoadReport { target: 10.0, capacity: 1.7e308, ..report(2) }, Some(&key));
    peer.serve(wild.body, wild.signature);
    wait::until(Duration::from_secs(5), || refused("invalid") >= 3).expect("out-of-range reports refused");
    // Forged: signed with another key.
    let other = PeerKey::from_bytes(b"not-the-deployment-key");
    let forged = Published::new(report(3), Some(&other));
    peer.serve(forged.body, forged.signature);
    wait_refused("signature");
    assert_eq!(believed(), None, "A believed a refused report");
    assert_eq!(weights(), before, "a refused report changed A's weights");

    // A valid report: accepted once; an older one, correctly signed, is a replay.
    let valid = Published::new(report(5), Some(&key));
    peer.serve(valid.body.clone(), valid.signature.clone());
    wait::until(Duration::from_secs(5), || believed() == Some(0.42))
        .unwrap_or_else(|| panic!("the valid report was not accepted:\n{}\n{}", metrics(&d), d.log()));
    let older = Published::new(report(4), Some(&key));
    peer.serve(older.body, older.signature);
    wait_refused("replay");
    let replays = refused("replay");
    assert!(replays >= 1, "{replays}");
    // The same bytes again are no news (not refused: a peer polled twice between two of
    // its ticks serves them too), but they do not keep the report alive: it goes stale
    // (3 s) although served every poll.
    peer.serve(valid.body.clone(), valid.signature.clone());
    let stale = wait::until(Duration::from_secs(6), || believed().is_none());
    assert!(stale.is_some(), "a replayed report kept A's view of b alive:\n{}", metrics(&d));
    assert_eq!(weights(), before, "the reports changed A's weights");
    let log = d.log();
    // Logged once per kind, not once per poll.
    let lines = log.lines().filter(|l| l.contains("peer b:") && l.contains("goes back from")).count();
    assert!(lines <= 2, "{lines} log lines for replays:\n{log}");
}

#[test]
fn control_tcp_listener_is_read_only_and_the_socket_has_a_group() {
    if !require("control_tcp_listener_is_read_only_and_the_socket_has_a_group", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("cro");
    let mut d = Daemon::new(&site).unwrap();
    // The socket's group: nogroup (65534, Debian's), a group `nobody` is not in unless its
    // primary group is set to it below.
    d.set_socket_group("nogroup");
    d.write_config(TWO_SITES).unwrap();
    d.start().unwrap();

    // TCP: GET /metrics only.
    let tcp = |method: &str, path: &str| -> u16 {
        site.run(|| {
            let mut s = std::net::TcpStream::connect(testkit::daemon::ADMIN_LISTEN).expect("connect");
            write!(
                s,
                "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .unwrap();
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
        })
    };
    assert_eq!(tcp("GET", "/metrics"), 200);
    for (method, path, want) in [
        ("POST", "/drain/there", 404),
        ("POST", "/undrain/there", 404),
        ("POST", "/reload", 404),
        ("GET", "/status", 404),
        ("GET", "/load", 404),
        ("POST", "/metrics", 405),
    ] {
        assert_eq!(tcp(method, path), want, "{method} {path} on the TCP listener");
    }
    let status = d.status().unwrap();
    assert!(status.sites.iter().all(|s| s.state == "up"), "a POST to the TCP listener drained something");

    // The socket: 0660, group nogroup.
    let socket = d.socket();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "admin socket mode {mode:o}");
    let as_user = |gid: u32| {
        let mut cmd = Command::new(anycast_bin().unwrap());
        cmd.args([OsStr::new("drain"), OsStr::new("there"), OsStr::new("--socket"), socket.as_os_str()])
            .args([OsStr::new("--config"), OsStr::new("/nonexistent.toml")])
            .uid(65534)
            .gid(gid);
        cmd.output().expect("anycast as nobody")
    };
    // nobody with primary group nobody's 65534 is in the group… so take another: 1 (daemon).
    let outsider = as_user(1);
    let stderr = String::from_utf8_lossy(&outsider.stderr);
    assert!(!outsider.status.success() && stderr.contains("permission denied"), "{stderr}");
    assert!(d.status().unwrap().sites.iter().all(|s| s.state == "up"), "an outsider drained a site");
    let member = as_user(65534);
    let stderr = String::from_utf8_lossy(&member.stderr);
    assert!(member.status.success(), "a member of the socket's group was refused: {stderr}");
    let there = d.status().unwrap().sites.into_iter().find(|s| s.name == "there").unwrap();
    assert_eq!(there.state, "drained");
    let _ = d.admin(Method::POST, "/undrain/there", None).unwrap();
}

/// Whether `ip -d link` shows an XDP program on `ifname` in `ns`.
fn runs_xdp(ns: &testkit::netns::Netns, ifname: &str) -> bool {
    ns.ip(&["-d", "link", "show", "dev", ifname])
        .is_ok_and(|t| t.lines().any(|l| l.trim_start().starts_with("prog/xdp")))
}

/// A pinned link whose interface was deleted and created again (driver reload, a VLAN
/// recreated) is defunct: the controller attaches the program again, while it runs and at
/// its start, instead of adopting the dead link as attached.
#[test]
fn control_recreated_interface_is_attached_again() {
    if !require("control_recreated_interface_is_attached_again", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("cri");
    site.add_veth("x0", &site, "x1").unwrap();
    let mut d = Daemon::new(&site).unwrap();
    let config = LOCAL_SITE.replace("interfaces = [\"l0\"]", "interfaces = [\"x0\"]");
    d.write_config(&config).unwrap();
    d.start().unwrap();
    assert!(runs_xdp(&site, "x0"));
    let recreate = || {
        site.ip(&["link", "del", "x0"]).unwrap();
        site.add_veth("x0", &site, "x1").unwrap();
        site.ip(&["link", "set", "x0", "up"]).unwrap();
        assert!(!runs_xdp(&site, "x0"), "a new interface with a program already");
    };

    // While the controller runs.
    recreate();
    let back = wait::until(Duration::from_secs(5), || runs_xdp(&site, "x0"));
    assert!(back.is_some(), "the running controller did not attach the recreated x0:\n{}", d.log());
    // The program runs as soon as it is attached; the log line and the published view come
    // after it.
    let said = wait::until(Duration::from_secs(5), || {
        d.log().contains("x0: its link was defunct") && d.status().is_ok_and(|s| s.attached)
    });
    assert!(d.log().contains("x0: its link was defunct"), "{}", d.log());
    assert!(said.is_some(), "attached is not back to true");

    // While no controller runs: the next start does not take the dead link for a live one.
    let (status, _) = d.stop(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    assert!(status.success());
    recreate();
    d.start().unwrap();
    assert!(runs_xdp(&site, "x0"), "the start adopted a defunct link:\n{}", d.log());
    assert!(d.status().unwrap().attached);

    // While no controller runs, and the next start swaps the program (here: onto rebuilt
    // Maglev tables; an upgrade takes the same path): a defunct link takes no program
    // update, so the start attaches afresh instead of failing on it.
    let (status, _) = d.stop(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    assert!(status.success());
    recreate();
    d.add_datapath_option("maglev_table_size = 1021");
    d.write_config(&config).unwrap();
    d.start().unwrap_or_else(|e| panic!("the start on a defunct link failed: {e}\n{}", d.log()));
    let log = d.log();
    assert!(log.contains("rebuilding them"), "no rebuild:\n{log}");
    assert!(log.contains("x0: attached afresh"), "{log}");
    assert!(runs_xdp(&site, "x0"), "{log}");
    assert!(d.status().unwrap().attached);
    assert_eq!(d.maps().unwrap().maglev(0).unwrap().expect("the VIP's table").len(), 1021);
}

/// Under systemd (`Type=notify`): READY=1 once attached and reconciled, WATCHDOG=1 at half
/// the watchdog period while it is healthy, STOPPING=1 on SIGTERM. The notify socket is
/// the test's.
#[test]
fn control_tells_systemd_ready_watchdog_and_stopping() {
    if !require("control_tells_systemd_ready_watchdog_and_stopping", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("csn");
    let mut d = Daemon::new(&site).unwrap();
    let socket = d.dir().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    notify.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    d.set_env("NOTIFY_SOCKET", Some(socket.to_str().unwrap()));
    // 1 s: the daemon pets every 0.5 s.
    d.set_env("WATCHDOG_USEC", Some("1000000"));
    d.write_config(LOCAL_SITE).unwrap();
    let started = Instant::now();
    d.start().unwrap();
    let mut got: Vec<(Duration, String)> = Vec::new();
    let read_for = |time: Duration, got: &mut Vec<(Duration, String)>| {
        let until = Instant::now() + time;
        let mut buf = [0u8; 512];
        while Instant::now() < until {
            if let Ok(n) = notify.recv(&mut buf) {
                got.push((started.elapsed(), String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        }
    };
    read_for(Duration::from_secs(2), &mut got);
    assert!(got.first().is_some_and(|(_, m)| m.contains("READY=1")), "{got:?}");
    let pets = got.iter().filter(|(_, m)| m.contains("WATCHDOG=1")).count();
    assert!(pets >= 2, "{pets} watchdog pets in 2 s with a 1 s watchdog: {got:?}");
    let (status, _) = d.stop(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    assert!(status.success());
    read_for(Duration::from_millis(300), &mut got);
    assert!(got.iter().any(|(_, m)| m.contains("STOPPING=1")), "{got:?}");
}

/// A task that dies ends the daemon with a failure (systemd restarts it); the data path
/// stays attached meanwhile.
#[test]
fn control_a_dead_task_ends_the_daemon() {
    if !require("control_a_dead_task_ends_the_daemon", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("ctd");
    let mut d = Daemon::new(&site).unwrap();
    d.set_env(anycast_user::datapath::fault::ENV, Some("steering-task"));
    d.write_config(LOCAL_SITE).unwrap();
    // The start may or may not be seen before the exit: the task dies at once.
    let _ = d.start();
    let exited = wait::until(Duration::from_secs(10), || d.exited().is_ok_and(|s| s.is_some()));
    assert!(exited.is_some(), "the daemon went on without its steering task:\n{}", d.log());
    let status = d.exited().unwrap().unwrap();
    assert!(!status.success(), "exit status {status} after a task died:\n{}", d.log());
    assert!(d.log().contains("the steering task panicked"), "{}", d.log());
    assert!(runs_xdp(&site, "l0"), "the data path went with the controller");
}

/// `anycast ARGS --config` of `d`, its output.
fn anycast_cli(d: &Daemon, args: &[&str]) -> std::process::Output {
    let config = d.config_path();
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.extend([OsStr::new("--config"), config.as_os_str()]);
    d.cli(all, &[], Duration::from_secs(60)).expect("anycast")
}

const TWO_SITES: &str = r#"[local]
interfaces = ["l0"]
tunnel_v4 = "10.1.0.1"

[[sites]]
name = "here"
local = true
capacity = 100

[[sites]]
name = "there"
endpoint = "10.9.0.2"
capacity = 100

[[vips]]
name = "svc"
address = "10.200.0.1"
port = 5353
protocol = "udp"
"#;

/// `plan` says what a reload would do and does nothing; `reload` does it and says so, or
/// refuses with every problem; read commands speak JSON; completions and `--version`.
#[test]
fn control_plan_reload_json_completions_version() {
    if !require("control_plan_reload_json_completions_version", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("cpl");
    let mut d = Daemon::started(&site, TWO_SITES).unwrap();
    let status = d.status().unwrap();
    let vip = status.vips[0].index;
    let table = |d: &Daemon| d.maps().unwrap().maglev(vip).unwrap().expect("the VIP's table");
    let before = table(&d);

    // A third site of the same capacity: a third of the table moves to it.
    let third = TWO_SITES.replacen(
        "[[vips]]",
        "[[sites]]\nname = \"far\"\nendpoint = \"10.9.0.3\"\ncapacity = 100\n\n[[vips]]",
        1,
    );
    let new = d.write_config_to("new.toml", &third).unwrap();
    let out = anycast_cli(&d, &["plan", new.to_str().unwrap(), "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(plan["sites"][0]["name"], "far");
    assert_eq!(plan["sites"][0]["change"], "added");
    let moved = plan["vips"][0]["moved"].as_f64().unwrap();
    assert!((0.25..0.45).contains(&moved), "a third site moved {moved} of the table");
    assert!(plan["writes"].as_u64().unwrap() > 0);
    assert_eq!(table(&d), before, "plan changed the data path");
    let text = anycast_cli(&d, &["plan", new.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("% of new flows move"), "{text:?}");

    // Reload: applied and said.
    std::fs::copy(&new, d.config_path()).unwrap();
    let out = anycast_cli(&d, &["reload"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.starts_with("reloaded: "), "{out:?}");
    let status = d.status().unwrap();
    assert_eq!(status.sites.len(), 3);
    assert!(status.reload.as_ref().is_some_and(|r| r.ok), "{:?}", status.reload);
    assert_ne!(table(&d), before);
    // A broken file: refused (exit 4, a config error) with its line, nothing changed.
    let applied = table(&d);
    d.write_config(&third.replacen("capacity = 100", "capacity = = 100", 1)).unwrap();
    let out = anycast_cli(&d, &["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("anycast.toml:8:12:"), "{stderr}");
    assert_eq!(table(&d), applied);
    // Sent all the same (SIGHUP), the daemon refuses it and records the outcome.
    d.signal(libc::SIGHUP).unwrap();
    let refused = wait::until(Duration::from_secs(5), || d.status().unwrap().reload.is_some_and(|r| !r.ok));
    assert!(refused.is_some(), "{:?}", d.status().unwrap().reload);
    assert_eq!(table(&d), applied);

    // JSON for scripts (the config good again: the CLI finds the socket through it).
    d.write_config(&third).unwrap();
    let out = anycast_cli(&d, &["status", "--output", "json"]);
    let s: anycast_user::model::status::Status = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert!(s.version.contains(env!("CARGO_PKG_VERSION")), "{}", s.version);
    let out = anycast_cli(&d, &["check-config", new.to_str().unwrap(), "--output", "json"]);
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check-config JSON");
    assert_eq!(c["ok"], true);

    // Completions and the version with the git revision.
    let out = anycast_cli(&d, &["completions", "bash"]);
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("_anycast()") && script.contains("plan") && script.contains("doctor"),
        "{script}"
    );
    let out = anycast_cli(&d, &["--version"]);
    let version = String::from_utf8_lossy(&out.stdout);
    let rev = version.trim().rsplit_once('(').and_then(|(_, r)| r.strip_suffix(')')).unwrap_or("");
    assert!(rev == "unknown" || (rev.len() == 12 && rev.chars().all(|c| c.is_ascii_hexdigit())), "{version}");
}

/// A host that does not forward would serve every packet meant for a remote site itself:
/// `run` refuses it (and starts with `--allow-no-forwarding`, warning), `doctor` says what
/// to set.
#[test]
fn control_run_refuses_a_host_that_does_not_forward() {
    if !require("control_run_refuses_a_host_that_does_not_forward", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("cnf");
    let mut d = Daemon::new(&site).unwrap();
    d.write_config(TWO_SITES).unwrap();
    for key in ["net/ipv4/conf/all/forwarding", "net/ipv4/conf/l0/forwarding"] {
        site.sysctl(key, "0").unwrap();
    }
    let out = anycast_cli(&d, &["doctor", "--output", "json"]);
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    let forwarding =
        checks.as_array().unwrap().iter().find(|c| c["name"] == "forwarding").expect("a forwarding check");
    assert_eq!(forwarding["verdict"], "fail", "{forwarding}");
    assert!(forwarding["fix"].as_str().unwrap().contains("net.ipv4.conf.l0.forwarding=1"), "{forwarding}");
    assert!(!out.status.success(), "doctor exit 0 with a failed check");

    let refused = d.start();
    assert!(refused.is_err(), "the daemon started on a host that does not forward");
    assert!(
        d.log().contains("refusing to start") && d.log().contains("net.ipv4.conf.l0.forwarding=1"),
        "{}",
        d.log()
    );
    assert!(!d.pin_dir().join("links").join("l0").exists(), "attached before refusing");

    d.start_with(&[OsStr::new("--allow-no-forwarding")]).unwrap();
    assert!(d.log().contains("l0 does not forward ipv4"), "no warning:\n{}", d.log());
}
