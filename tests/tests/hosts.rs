//! A site of several hosts behind its routers' ECMP (issue 18), end to end: site `a` is two
//! hosts, A1 and A2, each its own `anycast run`, behind a router's multipath route; site `b`
//! has room. A's hosts decide as one (A1 decides on the sum of both hosts' load, A2
//! installs what A1 decides, both at the moment A1 names), so their Maglev tables are alike
//! at every instant, and a flow that the routers move from one host to the other keeps its
//! site. Real packets, real daemons; figures printed for the issue's note.

use std::{
    collections::BTreeSet,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anycast_tests::{
    admin::AdminApi,
    pinned::Pinned,
    sustained::{Steering, TCP_PORT, Table, flow_key},
    topology::BehindRouter,
};
use anycast_user::api::client::Method;
use testkit::{
    daemon::Daemon,
    metrics::metric,
    require::{Need, require},
    serial,
    sites::{CLIENT, FlowClient, PEER_PORT, UdpService, VIP},
    tcp::{self, Connection, Sink},
    wait,
};

const LOAD: &str = "\n[load]\ntarget = 0.8\nhigh = 0.9\nlow = 0.7\nmax_step = 0.25\ninterval_ms = 250\n\
                    smoothing_ms = 500\ncpu = false\npeer_timeout_ms = 200\nstale_ms = 2000\n";
const HEALTH: &str = "\n[health]\ninterval_ms = 250\ntimeout_ms = 200\nrise = 2\nfall = 3\n";
/// Site `a` (both hosts together) and site `b`, packets/s at utilisation 1.
const CAPACITY: [u32; 2] = [600, 4000];
/// New UDP flows per second through the router: twice site `a`'s capacity, so that it sheds.
const SURGE: u32 = 1200;
/// Long-lived TCP connections, opened while `a` sheds (so some are forwarded to `b`).
const CONNECTIONS: usize = 48;
/// Site `a`'s tunnel address, shared by its hosts.
const A_TUNNEL: &str = "10.10.0.1";

fn vips(sites: &str) -> String {
    format!(
        "\n[[vips]]\nname = \"udp\"\naddress = \"{VIP}\"\nport = 5300\nprotocol = \"udp\"\nsites = {sites}\n\
         \n[[vips]]\nname = \"tcp\"\naddress = \"{VIP}\"\nport = {TCP_PORT}\nprotocol = \"tcp\"\nsites = {sites}\n"
    )
}

/// Host `me` of site `a` (0: A1, 1: A2).
fn config_a(me: usize) -> String {
    let [a1, a2, b] = [0, 1, 2].map(BehindRouter::uplink);
    format!(
        "[local]\ninterfaces = [\"u0\"]\ntunnel_v4 = \"{}\"\nhost = \"a{}\"\n\
         \n[[sites]]\nname = \"a\"\nlocal = true\ncapacity = {}\n\
         hosts = [{{ name = \"a1\", peer = \"{a1}:{PEER_PORT}\" }}, {{ name = \"a2\", peer = \"{a2}:{PEER_PORT}\" }}]\n\
         \n[[sites]]\nname = \"b\"\nendpoint = \"{b}\"\ncapacity = {}\npeer = \"{b}:{PEER_PORT}\"\n{}{LOAD}{HEALTH}",
        A_TUNNEL,
        me + 1,
        CAPACITY[0],
        CAPACITY[1],
        vips(r#"["a", "b"]"#),
    )
}

/// Site `b`: serves the VIPs itself, and decapsulates what site `a` (its shared tunnel
/// address) forwards.
fn config_b() -> String {
    let b = BehindRouter::uplink(2);
    format!(
        "[local]\ninterfaces = [\"u0\"]\ntunnel_v4 = \"{b}\"\n\
         \n[[sites]]\nname = \"b\"\nlocal = true\ncapacity = {}\n\
         \n[[sites]]\nname = \"a\"\nendpoint = \"{}\"\ncapacity = {}\n{}{LOAD}",
        CAPACITY[1],
        A_TUNNEL,
        CAPACITY[0],
        vips(r#"["b"]"#),
    )
}

fn reading(d: &Daemon, series: &str) -> Option<u64> {
    metric(&d.get("/metrics").ok()?, series)
}

/// A1's and A2's tables of the TCP VIP, compared while the weights change: `samples`
/// comparisons, of which `differed` found them different although neither host's table
/// changed around the comparison (a change in progress is not a difference), `sustained`
/// found them different in two comparisons in a row; `changes` tables A1 went through.
#[derive(Default)]
struct Alike {
    samples: usize,
    differed: usize,
    sustained: usize,
    changes: usize,
    first_difference: Option<String>,
}

/// The weight changes a daemon logged: (seconds of the day, what it installed).
fn installs(log: &str) -> Vec<(f64, String)> {
    log.lines()
        .filter_map(|l| {
            let (_, what) = l.split_once("steering: weights ")?;
            let time = l.split_once('T')?.1.split(|c: char| c == 'Z' || c.is_whitespace()).next()?;
            let mut hms = time.split(':').map(|x| x.parse::<f64>().ok());
            let seconds = hms.next()?? * 3600.0 + hms.next()?? * 60.0 + hms.next()??;
            Some((seconds, what.to_owned()))
        })
        .collect()
}

/// The longest time between the two hosts' installs of the same decision, and how many
/// they both installed — from the later host's first install on (the daemons start one
/// after the other: the first weights of the one started later are late).
fn install_skew(a1: &str, a2: &str) -> (Duration, usize) {
    let (x, y) = (installs(a1), installs(a2));
    let since = x.first().zip(y.first()).map_or(f64::MAX, |(a, b)| a.0.max(b.0));
    let mut worst = 0.0f64;
    let mut both = 0;
    for (t, what) in x.iter().filter(|(t, _)| *t > since) {
        if let Some((u, _)) =
            y.iter().filter(|(_, w)| w == what).min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs()))
        {
            worst = worst.max((u - t).abs());
            both += 1;
        }
    }
    (Duration::from_secs_f64(worst), both)
}

fn watch_tables(hosts: [&Daemon; 2], stop: &AtomicBool, out: &Mutex<Alike>) {
    let read = |i: usize| Table::read(hosts[i], Steering::Current, "tcp");
    let mut last: Option<Table> = None;
    let mut differed_last = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let (a1, a2, a1_after, a2_after) = (read(0), read(1), read(0), read(1));
        let mut o = out.lock().unwrap();
        if last.as_ref().is_some_and(|t| *t != a1_after) {
            o.changes += 1;
        }
        last = Some(a1_after.clone());
        if a1 == a1_after && a2 == a2_after {
            o.samples += 1;
            if a1 != a2 {
                o.differed += 1;
                if differed_last {
                    o.sustained += 1;
                }
                let differ = a1.differing(&a2);
                o.first_difference.get_or_insert(format!("{differ} of {} buckets", a1.buckets()));
            }
        }
        // Both hosts install a decision at one moment, a few ms apart: one comparison may
        // fall between the two installs; the next, 20 ms and four reads later, may not.
        differed_last = a1 == a1_after && a2 == a2_after && a1 != a2;
        drop(o);
        thread::sleep(Duration::from_millis(20));
    }
}

/// The two hosts of site `a` behind the router's ECMP, and site `b`.
fn site_of_two(tag: &str) -> BehindRouter {
    let t = BehindRouter::new(tag, &["a1", "a2", "b"]).expect("topology");
    t.ecmp(&[0, 1], A_TUNNEL).expect("the site's ECMP route");
    t
}

/// The three daemons, B first, once A1 and A2 see B up and A1 decides for site `a`.
fn start(t: &BehindRouter) -> Vec<Daemon<'_>> {
    let mut daemons: Vec<Daemon> = t.hosts.iter().map(|ns| Daemon::new(ns).expect("daemon")).collect();
    for (i, d) in daemons.iter_mut().enumerate() {
        d.set_peer_listen((BehindRouter::uplink(i).parse::<std::net::Ipv4Addr>().unwrap(), PEER_PORT).into());
        d.add_datapath_option("maglev_table_size = 1021");
    }
    for i in [2, 0, 1] {
        let config = if i == 2 { config_b() } else { config_a(i) };
        daemons[i].write_config(&config).expect("config");
        daemons[i].start().expect("start");
    }
    let (a1, a2) = (&daemons[0], &daemons[1]);
    for (name, d) in [("A1", a1), ("A2", a2)] {
        let up =
            wait::until(Duration::from_secs(10), || reading(d, r#"anycast_site_up{site="b"}"#) == Some(1));
        assert!(up.is_some(), "{name} never saw site b pass its health checks:\n{}", d.log());
    }
    // A1 is first in the site's list: it decides, A2 installs what it decides.
    let roles = wait::until(Duration::from_secs(5), || {
        reading(a1, "anycast_deciding") == Some(1) && reading(a2, "anycast_deciding") == Some(0)
    });
    assert!(roles.is_some(), "A1 should decide for site a and A2 follow:\n{}\n{}", a1.log(), a2.log());
    daemons
}

#[test]
fn hosts_of_one_site_hold_one_table_and_an_ecmp_change_moves_no_flow() {
    if !require("hosts_of_one_site_hold_one_table_and_an_ecmp_change_moves_no_flow", &[Need::Kernel]) {
        return;
    }
    let _turn = serial::heavy();
    let t = site_of_two("hosts");
    let services: Vec<UdpService> =
        t.hosts.iter().map(|ns| UdpService::start(ns).expect("service")).collect();
    let sinks: Vec<Sink> =
        t.hosts.iter().map(|ns| Sink::start(ns, (VIP, TCP_PORT).into()).expect("sink")).collect();
    let daemons = start(&t);
    let (a1, a2) = (&daemons[0], &daemons[1]);
    let alike = Mutex::new(Alike::default());
    let stop = AtomicBool::new(false);
    let client = FlowClient::default();
    let (reports, fwd, shed_weight, removed_at) = thread::scope(|s| {
        let watcher = s.spawn(|| watch_tables([a1, a2], &stop, &alike));
        let surge = s.spawn(|| client.send(&t.client, SURGE, SURGE * 20, &stop));
        // The surge makes site `a` shed: wait until b has half the weight or more, then open
        // the connections (each goes to b with that chance: both hosts forward some).
        let shed = wait::until(Duration::from_secs(8), || {
            reading(a1, r#"anycast_site_weight{site="b"}"#).is_some_and(|w| w >= 5000)
        });
        assert!(
            shed.is_some(),
            "site a never shed half its new flows to b under {SURGE} new flows/s:\n{}",
            a1.log()
        );
        let connections: Vec<Connection> = (0..CONNECTIONS)
            .map(|_| {
                Connection::open(&t.client, (CLIENT, 0).into(), (VIP, TCP_PORT).into()).expect("connect")
            })
            .collect();
        let tcp_stop = AtomicBool::new(false);
        let (reports, fwd, removed_at) = thread::scope(|inner| {
            let transfers =
                inner.spawn(|| tcp::transfer(connections, 16 << 10, Duration::from_secs(30), &tcp_stop));
            thread::sleep(Duration::from_secs(3));
            // What each host forwards (pinned at its handshake), and the table as it stands,
            // just before the routers take A2 out of the site's group.
            let pinned = |d: &Daemon| -> BTreeSet<u16> {
                let flows = d.maps().expect("maps").flows().expect("flow table");
                flows.iter().filter(|(k, _)| k.dport == TCP_PORT).map(|(k, _)| k.sport).collect()
            };
            let fwd = [pinned(a1), pinned(a2)];
            let table = Table::read(a1, Steering::Current, "tcp");
            t.route_from(None, 0).expect("A2 out of the site's ECMP group");
            let removed_at = Instant::now();
            thread::sleep(Duration::from_secs(4));
            tcp_stop.store(true, Ordering::Relaxed);
            (transfers.join().expect("transfers"), (fwd, table), removed_at)
        });
        stop.store(true, Ordering::Relaxed);
        let _ = surge.join();
        watcher.join().expect("table watcher");
        (reports, fwd, reading(a1, r#"anycast_site_weight{site="b"}"#), removed_at)
    });
    let ((fwd, table), alike) = (fwd, alike.into_inner().unwrap());
    // Each sink records a connection just after answering it (or once it broke).
    wait::until(Duration::from_secs(5), || {
        sinks.iter().map(|s| s.served().len()).sum::<usize>() >= CONNECTIONS
    });
    let served: Vec<BTreeSet<u16>> =
        sinks.iter().map(|s| s.served().iter().map(|c| c.peer.port()).collect()).collect();
    let port = |r: &tcp::Report| r.local.port();
    let completed =
        |ports: &BTreeSet<u16>| reports.iter().filter(|r| ports.contains(&port(r)) && !r.reset()).count();
    // A1's connections: those its stack served, and those it forwarded to b.
    let a1_local: BTreeSet<u16> = served[0].iter().copied().filter(|p| !fwd[0].contains(p)).collect();
    let a1_all: BTreeSet<u16> = a1_local.union(&fwd[0]).copied().collect();
    // A2's forwarded connections whose bucket (in the table both hosts held) names b: once
    // the routers send them to A1, A1 forwards them there too.
    let a2_to_b: BTreeSet<u16> =
        fwd[1].iter().copied().filter(|&p| table.site(&flow_key(p, TCP_PORT, 6)) == Some(1)).collect();
    // A2's own connections: the rest (its sink still holds them open: their packets now
    // reach A1, whose stack resets them, as it would had A2 died).
    let a2_local: BTreeSet<u16> =
        reports.iter().map(port).filter(|p| !a1_all.contains(p) && !fwd[1].contains(p)).collect();
    assert!(
        a2_local.iter().all(|p| !served[2].contains(p)),
        "a connection counted as A2's own was served at b: {a2_local:?} {:?}",
        served[2]
    );
    let (skew, installed) = install_skew(&a1.log(), &a2.log());
    println!(
        "two-host site: {} of {} table comparisons found A1 and A2 different ({} twice in a row; A1's table changed {} times; \
         {installed} weight sets installed by both, at most {:.1} ms apart); b's weight at the end {:?}; {} connections: A1 served {} \
         itself and forwarded {} ({} completed), A2 served {} itself ({} completed after the change) and \
         forwarded {}, of which {} still in b's buckets ({} completed) {:.1} s after A2 left the ECMP group",
        alike.differed,
        alike.samples,
        alike.sustained,
        alike.changes,
        skew.as_secs_f64() * 1e3,
        shed_weight,
        reports.len(),
        a1_local.len(),
        fwd[0].len(),
        completed(&a1_all),
        a2_local.len(),
        completed(&a2_local),
        fwd[1].len(),
        a2_to_b.len(),
        completed(&a2_to_b),
        removed_at.elapsed().as_secs_f64(),
    );
    let services_served: Vec<u64> = services.iter().map(UdpService::datagrams).collect();
    assert!(services_served[2] > 0, "b served no UDP flow: site a never shed ({services_served:?})");
    assert!(
        alike.changes >= 1,
        "the weights never changed while the tables were compared: the test proves nothing"
    );
    assert!(alike.samples >= 20, "only {} comparisons", alike.samples);
    assert_eq!(
        alike.sustained,
        0,
        "A1 and A2 held different tables ({:?}) in {} of {} comparisons, {} twice in a row:\nA1:\n{}\nA2:\n{}",
        alike.first_difference,
        alike.differed,
        alike.samples,
        alike.sustained,
        a1.log(),
        a2.log()
    );
    // Which host the router's hash gives a connection, and which site its bucket names, are
    // chance: A1 may forward none of them (its own are then all local, still checked).
    assert!(!a1_all.is_empty(), "the router sent A1 no connection: {fwd:?} {a1_local:?}");
    assert!(!a2_to_b.is_empty(), "no connection of A2's went to b: nothing moved between the hosts");
    let lost: Vec<_> = reports
        .iter()
        .filter(|r| (a1_all.contains(&port(r)) || a2_to_b.contains(&port(r))) && r.reset())
        .map(|r| format!("{}: {:?}", port(r), r.outcome))
        .collect();
    assert!(lost.is_empty(), "connections of A1, or in b's buckets, reset by the ECMP change: {lost:?}");
}

#[test]
fn hosts_of_one_site_take_over_from_a_dead_deciding_host_and_hand_back() {
    if !require("hosts_of_one_site_take_over_from_a_dead_deciding_host_and_hand_back", &[Need::Kernel]) {
        return;
    }
    let _turn = serial::heavy();
    let t = site_of_two("takeover");
    let _services: Vec<UdpService> =
        t.hosts.iter().map(|ns| UdpService::start(ns).expect("service")).collect();
    let mut daemons = start(&t);
    let stop = AtomicBool::new(false);
    let client = FlowClient::default();
    thread::scope(|s| {
        let surge = s.spawn(|| client.send(&t.client, SURGE, SURGE * 30, &stop));
        let b_weight = |d: &Daemon| reading(d, r#"anycast_site_weight{site="b"}"#).unwrap_or(0);
        let shed = wait::until(Duration::from_secs(8), || b_weight(&daemons[0]) > 0);
        assert!(shed.is_some(), "site a never shed to b:\n{}", daemons[0].log());
        thread::sleep(Duration::from_secs(1));
        // The deciding host's controller dies (its data path forwards on): A2 takes over once
        // A1's report is stale (`stale_ms` 2 s), from the weights it has installed.
        let before = Table::read(&daemons[1], Steering::Current, "tcp");
        daemons[0].kill().expect("SIGKILL A1's controller");
        let killed = Instant::now();
        let took_over =
            wait::until(Duration::from_secs(6), || reading(&daemons[1], "anycast_deciding") == Some(1));
        let took_over = took_over.map(|_| killed.elapsed());
        let after = Table::read(&daemons[1], Steering::Current, "tcp");
        let moved_at_takeover = before.differing(&after);
        let still_shedding = b_weight(&daemons[1]);
        thread::sleep(Duration::from_secs(1));
        // A1 comes back: first in the list, it follows A2 (which says it decides) and
        // installs A2's decisions until A2, seeing A1 again, hands over; A1 then decides,
        // from the weights installed meanwhile. Their tables agree from A1's first install
        // on (before it, A1's data path holds what A1 installed before it died).
        daemons[0].start().expect("restart A1's controller");
        let restarted = Instant::now();
        let up =
            wait::until(Duration::from_secs(10), || daemons[0].admin(Method::GET, "/status", None).is_ok());
        assert!(up.is_some(), "A1's controller did not come back:\n{}", daemons[0].log());
        // Compared from A1's first install after its restart on (before it, A1's data path
        // holds what A1 installed before it died, and A2 decides alone): they must never
        // differ again.
        let mut handed_back = None;
        // (time of day in s, UTC, as the daemons log it; whether the tables differed)
        let mut compared: Vec<(f64, bool)> = Vec::new();
        let time_of_day = || {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            (t.as_secs() % 86_400) as f64 + f64::from(t.subsec_micros()) * 1e-6
        };
        let restarted_at = time_of_day() - restarted.elapsed().as_secs_f64();
        while restarted.elapsed() < Duration::from_secs(5) {
            let (x, y, x_after) = (
                Table::read(&daemons[0], Steering::Current, "tcp"),
                Table::read(&daemons[1], Steering::Current, "tcp"),
                Table::read(&daemons[0], Steering::Current, "tcp"),
            );
            if handed_back.is_none() && reading(&daemons[1], "anycast_deciding") == Some(0) {
                handed_back = Some(restarted.elapsed());
            }
            // A table that changed under the comparison proves nothing either way.
            if x != x_after {
                continue;
            }
            compared.push((time_of_day(), x != y));
        }
        let first_install =
            installs(&daemons[0].log()).into_iter().map(|(t, _)| t).find(|&t| t >= restarted_at);
        let alike = first_install.map(|t| Duration::from_secs_f64(t - restarted_at));
        let after: Vec<bool> =
            compared.iter().filter(|(t, _)| first_install.is_some_and(|f| *t > f)).map(|(_, d)| *d).collect();
        let (samples, differed) = (after.len(), after.iter().filter(|d| **d).count());
        // Both hosts install each decision at one moment, a few ms apart at most: a single
        // comparison may fall between the two; two in a row (~10 ms) may not.
        let sustained = after.windows(2).filter(|w| w[0] && w[1]).count();
        // A hand-back late in the window (a loaded machine) is still a hand-back; A1 decides
        // once it has seen A2's report saying it stopped, a report later.
        if handed_back.is_none() {
            let late =
                wait::until(Duration::from_secs(5), || reading(&daemons[1], "anycast_deciding") == Some(0));
            handed_back = late.map(|_| restarted.elapsed());
        }
        wait::until(Duration::from_secs(5), || reading(&daemons[0], "anycast_deciding") == Some(1));
        let a1_deciding = reading(&daemons[0], "anycast_deciding");
        stop.store(true, Ordering::Relaxed);
        let _ = surge.join();
        println!(
            "two-host site: A1's controller killed while shedding: A2 decided {took_over:.2?} later, its \
             table {moved_at_takeover} buckets different from before (b's weight then {still_shedding}); \
             A1 restarted: A2 followed it again {handed_back:.2?} later, A1's first install {alike:.2?} after the \
             restart, then the tables different in {differed} of {samples} comparisons ({sustained} \
             twice in a row)"
        );
        assert!(
            took_over.is_some_and(|d| d <= Duration::from_secs(4)),
            "A2 never took over:\n{}",
            daemons[1].log()
        );
        assert!(still_shedding > 0, "A2 took over but stopped shedding (all new flows home)");
        assert!(handed_back.is_some(), "A2 never handed back to A1:\n{}", daemons[1].log());
        assert!(alike.is_some(), "A1 installed nothing after its restart:\n{}", daemons[0].log());
        assert!(samples >= 10, "only {samples} comparisons after A1's restart");
        assert_eq!(sustained, 0, "A1 and A2 differed after A1's restart:\nA1:\n{}", daemons[0].log());
        assert_eq!(a1_deciding, Some(1), "A1 does not decide again:\n{}", daemons[0].log());
    });
}
