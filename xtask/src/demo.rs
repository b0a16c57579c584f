//! `cargo xtask run` with no arguments: a lab of network namespaces on this machine, the
//! `anycast` controller attached inside each site, bounded UDP traffic from a client
//! namespace to every site, and a teardown that leaves no namespace, link or process —
//! after `--for SECONDS`, on Ctrl-C/SIGTERM, on an error, or on a panic (guards' Drop).
//!
//! Topology: one client namespace; each site has its own namespace joined to the client by
//! a veth pair in 10.200.<i>.0/24 (client .1, site .2). The controller attaches to the site
//! end, `uplink`, so every datagram the client sends crosses the XDP program.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::{
    daemon::Daemon,
    lab::{self, End, Lab, Netns},
    traffic,
};

const SITES: &[&str] = &["a"];
const SITE_IFACE: &str = "uplink";
const PORT: u16 = 9000;
const RATE_PPS: u32 = 200;
/// Without --for the lab runs until Ctrl-C, but never longer than this.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// How long the controller may take to attach before the lab gives up.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
/// Datagrams still in flight when the senders stop.
const DRAIN: Duration = Duration::from_millis(300);

struct Site {
    name: &'static str,
    netns: Netns,
    addr: Ipv4Addr,
    client_addr: Ipv4Addr,
}

struct Topology {
    client: Netns,
    sites: Vec<Site>,
}

pub fn run(anycast: &Path, duration: Option<Duration>) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    // Ctrl-C reaches the whole foreground process group, controllers included (`ip netns
    // exec` execs them, so they are our direct children); we only have to stop waiting and
    // tear down. SIGTERM (ctrlc's "termination" feature) takes the same path.
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;

    let mut lab = Lab::new()?;
    let topology = build(&mut lab)?;
    println!("lab: namespaces {}", lab.names().join(", "));

    let mut daemons = topology
        .sites
        .iter()
        .map(|site| {
            let mut cmd = site.netns.command(anycast);
            cmd.args(["run", "--iface", SITE_IFACE]);
            Daemon::spawn(&format!("anycast in site {}", site.name), &mut cmd)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut result = observe(&topology, &mut daemons, duration, &stop);

    // Teardown runs whatever happened above; the first problem is the one reported.
    for daemon in &mut daemons {
        let stopped = match daemon.stop(Duration::from_secs(5)) {
            Ok(Some(status)) if !status.success() => {
                Err(anyhow!("{} ended with {status} when asked to stop (SIGINT)", daemon.name()))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(anyhow!("stopping {}: {e}", daemon.name())),
        };
        result = result.and(stopped);
    }
    drop(daemons);
    let names = lab.names();
    drop(lab);
    let left: Vec<String> =
        lab::existing_lab_namespaces().into_iter().filter(|n| names.contains(n)).collect();
    if !left.is_empty() {
        bail!("teardown left namespaces behind: {}", left.join(", "));
    }
    println!("lab: torn down; no namespace, link or process left");
    result
}

fn build(lab: &mut Lab) -> Result<Topology> {
    let client = lab.netns("client")?;
    let mut sites = Vec::with_capacity(SITES.len());
    for (i, &name) in SITES.iter().enumerate() {
        let netns = lab.netns(&format!("site-{name}"))?;
        let subnet = u8::try_from(i).context("too many sites")?;
        let (client_addr, addr) = (Ipv4Addr::new(10, 200, subnet, 1), Ipv4Addr::new(10, 200, subnet, 2));
        let client_iface = format!("to-{name}");
        lab.veth(
            End { netns: &client, iface: &client_iface, addr: client_addr },
            End { netns: &netns, iface: SITE_IFACE, addr },
            24,
        )?;
        sites.push(Site { name, netns, addr, client_addr });
    }
    Ok(Topology { client, sites })
}

/// Waits for every controller to attach, runs the traffic for `duration` (or until
/// stopped), and prints what arrived.
fn observe(
    topology: &Topology,
    daemons: &mut [Daemon],
    duration: Option<Duration>,
    stop: &Arc<AtomicBool>,
) -> Result<()> {
    wait_attached(topology, daemons, stop)?;
    let duration = duration.unwrap_or(MAX_DURATION).min(MAX_DURATION);
    match duration {
        MAX_DURATION => println!("lab: sending {RATE_PPS} datagrams/s to each site until Ctrl-C"),
        d => println!("lab: sending {RATE_PPS} datagrams/s to each site for {}s", d.as_secs()),
    }

    let senders_stop = Arc::new(AtomicBool::new(false));
    let flows = start_traffic(topology, duration, &senders_stop)?;
    let outcome = wait(daemons, Instant::now() + duration, stop);
    senders_stop.store(true, Ordering::Relaxed);
    let (senders, receivers): (Vec<_>, Vec<_>) =
        flows.into_iter().map(|f| (f.sender, (f.site, f.receiver, f.receiver_stop))).unzip();
    let sent = senders.into_iter().map(join).collect::<Result<Vec<u64>>>()?;
    // Datagrams still in flight when the senders stopped are counted before the receivers stop.
    thread::sleep(DRAIN);
    for ((site, receiver, receiver_stop), sent) in receivers.into_iter().zip(sent) {
        receiver_stop.store(true, Ordering::Relaxed);
        println!("lab: site {site}: sent {sent} datagrams, received {}", join(receiver)?);
    }
    outcome
}

/// Client → one site: a paced sender in the client namespace and a counter in the site's.
struct Flow {
    site: &'static str,
    sender: JoinHandle<Result<u64>>,
    receiver: JoinHandle<Result<u64>>,
    receiver_stop: Arc<AtomicBool>,
}

fn start_traffic(
    topology: &Topology,
    duration: Duration,
    senders_stop: &Arc<AtomicBool>,
) -> Result<Vec<Flow>> {
    let mut flows = Vec::new();
    for site in &topology.sites {
        let to = SocketAddr::from((site.addr, PORT));
        let receiver_stop = Arc::new(AtomicBool::new(false));
        // Its own deadline bounds the receiver even if nobody sets its flag.
        let receiver = traffic::receive(&site.netns, to, Arc::clone(&receiver_stop), duration + DRAIN * 2)?;
        let sender = traffic::Sender {
            from: SocketAddr::from((site.client_addr, 0)),
            to,
            rate_pps: RATE_PPS,
            duration,
        }
        .spawn(&topology.client, Arc::clone(senders_stop));
        flows.push(Flow { site: site.name, sender, receiver, receiver_stop });
    }
    Ok(flows)
}

fn join(handle: JoinHandle<Result<u64>>) -> Result<u64> {
    handle.join().map_err(|_| anyhow!("traffic thread panicked"))?
}

/// Polls until every controller's interface shows an XDP program (`ip -d link` prints
/// "prog/xdp id N" for native mode, "prog/xdpgeneric id N" for generic), or fails if a
/// controller exits first.
fn wait_attached(topology: &Topology, daemons: &mut [Daemon], stop: &AtomicBool) -> Result<()> {
    let start = Instant::now();
    let mut pending: Vec<usize> = (0..topology.sites.len()).collect();
    while !pending.is_empty() {
        check_running(daemons)?;
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted before the controllers attached");
        }
        if start.elapsed() > ATTACH_TIMEOUT {
            let names: Vec<&str> = pending.iter().map(|&i| topology.sites[i].name).collect();
            bail!("no XDP program on {SITE_IFACE} of site(s) {} after {ATTACH_TIMEOUT:?}", names.join(", "));
        }
        let mut still = Vec::new();
        for i in pending {
            let site = &topology.sites[i];
            let details = site.netns.link_details(SITE_IFACE)?;
            match details.lines().find(|l| l.trim_start().starts_with("prog/xdp")) {
                Some(line) => println!("lab: site {}: {SITE_IFACE} has {}", site.name, line.trim()),
                None => still.push(i),
            }
        }
        pending = still;
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn wait(daemons: &mut [Daemon], deadline: Instant, stop: &AtomicBool) -> Result<()> {
    while Instant::now() < deadline {
        if stop.load(Ordering::Relaxed) {
            println!("lab: interrupted; tearing down");
            return Ok(());
        }
        check_running(daemons)?;
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn check_running(daemons: &mut [Daemon]) -> Result<()> {
    for daemon in daemons {
        if let Some(status) = daemon.exited()? {
            bail!("{} exited early ({status}); its output is above", daemon.name());
        }
    }
    Ok(())
}
