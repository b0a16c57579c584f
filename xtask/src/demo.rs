//! `cargo xtask run` with no arguments: load-aware anycast steering between three sites,
//! live, on this machine. Network namespaces, `anycast run --config` in each site, a client
//! opening many short UDP flows to the VIP at a rate that ramps up past site a's capacity
//! and back down, a view of every site's counters, weights, load and health each second, and a teardown
//! that leaves no namespace, link, pin, file or process — after `--for SECONDS`, on
//! Ctrl-C/SIGTERM, on an error, or on a panic (guards' Drop).
//!
//! ```text
//! client ── 10.1.0.0/24 ── uplink [site a] to-b ── 10.2.0.0/24 ── uplink [site b]
//!                                          to-c ── 10.3.0.0/24 ── uplink [site c]
//! ```
//!
//! The client routes the VIP 10.200.1.1 to site a, as the nearest anycast site would be.
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
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::{
    daemon::{self, Daemon},
    lab::{self, End, Lab, Netns},
    traffic::{self, Client, Ramp, Sent, TcpClient, TcpResult, TcpServed},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
const VIP_PORT: u16 = 5300;
const TCP_PORT: u16 = 5301;
/// Long-lived TCP connections of the client, and the rate of each.
const TCP_CONNECTIONS: u32 = 6;
const TCP_BYTES_PER_SEC: u64 = 16 << 10;
/// The backbone links (a to b and c) carry IPIP's 20 bytes on top of the client's 1500-byte
/// packets. At 1500 the data path would answer full-size TCP segments with ICMP
/// frag-needed by XDP_TX, which a veth delivers only to a peer running XDP (the client's
/// does not), and the connections would stall.
const BACKBONE_MTU: &str = "1600";
/// Each controller's admin server, inside its site's namespace.
const ADMIN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9100);
/// The interface by which a site is reached (from the client for a, from a for b and c).
const UPLINK: &str = "uplink";
/// New flows/s at normal load (a at ~45 % of its capacity with the TCP connections) and
/// during the surge (~160 %: a sheds to b and c).
const NORMAL_FLOWS: u32 = 60;
const SURGE_FLOWS: u32 = 240;
/// Without --for, the ramp repeats every minute: normal, surge from 15 s, normal from 36 s.
const RAMP_PERIOD: Duration = Duration::from_secs(60);
const DATAGRAMS_PER_FLOW: u32 = 5;
/// Packets/s each site serves at utilisation 1 (a, b, c).
const CAPACITY: [u32; 3] = [800, 1000, 1000];
/// Every controller's `[admin] peer_listen` port, on its tunnel address.
const PEER_PORT: u16 = 9101;
/// The load policy of every site. `cpu = false`: the three sites share this machine's CPUs,
/// so the CPU figure would be the same everywhere and say nothing about any one site.
const LOAD: &str = "\n[load]\ntarget = 0.75\nhigh = 0.9\nlow = 0.6\nmax_step = 0.25\n\
                    interval_ms = 250\nsmoothing_ms = 500\ncpu = false\npeer_timeout_ms = 200\nstale_ms = 2000\n";
/// a's health checks of b and c.
const HEALTH: &str = "\n[health]\ninterval_ms = 500\ntimeout_ms = 300\nrise = 2\nfall = 3\n";
/// Far more than the flows of an hour of the demo that are alive at once, and ~1 MB of
/// kernel memory instead of the default's ~20 MB.
const FLOW_TABLE_SIZE: u32 = 16384;
/// Without --for the lab runs until Ctrl-C, but never longer than this.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// How long a controller may take to load, attach and serve /metrics.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Datagrams still in flight when the client stops.
const SETTLE: Duration = Duration::from_millis(500);
const REFRESH: Duration = Duration::from_secs(1);
const PIN_PREFIX: &str = "anycast-demo-";
const BPFFS: &str = "/sys/fs/bpf";

/// One site: its namespace, the controller's files and pins, the service's count.
struct Site {
    name: &'static str,
    netns: Netns,
    /// Its tunnel address: the outer destination of what a forwards to it (for a, the
    /// outer source).
    tunnel: Ipv4Addr,
    /// Config, state directory and controller log.
    dir: PathBuf,
    pin_dir: PathBuf,
    served: Arc<AtomicU64>,
    /// What its TCP service counted, per client port.
    tcp_served: TcpServed,
}

impl Site {
    fn config_path(&self) -> PathBuf {
        self.dir.join("anycast.toml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("anycast.log")
    }
}

pub fn run(anycast: &Path, duration: Option<Duration>) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    // The controllers run in their own process groups (daemon.rs), so Ctrl-C reaches only
    // us: we stop the traffic, read the final counters, then stop them. SIGTERM (ctrlc's
    // "termination" feature) takes the same path.
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;

    // Declaration order is teardown order, in reverse: controllers stopped, then their
    // pins detached and files removed, then the namespaces deleted.
    let mut lab = Lab::new()?;
    let mut leftovers = Leftovers::new(anycast)?;
    let (client, sites) = build(&mut lab, &mut leftovers)?;
    println!("lab: namespaces {}", lab.names().join(", "));

    let mut daemons = Vec::new();
    let mut pids = Vec::new();
    let mut result = start_daemons(anycast, &sites, &mut daemons, &mut pids, &stop)
        .and_then(|()| observe(&client, &sites, &mut daemons, duration, &stop));

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
    if result.is_err() {
        for site in &sites {
            print_log_tail(site);
        }
    }
    result = result.and(leftovers.remove());
    let names = lab.names();
    drop(lab);
    let mut left: Vec<String> =
        lab::existing_lab_namespaces().into_iter().filter(|n| names.contains(n)).collect();
    left.extend(sites.iter().filter(|s| s.pin_dir.exists()).map(|s| s.pin_dir.display().to_string()));
    left.extend(pids.iter().filter(|&&pid| is_anycast(pid)).map(|pid| format!("anycast process {pid}")));
    if !left.is_empty() {
        bail!("teardown left behind: {}", left.join(", "));
    }
    println!("lab: torn down; no namespace, link, pin, file or process left");
    result
}

/// Pins and files of this lab's controllers: `anycast detach` for every pin directory and
/// the work directory removed, explicitly at the end or, failing that, on Drop.
struct Leftovers {
    anycast: PathBuf,
    work: PathBuf,
    pin_dirs: Vec<PathBuf>,
}

impl Leftovers {
    fn new(anycast: &Path) -> Result<Leftovers> {
        remove_stale(anycast);
        let work = std::env::temp_dir().join(format!("{PIN_PREFIX}{}", std::process::id()));
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        Ok(Leftovers { anycast: anycast.to_owned(), work, pin_dirs: Vec::new() })
    }

    fn remove(&mut self) -> Result<()> {
        let mut result = Ok(());
        for pin_dir in self.pin_dirs.drain(..) {
            result = result.and(detach(&self.anycast, &pin_dir));
        }
        if self.work.exists() {
            let removed =
                fs::remove_dir_all(&self.work).with_context(|| format!("removing {}", self.work.display()));
            result = result.and(removed);
        }
        result
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("lab: {e:#}");
        }
    }
}

fn detach(anycast: &Path, pin_dir: &Path) -> Result<()> {
    if !pin_dir.exists() {
        return Ok(());
    }
    let out = std::process::Command::new(anycast)
        .arg("detach")
        .arg("--pin-dir")
        .arg(pin_dir)
        .output()
        .context("running anycast detach")?;
    if !out.status.success() {
        bail!(
            "anycast detach --pin-dir {}: {}",
            pin_dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Pins and files of labs whose xtask process is gone (killed with SIGKILL). Their
/// namespaces are removed by `Lab::new`; a pinned link outlives its interface's namespace
/// only as a defunct link, but the pins and maps stay until detached.
fn remove_stale(anycast: &Path) {
    for dir in [Path::new(BPFFS).to_owned(), std::env::temp_dir()] {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(PIN_PREFIX).and_then(|r| r.split('-').next()) else { continue };
            if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
                continue;
            }
            eprintln!("lab: removing {} left by an earlier lab (pid {pid} is gone)", entry.path().display());
            let removed = match dir == Path::new(BPFFS) {
                true => detach(anycast, &entry.path()),
                false => fs::remove_dir_all(entry.path()).map_err(Into::into),
            };
            if let Err(e) = removed {
                eprintln!("lab: {e:#}");
            }
        }
    }
}

fn is_anycast(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "anycast")
}

/// The namespaces, links, addresses, routes and neighbours of the diagram at the top, and
/// each site's directory and pin directory (registered for removal).
fn build(lab: &mut Lab, leftovers: &mut Leftovers) -> Result<(Netns, Vec<Site>)> {
    let client = lab.netns("client")?;
    let mut sites = Vec::new();
    for name in ["a", "b", "c"] {
        let netns = lab.netns(&format!("site-{name}"))?;
        netns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        let dir = leftovers.work.join(name);
        fs::create_dir_all(dir.join("state")).with_context(|| format!("creating {}", dir.display()))?;
        let pin_dir = Path::new(BPFFS).join(format!("{PIN_PREFIX}{}-{name}", std::process::id()));
        leftovers.pin_dirs.push(pin_dir.clone());
        sites.push(Site {
            name,
            netns,
            tunnel: Ipv4Addr::UNSPECIFIED,
            dir,
            pin_dir,
            served: Arc::default(),
            tcp_served: Arc::default(),
        });
    }

    let (client_addr, a_addr) = (Ipv4Addr::new(10, 1, 0, 2), Ipv4Addr::new(10, 1, 0, 1));
    lab.veth(
        End { netns: &client, iface: "to-a", addr: client_addr },
        End { netns: &sites[0].netns, iface: UPLINK, addr: a_addr },
        24,
    )?;
    client.ip(&["route", "add", &format!("{VIP}/32"), "via", &a_addr.to_string()])?;
    // A veth hands its peer CHECKSUM_PARTIAL skbs (UDP checksum not filled in); once XDP
    // has forwarded the frame, the skb built from it at the far site no longer says so and
    // the service would drop the datagram for a bad checksum. So: checksums in software.
    client.run("ethtool", &["-K", "to-a", "tx", "off"])?;
    // bpf_fib_lookup answers FWD_DISABLED on an ingress device without forwarding.
    for key in ["net/ipv4/conf/all/forwarding", "net/ipv4/conf/default/forwarding"] {
        sites[0].netns.sysctl(key, "1")?;
    }

    for i in 1..sites.len() {
        let subnet = u8::try_from(i + 1).context("too many sites")?;
        let (a_end, far_end) = (Ipv4Addr::new(10, subnet, 0, 1), Ipv4Addr::new(10, subnet, 0, 2));
        let a_iface = format!("to-{}", sites[i].name);
        lab.veth(
            End { netns: &sites[0].netns, iface: &a_iface, addr: a_end },
            End { netns: &sites[i].netns, iface: UPLINK, addr: far_end },
            24,
        )?;
        // bpf_fib_lookup needs a resolved neighbour, and nothing in the lab would ask for it.
        let mac = sites[i].netns.mac(UPLINK)?;
        sites[0].netns.ip(&[
            "neigh",
            "replace",
            &far_end.to_string(),
            "lladdr",
            &mac,
            "dev",
            &a_iface,
            "nud",
            "permanent",
        ])?;
        // The decapsulated datagrams come from the client: the site's reverse-path check
        // wants a route back to it through its uplink; and a's health probes come from a's
        // tunnel address on the first backbone link, where the echo reply goes back.
        sites[i].netns.ip(&["route", "add", "10.0.0.0/8", "via", &a_end.to_string()])?;
        sites[0].netns.ip(&["link", "set", &a_iface, "mtu", BACKBONE_MTU])?;
        sites[i].netns.ip(&["link", "set", UPLINK, "mtu", BACKBONE_MTU])?;
        // The site answers the client directly (through a, the lab's only way back). Its
        // ARP requests for a must not name the VIP as sender (a holds it too and ignores
        // such requests): the uplink's address instead, as on any direct-server-return host.
        sites[i].netns.sysctl("net/ipv4/conf/all/arp_announce", "2")?;
        // And a forwards those answers although their source, the VIP, is one of its own
        // addresses (otherwise dropped as martians).
        sites[0].netns.sysctl(&format!("net/ipv4/conf/{a_iface}/accept_local"), "1")?;
        sites[i].tunnel = far_end;
    }
    // a forwards with its end of the first backbone link as the outer source.
    sites[0].tunnel = Ipv4Addr::new(10, 2, 0, 1);
    Ok((client, sites))
}

/// The config of site `me`. a (index 0) steers the VIP over all sites by load; the others
/// serve it locally and decapsulate what a sends them.
fn config(sites: &[Site], me: usize) -> String {
    let site = &sites[me];
    let interfaces = match me {
        // a's program redirects to the backbone links, so they must be its interfaces too
        // (the controller puts its interfaces in the redirect map).
        0 => std::iter::once(UPLINK.to_owned())
            .chain(sites[1..].iter().map(|s| format!("to-{}", s.name)))
            .collect(),
        _ => vec![UPLINK.to_owned()],
    };
    let mut text = format!(
        "# Generated by `cargo xtask run` for site {name}.\n\
         [local]\ninterfaces = {interfaces:?}\ntunnel_v4 = \"{tunnel}\"\n\n\
         [datapath]\nflow_table_size = {FLOW_TABLE_SIZE}\npin_dir = \"{pins}\"\n\n\
         [admin]\nlisten = \"{ADMIN}\"\nstate_dir = \"{state}\"\npeer_listen = \"{tunnel}:{PEER_PORT}\"\n{LOAD}",
        name = site.name,
        tunnel = site.tunnel,
        pins = site.pin_dir.display(),
        state = site.dir.join("state").display(),
    );
    let peers: Vec<usize> = match me {
        0 => (0..sites.len()).collect(),
        _ => vec![me, 0],
    };
    for i in peers {
        let peer = &sites[i];
        let _ = write!(text, "\n[[sites]]\nname = \"{}\"\ncapacity = {}\n", peer.name, CAPACITY[i]);
        let _ = match i == me {
            true => writeln!(text, "local = true"),
            false => writeln!(
                text,
                "endpoint = \"{tunnel}\"\nencap = \"ip\"\npeer = \"{tunnel}:{PEER_PORT}\"",
                tunnel = peer.tunnel
            ),
        };
    }
    if me == 0 {
        text += HEALTH;
    }
    for (name, port, protocol) in [("svc", VIP_PORT, "udp"), ("tcp", TCP_PORT, "tcp")] {
        let _ = write!(
            text,
            "\n[[vips]]\nname = \"{name}\"\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"{protocol}\"\n"
        );
        if me != 0 {
            let _ = writeln!(text, "sites = [\"{}\"]", site.name);
        }
    }
    text
}

fn write_config(sites: &[Site], me: usize) -> Result<()> {
    let path = sites[me].config_path();
    fs::write(&path, config(sites, me)).with_context(|| format!("writing {}", path.display()))
}

/// Starts b's and c's controllers, then a's (whose program redirects into their uplinks,
/// which deliver only once they run XDP), each waited for until it serves /metrics.
fn start_daemons(
    anycast: &Path,
    sites: &[Site],
    daemons: &mut Vec<Daemon>,
    pids: &mut Vec<u32>,
    stop: &AtomicBool,
) -> Result<()> {
    for me in (1..sites.len()).chain([0]) {
        let site = &sites[me];
        write_config(sites, me)?;
        let log = fs::File::create(site.log_path())
            .with_context(|| format!("creating {}", site.log_path().display()))?;
        let mut cmd = site.netns.command(anycast);
        cmd.arg("run").arg("--config").arg(site.config_path()).env("RUST_LOG", "info");
        cmd.stdout(log.try_clone()?).stderr(log);
        daemons.push(Daemon::spawn(&format!("anycast in site {}", site.name), &mut cmd)?);
        let daemon = daemons.last_mut().expect("just pushed");
        pids.extend(daemon.pid());
        wait_ready(site, daemon, stop)?;
    }
    // In the order of `sites`: a first.
    daemons.rotate_right(1);
    println!(
        "lab: controller logs in {}/<site>/anycast.log",
        sites[0].dir.parent().unwrap_or(Path::new("/")).display()
    );
    for site in sites {
        println!(
            "lab: site {} metrics: ip netns exec {} curl -s http://{ADMIN}/metrics",
            site.name,
            site.netns.name()
        );
    }
    println!("lab: a site's status: ip netns exec NAMESPACE {} status --admin {ADMIN}", anycast.display());
    Ok(())
}

fn wait_ready(site: &Site, daemon: &mut Daemon, stop: &AtomicBool) -> Result<()> {
    let start = Instant::now();
    loop {
        if let Some(status) = daemon.exited()? {
            bail!("{} exited at start ({status})", daemon.name());
        }
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted before the controllers were up");
        }
        if fetch_metrics(&site.netns).is_ok() {
            // `ip -d link` prints "prog/xdp id N" for native mode, "prog/xdpgeneric" for generic.
            let details = site.netns.link_details(UPLINK)?;
            let xdp = details
                .lines()
                .find(|l| l.trim_start().starts_with("prog/xdp"))
                .map_or("no XDP program".to_owned(), |l| {
                    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
                });
            println!(
                "lab: site {}: controller up in {:.1} s; {UPLINK}: {xdp}",
                site.name,
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if start.elapsed() > START_TIMEOUT {
            bail!("{} does not serve http://{ADMIN}/metrics after {START_TIMEOUT:?}", daemon.name());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `/metrics` of the controller in `netns`, fetched from a thread inside that namespace
/// (the server listens on the namespace's 127.0.0.1).
fn fetch_metrics(netns: &Netns) -> Result<String> {
    netns
        .spawn(|| daemon::http_get(ADMIN, "/metrics"))
        .join()
        .map_err(|_| anyhow!("metrics thread panicked"))?
}

fn print_log_tail(site: &Site) {
    let Ok(log) = fs::read_to_string(site.log_path()) else { return };
    let lines: Vec<&str> = log.lines().collect();
    println!("--- site {}: last lines of {}", site.name, site.log_path().display());
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
    /// [site] (client port, bytes) of the TCP connections its service has finished.
    tcp_served: Vec<Vec<(u16, u64)>>,
}

impl Snapshot {
    fn take(sites: &[Site]) -> Result<Snapshot> {
        let series = |site: &str, action: &str| {
            format!("anycast_site_packets_total{{site=\"{site}\",action=\"{action}\"}}")
        };
        let mut snap = Snapshot {
            local: vec![],
            forwarded: vec![],
            received: vec![],
            weights: vec![],
            loads: vec![],
            up: vec![],
            served: vec![],
            tcp_served: vec![],
        };
        for site in sites {
            let text = fetch_metrics(&site.netns).with_context(|| format!("site {}", site.name))?;
            snap.local.push(daemon::metric(&text, &series(site.name, "local")));
            snap.forwarded
                .push(sites.iter().map(|p| daemon::metric(&text, &series(p.name, "forwarded"))).collect());
            snap.received
                .push(sites.iter().map(|p| daemon::metric(&text, &series(p.name, "received"))).collect());
            if site.name == sites[0].name {
                let of = |family: &str, p: &Site| format!("{family}{{site=\"{}\"}}", p.name);
                snap.weights =
                    sites.iter().map(|p| daemon::metric(&text, &of("anycast_site_weight", p))).collect();
                snap.loads =
                    sites.iter().map(|p| daemon::gauge(&text, &of("anycast_site_load_ratio", p))).collect();
                snap.up =
                    sites.iter().map(|p| daemon::metric(&text, &of("anycast_site_up", p)) == 1).collect();
            }
            snap.served.push(site.served.load(Ordering::Relaxed));
            snap.tcp_served.push(site.tcp_served.lock().map_err(|_| anyhow!("TCP counts poisoned"))?.clone());
        }
        Ok(snap)
    }

    fn print(&self, sites: &[Site], header: &str) {
        let weights: Vec<String> =
            sites.iter().zip(&self.weights).map(|(s, w)| format!("{}={w}", s.name)).collect();
        println!("{header}   weights at a: {}", weights.join(" "));
        let health: Vec<String> = sites
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let load = self.loads[i].map_or("?".to_owned(), |l| format!("{l:.2}"));
                format!("{} load {load} {}", s.name, if self.up[i] { "up" } else { "DOWN" })
            })
            .collect();
        println!("    a sees: {}", health.join(", "));
        for (i, site) in sites.iter().enumerate() {
            let by_peer = |counts: &[u64], arrow: &str| {
                let parts: Vec<String> = sites
                    .iter()
                    .zip(counts)
                    .filter(|(_, n)| **n > 0)
                    .map(|(p, n)| format!("{arrow}{} {n}", p.name))
                    .collect();
                (counts.iter().sum::<u64>(), parts.join(" "))
            };
            let (fwd, fwd_by) = by_peer(&self.forwarded[i], "→");
            let (rcv, rcv_by) = by_peer(&self.received[i], "←");
            println!(
                "    site {}: local {:>6}   forwarded {:>6} {:<20} received {:>6} {:<12} UDP served {:>6}",
                site.name,
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
    fn tcp_packets(&self, i: usize, tcp: &[TcpResult]) -> u64 {
        let ports: Vec<u16> = self.tcp_served[i].iter().map(|(port, _)| *port).collect();
        tcp.iter().filter(|t| ports.contains(&t.port)).map(|t| t.segments).sum()
    }

    /// The final figures of every site's services.
    fn print_services(&self, sites: &[Site], tcp: &[TcpResult]) {
        for (i, site) in sites.iter().enumerate() {
            let bytes: u64 = self.tcp_served[i].iter().map(|(_, b)| b).sum();
            println!(
                "    site {}: served {} datagrams and {} TCP connections ({bytes} bytes, {} packets)",
                site.name,
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
    fn check(&self, sites: &[Site], sent: u64, tcp: &[TcpResult]) -> Result<()> {
        let mut problems = Vec::new();
        for (i, site) in sites.iter().enumerate() {
            let kept = self.local[i] + self.received[i].iter().sum::<u64>();
            let served = self.served[i] + self.tcp_packets(i, tcp);
            if kept != served {
                problems.push(format!(
                    "site {} kept/received {kept} packets but served {} datagrams + {} TCP packets",
                    site.name,
                    self.served[i],
                    served - self.served[i]
                ));
            }
            if i > 0 && self.forwarded[0][i] != self.received[i][0] {
                problems.push(format!(
                    "a forwarded {} to {} but {} received {} from a",
                    self.forwarded[0][i], site.name, site.name, self.received[i][0]
                ));
            }
        }
        let served: u64 = self.served.iter().sum();
        if served != sent {
            problems.push(format!("the client sent {sent} datagrams, the services served {served}"));
        }
        if tcp.len() != TCP_CONNECTIONS as usize {
            problems.push(format!("{} of {TCP_CONNECTIONS} TCP connections reported", tcp.len()));
        }
        for t in tcp {
            if let Some(failure) = &t.failure {
                problems.push(format!("TCP connection from port {} reset: {failure}", t.port));
            }
            let at: Vec<u64> =
                self.tcp_served.iter().flatten().filter(|(p, _)| *p == t.port).map(|(_, b)| *b).collect();
            if at != [t.sent] {
                problems.push(format!(
                    "TCP connection from port {}: sent {} bytes, the services counted {at:?}",
                    t.port, t.sent
                ));
            }
        }
        match problems.is_empty() {
            true => Ok(()),
            false => bail!("the counts do not add up: {}", problems.join("; ")),
        }
    }
}

/// Runs the services and the client (its rate ramping) for `duration` (or until stopped),
/// prints every site's counters, weights, load and health each second, and checks what a
/// did with the surge and the final counts.
fn observe(
    client: &Netns,
    sites: &[Site],
    daemons: &mut [Daemon],
    duration: Option<Duration>,
    stop: &AtomicBool,
) -> Result<()> {
    let total = duration.unwrap_or(MAX_DURATION).min(MAX_DURATION);
    let ramp = ramp(duration);
    let vip = SocketAddr::from((VIP, VIP_PORT));
    let services_stop = Arc::new(AtomicBool::new(false));
    let client_stop = Arc::new(AtomicBool::new(false));
    let tcp_vip = SocketAddr::from((VIP, TCP_PORT));
    let sent = Arc::new(Sent::default());
    let tcp_results = Arc::new(Mutex::new(Vec::new()));
    let mut services = Vec::new();
    let watched = (|| {
        for site in sites {
            // Its own deadline bounds the service even if nobody sets its flag.
            let deadline = total + SETTLE * 4;
            services.push(traffic::serve(
                &site.netns,
                vip,
                Arc::clone(&site.served),
                Arc::clone(&services_stop),
                deadline,
            )?);
            services.push(traffic::serve_tcp(
                &site.netns,
                tcp_vip,
                Arc::clone(&site.tcp_served),
                Arc::clone(&services_stop),
                deadline,
            )?);
        }
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
        let tcp_client = TcpClient {
            to: tcp_vip,
            connections: TCP_CONNECTIONS,
            bytes_per_sec: TCP_BYTES_PER_SEC,
            duration: total,
        }
        .spawn(client, Arc::clone(&sent), Arc::clone(&tcp_results), Arc::clone(&client_stop));
        let client =
            Client { to: vip, rate: ramp.clone(), datagrams_per_flow: DATAGRAMS_PER_FLOW, duration: total }
                .spawn(client, Arc::clone(&sent), Arc::clone(&client_stop));
        let watched = watch(sites, daemons, &sent, total, &ramp, stop);
        client_stop.store(true, Ordering::Relaxed);
        let mut joined = join(client);
        for connection in tcp_client {
            joined = joined.and(join(connection));
        }
        watched.and_then(|steered| joined.map(|()| steered))
    })();
    // Datagrams still in flight when the client stopped are counted before the services stop.
    thread::sleep(SETTLE);
    let mut result = watched.and_then(|steered| {
        Snapshot::take(sites).and_then(|last| {
            let (flows, datagrams) = (sent.flows.load(Ordering::Relaxed), sent.datagrams.load(Ordering::Relaxed));
            let tcp = tcp_results.lock().map_err(|_| anyhow!("TCP results poisoned"))?.clone();
            let bytes: u64 = tcp.iter().map(|t| t.sent).sum();
            last.print(
                sites,
                &format!(
                    "final: the client sent {datagrams} datagrams in {flows} flows and {bytes} bytes on {} TCP connections",
                    tcp.len()
                ),
            );
            last.print_services(sites, &tcp);
            last.check(sites, datagrams, &tcp)?;
            println!(
                "lab: every packet accounted for: served (UDP datagrams + TCP packets) = kept + received at each site; forwarded by a = received by b, c"
            );
            println!(
                "lab: TCP: {} connections, {bytes} bytes, every byte counted by the site that served the connection, 0 reset",
                tcp.len()
            );
            steered.check(&last)?;
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
        })
    });
    services_stop.store(true, Ordering::Relaxed);
    for service in services {
        result = result.and(join(service));
    }
    result
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
    fn check(&self, last: &Snapshot) -> Result<()> {
        if self.surged >= Duration::from_secs(4) && self.max_spill == 0.0 {
            bail!("the surge lasted {:?} and a never shed a new flow to b or c", self.surged);
        }
        if self.surged > Duration::ZERO
            && self.calmed >= Duration::from_secs(5)
            && last.weights[1..].iter().any(|&w| w > 0)
        {
            bail!(
                "{:?} after the surge, a still sends new flows to b or c: weights {:?}",
                self.calmed,
                last.weights
            );
        }
        Ok(())
    }
}

fn watch(
    sites: &[Site],
    daemons: &mut [Daemon],
    sent: &Sent,
    total: Duration,
    ramp: &Ramp,
    stop: &AtomicBool,
) -> Result<Steered> {
    let start = Instant::now();
    let mut next = start + REFRESH;
    let mut steered = Steered::default();
    let mut rate = ramp.at(Duration::ZERO);
    let mut since = Duration::ZERO;
    while start.elapsed() < total {
        if stop.load(Ordering::Relaxed) {
            println!("lab: interrupted; stopping the client and tearing down");
            return Ok(Steered::default());
        }
        for daemon in daemons.iter_mut() {
            if let Some(status) = daemon.exited()? {
                bail!("{} exited early ({status})", daemon.name());
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
            let (flows, datagrams) =
                (sent.flows.load(Ordering::Relaxed), sent.datagrams.load(Ordering::Relaxed));
            let header = format!(
                "[{:>3}s] client: {rate} new flows/s; sent {datagrams} datagrams in {flows} flows, {} KiB over TCP",
                now.as_secs(),
                sent.tcp_bytes.load(Ordering::Relaxed) >> 10
            );
            let snap = Snapshot::take(sites)?;
            let all: u64 = snap.weights.iter().sum();
            if all > 0 {
                steered.max_spill =
                    steered.max_spill.max(snap.weights[1..].iter().sum::<u64>() as f64 / all as f64);
            }
            snap.print(sites, &header);
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(steered)
}

fn join(handle: JoinHandle<Result<()>>) -> Result<()> {
    handle.join().map_err(|_| anyhow!("traffic thread panicked"))?
}
