//! `cargo xtask run` with no arguments: load-aware anycast steering between three sites,
//! live, on this machine. Network namespaces, `anycast run --config` in each site, a client
//! opening many short UDP flows to the VIP at a rate that ramps up past site a's capacity
//! and back down, a view of every site's counters, weights, load and health each second, a
//! report of the whole run as one SVG (report.rs), and a teardown
//! that leaves no namespace, link, pin, file or process — after `--for SECONDS`, on
//! Ctrl-C/SIGTERM, on an error, or on a panic (guards' Drop).
//!
//! ```text
//! client c0 ── 10.1.0.0/24 ── a0 [site a] a1 ── 10.2.0.0/24 ── b0 [site b]
//!                                         a2 ── 10.3.0.0/24 ── c0 [site c]
//! ```
//!
//! The topology, the sites' configs, the services and the traffic are the ones the
//! load-aware steering tests use (testkit's `sites` and `tcp`), so the lab shows what the
//! tests check. The client routes the VIP 10.200.0.1 to site a, as the nearest anycast site
//! would be.
//! Every site has the VIP on its loopback, a UDP service on port 5300 counting what it
//! serves and a TCP service on port 5301 counting the bytes of each connection; besides
//! the short UDP flows, the client keeps a few TCP connections transferring for the whole
//! run (long-lived flows: they stay where they are whatever the weights). Every controller
//! runs with `[load]` (capacities in packets/s: a 800, b and c 1,000) and a with `[health]`,
//! polling b's and c's peer API and probing them through the tunnel. At normal load a keeps
//! every new flow; when the client's rate ramps up and a's load passes the high watermark,
//! a forwards the excess of new flows over IPIP to b and c in proportion to their headroom,
//! whose controllers decapsulate them for their own service; when the rate falls back, a
//! takes its new flows back. Every counter keeps adding up throughout.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use plots::Check;
use testkit::{
    daemon::{ADMIN_LISTEN, Daemon},
    metrics::{gauge, metric},
    netns::Netns,
    sites::{CLIENT, FlowClient, NAMES, PEER_PORT, TCP_PORT, TUNNEL, ThreeSites, UDP_PORT, UdpService, VIP},
    tcp::{self, Connection, Outcome, Report, Served, Sink},
};

mod report;

/// Long-lived TCP connections of the client, and the rate of each.
const TCP_CONNECTIONS: u32 = 6;
const TCP_BYTES_PER_SEC: u64 = 16 << 10;
/// New flows/s at normal load (a at ~45 % of its capacity with the TCP connections) and
/// during the surge (~160 %: a sheds to b and c).
const NORMAL_FLOWS: u32 = 60;
const SURGE_FLOWS: u32 = 240;
/// Without --for, the ramp repeats every minute: normal, surge from 15 s, normal from 36 s.
const RAMP_PERIOD: Duration = Duration::from_secs(60);
const DATAGRAMS_PER_FLOW: u32 = 5;
/// The client opens its flows in slices of this much time, each at the rate of the ramp.
const SLICE: Duration = Duration::from_millis(100);
/// Packets/s each site serves at utilisation 1 (a, b, c).
const CAPACITY: [u32; 3] = [800, 1000, 1000];
/// The load policy's thresholds (utilisation): a site sheds new flows above HIGH, down to
/// TARGET, and takes them back below LOW.
const TARGET: f64 = 0.75;
const HIGH: f64 = 0.9;
const LOW: f64 = 0.6;

/// The load policy of every site. `cpu = false`: the three sites share this machine's CPUs,
/// so the CPU figure would be the same everywhere and say nothing about any one site.
fn load_policy() -> String {
    format!(
        "\n[load]\ntarget = {TARGET}\nhigh = {HIGH}\nlow = {LOW}\nmax_step = 0.25\n\
         interval_ms = 250\nsmoothing_ms = 500\ncpu = false\npeer_timeout_ms = 200\nstale_ms = 2000\n"
    )
}
/// a's health checks of b and c.
const HEALTH: &str = "\n[health]\ninterval_ms = 500\ntimeout_ms = 300\nrise = 2\nfall = 3\n";
/// Without --for the lab runs until Ctrl-C, but never longer than this.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Datagrams still in flight when the client stops.
const SETTLE: Duration = Duration::from_millis(500);
/// How long a controller may take to stop after SIGINT.
const STOP_GRACE: Duration = Duration::from_secs(5);
const REFRESH: Duration = Duration::from_secs(1);

/// The lab's services: per site, what its UDP and TCP services counted.
struct Services {
    udp: Vec<UdpService>,
    tcp: Vec<Sink>,
}

/// `report`: where to write the report of the run (None: the terminal view only).
pub fn run(anycast: &Path, duration: Option<Duration>, report: Option<&Path>) -> Result<()> {
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    // The controllers run in their own process groups (testkit's Netns::spawn), so Ctrl-C
    // reaches only us: we stop the traffic, read the final counters, then stop them.
    // SIGTERM (ctrlc's "termination" feature) takes the same path.
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;

    // Declaration order is teardown order, in reverse: controllers stopped, then their pins
    // detached and files removed (Daemon's Drop), services stopped, namespaces deleted.
    let lab = ThreeSites::new("lab").context("building the lab's namespaces")?;
    let namespaces: Vec<String> =
        std::iter::once(&lab.client).chain(&lab.sites).map(|ns| ns.name().to_owned()).collect();
    println!("lab: namespaces {}", namespaces.join(", "));
    let services = Services {
        udp: lab.sites.iter().map(UdpService::start).collect::<std::io::Result<_>>()?,
        tcp: lab
            .sites
            .iter()
            .map(|ns| Sink::start(ns, (VIP, TCP_PORT).into()))
            .collect::<std::io::Result<_>>()?,
    };
    let mut daemons =
        lab.sites.iter().map(|ns| Daemon::with_binary(ns, anycast)).collect::<Result<Vec<_>, _>>()?;
    let leftovers: Vec<PathBuf> =
        daemons.iter().flat_map(|d| [d.pin_dir().to_owned(), d.dir().to_owned()]).collect();

    let mut pids = Vec::new();
    let ramp = ramp(duration);
    let mut recording = report::Recording::default();
    let mut result = start_daemons(&lab, &mut daemons, &mut pids, &stop)
        .and_then(|()| observe(&lab, &services, &mut daemons, duration, &ramp, &mut recording, &stop));

    // Teardown runs whatever happened above; the first problem is the one reported.
    for (daemon, name) in daemons.iter_mut().zip(NAMES) {
        let stopped = match daemon.stop(libc::SIGINT, STOP_GRACE) {
            Ok((status, true)) if status.success() => Ok(()),
            Ok((status, true)) => Err(anyhow!("site {name}'s controller ended with {status} on SIGINT")),
            Ok((_, false)) => {
                Err(anyhow!("site {name}'s controller did not stop within {STOP_GRACE:?} of SIGINT"))
            }
            // Never started.
            Err(testkit::daemon::DaemonError::NotRunning) => Ok(()),
            Err(e) => Err(anyhow!("stopping site {name}'s controller: {e}")),
        };
        result = result.and(stopped);
    }
    if result.is_err() {
        daemons.iter().zip(NAMES).for_each(print_log_tail);
    }
    drop(daemons);
    drop(services);
    drop(lab);
    let mut left: Vec<String> = namespaces
        .iter()
        .map(|name| Path::new(testkit::netns::NETNS_DIR).join(name))
        .chain(leftovers)
        .filter(|path| path.exists())
        .map(|path| path.display().to_string())
        .collect();
    left.extend(pids.iter().filter(|&&pid| is_anycast(pid)).map(|pid| format!("anycast process {pid}")));
    recording.checks.push(Check::new(
        "teardown left nothing behind",
        left.is_empty(),
        match left.is_empty() {
            true => "no namespace, link, pin, file or process".to_owned(),
            false => left.join(", "),
        },
    ));
    if let Some(path) = report {
        report::write(path, &recording.timeline(&ramp, report::notes(duration)))?;
        println!("lab: report: {}", path.display());
    }
    if !left.is_empty() {
        bail!("teardown left behind: {}", left.join(", "));
    }
    println!("lab: torn down; no namespace, link, pin, file or process left");
    result
}

fn is_anycast(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "anycast")
}

/// Site `me`'s config: a (index 0) steers the VIP over all sites by load and checks b's and
/// c's health; b and c serve it locally and decapsulate what a sends them.
fn config(lab: &ThreeSites, me: usize) -> String {
    let extra = match me {
        0 => format!("{}{HEALTH}", load_policy()),
        _ => load_policy(),
    };
    format!("# Generated by `cargo xtask run` for site {}.\n{}", NAMES[me], lab.config(me, CAPACITY, &extra))
}

/// Starts b's and c's controllers, then a's (whose program redirects into their uplinks,
/// which deliver only once they run XDP), each waited for until it serves /metrics.
fn start_daemons(
    lab: &ThreeSites,
    daemons: &mut [Daemon],
    pids: &mut Vec<u32>,
    stop: &AtomicBool,
) -> Result<()> {
    for me in [1, 2, 0] {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted before the controllers were up");
        }
        let daemon = &mut daemons[me];
        daemon.set_peer_listen((TUNNEL[me], PEER_PORT).into());
        daemon.write_config(&config(lab, me))?;
        let start = Instant::now();
        daemon.start().with_context(|| format!("starting site {}'s controller", NAMES[me]))?;
        pids.extend(daemon.pid());
        // `ip -d link` prints "prog/xdp id N" for native mode, "prog/xdpgeneric" for generic.
        let uplink = format!("{}0", NAMES[me]);
        let details = lab.sites[me].ip(&["-d", "link", "show", "dev", &uplink])?;
        let xdp = details
            .lines()
            .find(|l| l.trim_start().starts_with("prog/xdp"))
            .map_or("no XDP program".to_owned(), |l| {
                l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
            });
        println!(
            "lab: site {}: controller up in {:.1} s; {uplink}: {xdp}; log {}",
            NAMES[me],
            start.elapsed().as_secs_f64(),
            daemon.log_path().display()
        );
    }
    for (ns, name) in lab.sites.iter().zip(NAMES) {
        println!(
            "lab: site {name} metrics: ip netns exec {} curl -s http://{ADMIN_LISTEN}/metrics",
            ns.name()
        );
    }
    println!("lab: site a's status: anycast status --socket {}", daemons[0].socket().display());
    Ok(())
}

fn print_log_tail((daemon, name): (&Daemon, &str)) {
    let log = daemon.log();
    let lines: Vec<&str> = log.lines().collect();
    println!("--- site {name}: last lines of {}", daemon.log_path().display());
    for line in &lines[lines.len().saturating_sub(15)..] {
        println!("    {line}");
    }
}

/// One reading of every site: the data path's packet counters by peer site and action,
/// a's weights, and what each service has counted.
struct Snapshot {
    /// [site][peer] packets: local (peer = site), forwarded to peer, received from peer.
    local: Vec<u64>,
    forwarded: Vec<Vec<u64>>,
    received: Vec<Vec<u64>>,
    weights: Vec<u64>,
    /// a's view of every site: smoothed load (measured for a, reported by b and c) and
    /// whether its health checks pass.
    loads: Vec<Option<f64>>,
    up: Vec<bool>,
    served: Vec<u64>,
    /// [site] the TCP connections its service has finished, and those still open.
    tcp_served: Vec<Vec<Served>>,
    tcp_open: Vec<usize>,
}

impl Snapshot {
    fn take(daemons: &[Daemon], services: &Services) -> Result<Snapshot> {
        let series = |site: &str, action: &str| {
            format!("anycast_site_packets_total{{site=\"{site}\",action=\"{action}\"}}")
        };
        let of = |family: &str, site: &str| format!("{family}{{site=\"{site}\"}}");
        let mut snap = Snapshot {
            local: vec![],
            forwarded: vec![],
            received: vec![],
            weights: vec![],
            loads: vec![],
            up: vec![],
            served: services.udp.iter().map(UdpService::datagrams).collect(),
            tcp_served: services.tcp.iter().map(Sink::served).collect(),
            tcp_open: services.tcp.iter().map(Sink::open).collect(),
        };
        for (daemon, name) in daemons.iter().zip(NAMES) {
            let text = daemon.get("/metrics").with_context(|| format!("site {name}"))?;
            // A counter not exported yet has counted nothing.
            let count = |series: &str| metric(&text, series).unwrap_or(0);
            snap.local.push(count(&series(name, "local")));
            snap.forwarded.push(NAMES.iter().map(|p| count(&series(p, "forwarded"))).collect());
            snap.received.push(NAMES.iter().map(|p| count(&series(p, "received"))).collect());
            if name == NAMES[0] {
                snap.weights = NAMES.iter().map(|p| count(&of("anycast_site_weight", p))).collect();
                snap.loads = NAMES.iter().map(|p| gauge(&text, &of("anycast_site_load_ratio", p))).collect();
                snap.up = NAMES.iter().map(|p| count(&of("anycast_site_up", p)) == 1).collect();
            }
        }
        Ok(snap)
    }

    fn print(&self, header: &str) {
        let weights: Vec<String> = NAMES.iter().zip(&self.weights).map(|(s, w)| format!("{s}={w}")).collect();
        println!("{header}   weights at a: {}", weights.join(" "));
        let health: Vec<String> = NAMES
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let load = self.loads[i].map_or("?".to_owned(), |l| format!("{l:.2}"));
                format!("{s} load {load} {}", if self.up[i] { "up" } else { "DOWN" })
            })
            .collect();
        println!("    a sees: {}", health.join(", "));
        for (i, site) in NAMES.iter().enumerate() {
            let by_peer = |counts: &[u64], arrow: &str| {
                let parts: Vec<String> = NAMES
                    .iter()
                    .zip(counts)
                    .filter(|(_, n)| **n > 0)
                    .map(|(p, n)| format!("{arrow}{p} {n}"))
                    .collect();
                (counts.iter().sum::<u64>(), parts.join(" "))
            };
            let (fwd, fwd_by) = by_peer(&self.forwarded[i], "→");
            let (rcv, rcv_by) = by_peer(&self.received[i], "←");
            println!(
                "    site {site}: local {:>6}   forwarded {:>6} {:<20} received {:>6} {:<12} UDP served {:>6}",
                self.local[i],
                fwd,
                format!("({fwd_by})").replace("()", ""),
                rcv,
                format!("({rcv_by})").replace("()", ""),
                self.served[i]
            );
        }
    }

    /// The packets of the TCP connections site `i` served: what the client's kernel sent
    /// on each of them.
    fn tcp_packets(&self, i: usize, tcp: &[Report]) -> u64 {
        let ports: Vec<u16> = self.tcp_served[i].iter().map(|s| s.peer.port()).collect();
        tcp.iter().filter(|t| ports.contains(&t.local.port())).map(|t| t.segments).sum()
    }

    /// The final figures of every site's services.
    fn print_services(&self, tcp: &[Report]) {
        for (i, site) in NAMES.iter().enumerate() {
            let bytes: u64 = self.tcp_served[i].iter().map(|s| s.bytes).sum();
            println!(
                "    site {site}: served {} datagrams and {} TCP connections ({bytes} bytes, {} packets)",
                self.served[i],
                self.tcp_served[i].len(),
                self.tcp_packets(i, tcp)
            );
        }
    }

    /// Every packet is accounted for: each site served what it kept plus what it received
    /// (UDP datagrams, and the packets of the TCP connections it served, as counted by the
    /// client's kernel), a forwarded to each site exactly what that site received, the
    /// services together served what the client sent, and every TCP connection completed
    /// with every byte counted by exactly one site.
    fn checks(&self, sent: u64, tcp: &[Report]) -> Vec<Check> {
        let mut checks = Vec::new();
        for (i, site) in NAMES.iter().enumerate() {
            let kept = self.local[i] + self.received[i].iter().sum::<u64>();
            let tcp_packets = self.tcp_packets(i, tcp);
            checks.push(Check::new(
                format!("site {site}: packets kept + received = packets its services served"),
                kept == self.served[i] + tcp_packets,
                format!(
                    "site {site} kept/received {kept} packets, served {} datagrams + {tcp_packets} TCP packets",
                    self.served[i]
                ),
            ));
            if i > 0 {
                checks.push(Check::new(
                    format!("packets a forwarded to {site} = packets {site} received from a"),
                    self.forwarded[0][i] == self.received[i][0],
                    format!(
                        "a forwarded {} to {site}, {site} received {} from a",
                        self.forwarded[0][i], self.received[i][0]
                    ),
                ));
            }
        }
        let served: u64 = self.served.iter().sum();
        checks.push(Check::new(
            "the services served every datagram the client sent",
            served == sent,
            format!("the client sent {sent} datagrams, the services served {served}"),
        ));
        let resets: Vec<String> = tcp
            .iter()
            .filter_map(|t| match &t.outcome {
                Outcome::Reset(why) => {
                    Some(format!("TCP connection from port {} reset: {why}", t.local.port()))
                }
                Outcome::Completed => None,
            })
            .collect();
        checks.push(Check::new(
            "TCP: every long-lived connection completed, none reset",
            tcp.len() == TCP_CONNECTIONS as usize && resets.is_empty(),
            match resets.is_empty() {
                true => format!("{} of {TCP_CONNECTIONS} TCP connections completed, 0 reset", tcp.len()),
                false => resets.join("; "),
            },
        ));
        let miscounted: Vec<String> = tcp
            .iter()
            .filter_map(|t| {
                let port = t.local.port();
                let at: Vec<u64> = self
                    .tcp_served
                    .iter()
                    .flatten()
                    .filter(|s| s.peer.port() == port)
                    .map(|s| s.bytes)
                    .collect();
                (at != [t.sent]).then(|| {
                    format!(
                        "TCP connection from port {port}: sent {} bytes, the services counted {at:?}",
                        t.sent
                    )
                })
            })
            .collect();
        checks.push(Check::new(
            "TCP: every byte counted by the one site that served its connection",
            miscounted.is_empty(),
            match miscounted.is_empty() {
                true => format!("{} bytes", tcp.iter().map(|t| t.sent).sum::<u64>()),
                false => miscounted.join("; "),
            },
        ));
        checks
    }
}

/// An error naming the checks that failed, if any did.
fn all_passed(checks: &[Check], what: &str) -> Result<()> {
    let failed: Vec<&str> = checks.iter().filter(|c| !c.passed).map(|c| c.detail.as_str()).collect();
    match failed.is_empty() {
        true => Ok(()),
        false => bail!("{what}: {}", failed.join("; ")),
    }
}

/// Runs the client (its rate ramping) and the TCP connections for `duration` (or until
/// stopped), prints every site's counters, weights, load and health each second, and checks
/// what a did with the surge and the final counts.
fn observe(
    lab: &ThreeSites,
    services: &Services,
    daemons: &mut [Daemon],
    duration: Option<Duration>,
    ramp: &Ramp,
    recording: &mut report::Recording,
    stop: &AtomicBool,
) -> Result<()> {
    let total = duration.unwrap_or(MAX_DURATION).min(MAX_DURATION);
    let vip = SocketAddr::from((VIP, UDP_PORT));
    let tcp_vip = SocketAddr::from((VIP, TCP_PORT));
    let until = match duration {
        Some(d) => format!("for {}s", d.as_secs()),
        None => "until Ctrl-C".to_owned(),
    };
    println!(
        "lab: the client opens {NORMAL_FLOWS} flows/s to {vip} (each a new source port, {DATAGRAMS_PER_FLOW} datagrams), {SURGE_FLOWS} flows/s from {}s to {}s{} {until}",
        ramp.steps[1].0.as_secs(),
        ramp.steps[2].0.as_secs(),
        if duration.is_none() { " of every minute" } else { "" }
    );
    println!(
        "lab: capacities (packets/s at utilisation 1): a {}, b {}, c {}; a sheds new flows above 0.9 of its capacity, down to 0.75, and takes them back below 0.6",
        CAPACITY[0], CAPACITY[1], CAPACITY[2]
    );
    println!(
        "lab: and keeps {TCP_CONNECTIONS} TCP connections to {tcp_vip} sending {} KiB/s each {until}",
        TCP_BYTES_PER_SEC >> 10
    );
    let connections = (0..TCP_CONNECTIONS)
        .map(|_| Connection::open(&lab.client, (CLIENT, 0).into(), tcp_vip))
        .collect::<std::io::Result<Vec<_>>>()
        .context("opening the TCP connections")?;
    let client = FlowClient::new(DATAGRAMS_PER_FLOW);
    let client_stop = AtomicBool::new(false);
    let (watched, sent, tcp) = thread::scope(|s| {
        let transfers = s.spawn(|| tcp::transfer(connections, TCP_BYTES_PER_SEC, total, &client_stop));
        let sender = s.spawn(|| send_flows(&lab.client, &client, ramp, total, &client_stop));
        let watched = watch(services, daemons, &client, total, ramp, recording, stop);
        client_stop.store(true, Ordering::Relaxed);
        let sent = sender.join().map_err(|_| anyhow!("the UDP client panicked")).and_then(|r| r);
        let tcp = transfers.join().map_err(|_| anyhow!("the TCP transfers panicked"));
        (watched, sent, tcp)
    });
    let (steered, (), tcp) = (watched?, sent?, tcp?);
    // Datagrams still in flight when the client stopped are counted before the last reading.
    thread::sleep(SETTLE);
    let last = Snapshot::take(daemons, services)?;
    let (flows, datagrams) = (client.flows(), client.datagrams());
    let bytes: u64 = tcp.iter().map(|t| t.sent).sum();
    last.print(&format!(
        "final: the client sent {datagrams} datagrams in {flows} flows and {bytes} bytes on {} TCP connections",
        tcp.len()
    ));
    last.print_services(&tcp);
    let counts = last.checks(datagrams, &tcp);
    let steering = steered.checks(&last);
    recording.checks.extend(counts.iter().chain(&steering).cloned());
    all_passed(&counts, "the counts do not add up")?;
    println!(
        "lab: every packet accounted for: served (UDP datagrams + TCP packets) = kept + received at each site; forwarded by a = received by b, c"
    );
    println!(
        "lab: TCP: {} connections, {bytes} bytes, every byte counted by the site that served the connection, 0 reset",
        tcp.len()
    );
    all_passed(&steering, "steering")?;
    if steered.max_spill > 0.0 {
        println!(
            "lab: during the surge a shed up to {:.0} % of its new flows to b and c; {}",
            steered.max_spill * 100.0,
            match last.weights[1..].iter().all(|&w| w == 0) {
                true => "after it, a took them all back",
                false => "the lab ended before a took them all back",
            }
        );
    }
    Ok(())
}

/// New UDP flows at the ramp's rate, a slice at a time, until `total` or `stop`.
fn send_flows(
    ns: &Netns,
    client: &FlowClient,
    ramp: &Ramp,
    total: Duration,
    stop: &AtomicBool,
) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < total && !stop.load(Ordering::Relaxed) {
        let rate = ramp.at(start.elapsed());
        let flows = (f64::from(rate) * SLICE.as_secs_f64()).round().max(1.0) as u32;
        client.send(ns, rate, flows, stop).context("sending UDP flows")?;
    }
    Ok(())
}

/// New flows per second over time: steps `(from, flows/s)` in order of `from`, the whole
/// schedule repeating every `period`.
#[derive(Clone, Debug)]
struct Ramp {
    steps: Vec<(Duration, u32)>,
    period: Duration,
}

impl Ramp {
    fn at(&self, t: Duration) -> u32 {
        let t = Duration::from_nanos((t.as_nanos() % self.period.as_nanos().max(1)) as u64);
        self.steps.iter().take_while(|(from, _)| *from <= t).last().map_or(0, |(_, rate)| *rate)
    }

    /// The stretches of one rate from 0 to `until`: `(from, to, flows/s)`, in order, the
    /// schedule repeated each period and neighbours of one rate merged.
    fn spans(&self, until: Duration) -> Vec<(Duration, Duration, u32)> {
        let mut spans: Vec<(Duration, Duration, u32)> = Vec::new();
        let mut period_start = Duration::ZERO;
        while period_start < until && !self.period.is_zero() {
            for (i, &(from, rate)) in self.steps.iter().enumerate() {
                let to = self.steps.get(i + 1).map_or(self.period, |s| s.0);
                let (from, to) = (period_start + from, (period_start + to).min(until));
                if from >= to {
                    continue;
                }
                match spans.last_mut() {
                    Some(last) if last.2 == rate && last.1 == from => last.1 = to,
                    _ => spans.push((from, to, rate)),
                }
            }
            period_start += self.period;
        }
        spans
    }
}

/// The client's rate: normal, a surge from a quarter of the run to 60 % of it (without
/// --for: from 15 s to 36 s of every minute), then normal again.
fn ramp(duration: Option<Duration>) -> Ramp {
    let (surge, calm, period) = match duration {
        Some(d) => (d / 4, d * 3 / 5, d + RAMP_PERIOD),
        None => (Duration::from_secs(15), Duration::from_secs(36), RAMP_PERIOD),
    };
    Ramp { steps: vec![(Duration::ZERO, NORMAL_FLOWS), (surge, SURGE_FLOWS), (calm, NORMAL_FLOWS)], period }
}

/// What the lab saw a's controller do.
#[derive(Default)]
struct Steered {
    /// The largest share of new flows a gave b and c, from its weights.
    max_spill: f64,
    /// How long the last surge and the calm after it lasted when the lab ended.
    surged: Duration,
    calmed: Duration,
}

impl Steered {
    /// The ramp must have made a spill, and the calm after it bring the flows home, given
    /// time for both (the policy reacts within a second, settles within a few).
    fn checks(&self, last: &Snapshot) -> Vec<Check> {
        let spilled = Check::new(
            "during the surge a shed new flows to b and c",
            self.surged < Duration::from_secs(4) || self.max_spill > 0.0,
            match (self.surged, self.max_spill) {
                (_, spill) if spill > 0.0 => format!("up to {:.0} % of a's new flows", spill * 100.0),
                (surged, _) if surged < Duration::from_secs(4) => {
                    format!("the surge lasted {surged:?}, too short to expect a spill")
                }
                (surged, _) => format!("the surge lasted {surged:?} and a never shed a new flow to b or c"),
            },
        );
        let home = last.weights[1..].iter().all(|&w| w == 0);
        let due = self.surged > Duration::ZERO && self.calmed >= Duration::from_secs(5);
        let back = Check::new(
            "after the surge a took its new flows back",
            !due || home,
            match (home, due) {
                (true, _) => format!("weights at the end {:?}: every new flow stays at a", last.weights),
                (false, true) => format!(
                    "{:?} after the surge, a still sends new flows to b or c: weights {:?}",
                    self.calmed, last.weights
                ),
                (false, false) => {
                    format!("the lab ended {:?} after the surge, before a took them all back", self.calmed)
                }
            },
        );
        vec![spilled, back]
    }
}

fn watch(
    services: &Services,
    daemons: &mut [Daemon],
    client: &FlowClient,
    total: Duration,
    ramp: &Ramp,
    recording: &mut report::Recording,
    stop: &AtomicBool,
) -> Result<Steered> {
    let start = Instant::now();
    recording.begin(start, Snapshot::take(daemons, services)?);
    let mut next = start + REFRESH;
    let mut steered = Steered::default();
    let mut rate = ramp.at(Duration::ZERO);
    let mut since = Duration::ZERO;
    while start.elapsed() < total {
        if stop.load(Ordering::Relaxed) {
            println!("lab: interrupted; stopping the client and tearing down");
            return Ok(Steered::default());
        }
        for (daemon, name) in daemons.iter_mut().zip(NAMES) {
            if let Some(status) = daemon.exited()? {
                bail!("site {name}'s controller exited early ({status})");
            }
        }
        let now = start.elapsed();
        let wanted = ramp.at(now);
        if wanted != rate {
            let pps = wanted * DATAGRAMS_PER_FLOW;
            match wanted > rate {
                true => println!(
                    "lab: the load rises to {wanted} new flows/s ({pps} datagrams/s + TCP), above a's capacity of {} packets/s: watch a shed new flows to b and c by their headroom",
                    CAPACITY[0]
                ),
                false => println!(
                    "lab: the load falls back to {wanted} new flows/s ({pps} datagrams/s + TCP): watch a take its new flows back"
                ),
            }
            (rate, since) = (wanted, now);
            if wanted > NORMAL_FLOWS {
                steered.calmed = Duration::ZERO;
            }
        }
        match rate > NORMAL_FLOWS {
            true => steered.surged = now - since,
            false if steered.surged > Duration::ZERO => steered.calmed = now - since,
            false => {}
        }
        if Instant::now() >= next {
            next += REFRESH;
            let header = format!(
                "[{:>3}s] client: {rate} new flows/s; sent {} datagrams in {} flows",
                now.as_secs(),
                client.datagrams(),
                client.flows()
            );
            let snap = Snapshot::take(daemons, services)?;
            let all: u64 = snap.weights.iter().sum();
            if all > 0 {
                steered.max_spill =
                    steered.max_spill.max(snap.weights[1..].iter().sum::<u64>() as f64 / all as f64);
            }
            snap.print(&header);
            recording.add(Instant::now(), snap);
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(steered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_spans_calm_surge_calm_and_repeats() {
        let s = Duration::from_secs;
        let run = ramp(Some(s(30)));
        assert_eq!(
            run.spans(s(30)),
            [
                (s(0), s(7) + Duration::from_millis(500), NORMAL_FLOWS),
                (s(7) + Duration::from_millis(500), s(18), SURGE_FLOWS),
                (s(18), s(30), NORMAL_FLOWS)
            ]
        );
        // Without --for: every minute, and the calm at the end of one minute runs into the next.
        let endless = ramp(None);
        assert_eq!(
            endless.spans(s(100)),
            [
                (s(0), s(15), NORMAL_FLOWS),
                (s(15), s(36), SURGE_FLOWS),
                (s(36), s(75), NORMAL_FLOWS),
                (s(75), s(96), SURGE_FLOWS),
                (s(96), s(100), NORMAL_FLOWS)
            ]
        );
        assert_eq!(endless.spans(Duration::ZERO), []);
    }
}
