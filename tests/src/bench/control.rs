//! Control-plane figures: Maglev build time, weight change → data path latency, `/metrics`
//! render time, the controller's peak RSS, `GET /load` latency while it is busy, and an owner
//! round trip's latency while the check flags are swept.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::{
        fd::AsRawFd as _,
        unix::{net::UnixStream, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anycast_common::{
    Action as Verdict, Exception, FlowKey, FlowValue, SiteCounters, SiteInfo, VipCounters,
    counters::exception_index,
    maps::MAGLEV_DEFAULT_SIZE,
    site::{MAGLEV_CHECK, MAGLEV_LOCAL, MAGLEV_SITE},
};
use anycast_user::{
    api::metrics::{self, Process, Scrape},
    reconcile::maglev::{self, Backend},
};
use anyhow::{Context, Result, anyhow, bail, ensure};

use super::{
    report::{CommandLatency, LoadLatency, round},
    stats::{median, quantile},
    world,
};
use crate::{
    anchor,
    harness::{Action, DataPath},
    netns::Netns,
    packet::{Packet, SYN, addr, tcp},
    reference,
};

/// Scale of the `/metrics` and RSS measurements.
const METRICS_SITES: usize = 256;
const METRICS_VIPS: usize = 64;

/// `n` sites with unequal weights (so the weighted path of the builder is exercised).
fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("site-{i:03}")).collect()
}

fn weighted(names: &[String]) -> Vec<Backend<'_>> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| Backend { index: i as u32, name, weight: 100 + 50 * (i as u32 % 5) })
        .collect()
}

/// Median ms to build a 65537-slot table for `sites` sites.
pub fn maglev_build_ms(sites: usize, rounds: usize) -> f64 {
    let names = names(sites);
    let backends = weighted(&names);
    let times: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            let table = maglev::build(&backends, MAGLEV_DEFAULT_SIZE);
            let ms = start.elapsed().as_secs_f64() * 1e3;
            std::hint::black_box(table);
            ms
        })
        .collect();
    median(&times)
}

/// Weight change → data path, median ms: in all, and its table build and swap parts.
pub struct WeightApply {
    pub total_ms: f64,
    pub build_ms: f64,
    pub swap_ms: f64,
}

/// Median ms from a weight change to the first new flow steered by the new table: build the
/// table (the anchor VIP's three sites, all weight on one), swap it in
/// (`DataPathMaps::set_maglev`: one outer-map update, which returns once no program can
/// still see the old table), and run new flows through the data path until one lands on
/// the site the change sends everything to. Each probe flow is chosen so that the *old*
/// table sends it elsewhere, so its landing proves the new table is in use. Call inside
/// the `lb` namespace (`bpf_fib_lookup`).
pub fn weight_apply(ingress: u32, rounds: usize) -> Result<WeightApply> {
    const PROBES: usize = 1000;
    const PROBE_TIME: Duration = Duration::from_secs(2);
    let mut dp = DataPath::load().context("loading the anycast data path")?;
    let mut maps = dp.maps()?;
    world::configure(&mut maps)?;
    let mut current = world::anchor_table();
    let mut sport = 1000u16;
    let (mut totals, mut builds, mut swaps) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let target = world::REMOTE_SITES[round % world::REMOTE_SITES.len()];
        let endpoint = addr(anchor::SITE_ENDPOINTS[round % world::REMOTE_SITES.len()]);
        let backends: Vec<Backend> = world::remote_backends()
            .into_iter()
            .map(|b| Backend { weight: u32::from(b.index == target), ..b })
            .collect();
        // Fresh flows the old table sends to another site, chosen before the clock starts.
        let probes: Vec<Vec<u8>> = std::iter::from_fn(|| {
            sport = sport.wrapping_add(1).max(1000);
            Some(tcp(anchor::CLIENT, anchor::VIP, sport, 80, SYN))
        })
        .filter(|p: &Packet| reference::bucket(&current, &p.key()) & MAGLEV_SITE != target)
        .take(PROBES)
        .map(|p| p.frame())
        .collect();

        let start = Instant::now();
        let table = maglev::build(&backends, MAGLEV_DEFAULT_SIZE);
        let built = start.elapsed();
        maps.set_maglev(world::VIP_TCP, &table)?;
        let swapped = start.elapsed();
        let mut landed = false;
        for probe in &probes {
            let run = dp.run(probe, Some(ingress))?;
            ensure!(run.action == Action::Tx, "probe flow: {:?}, expected XDP_TX", run.action);
            if run.frame.get(30..34).and_then(|d| <[u8; 4]>::try_from(d).ok()).map(std::net::IpAddr::from)
                == Some(endpoint)
            {
                landed = true;
                break;
            }
            if start.elapsed() > PROBE_TIME {
                break;
            }
        }
        let ms = start.elapsed().as_secs_f64() * 1e3;
        if !landed {
            bail!("weight change: no new flow reached site {target} within {PROBE_TIME:?} / {PROBES} flows");
        }
        totals.push(ms);
        builds.push(built.as_secs_f64() * 1e3);
        swaps.push((swapped - built).as_secs_f64() * 1e3);
        current = table;
    }
    Ok(WeightApply { total_ms: median(&totals), build_ms: median(&builds), swap_ms: median(&swaps) })
}

/// A scrape as the controller assembles it, at `sites` × `vips`, with non-zero values.
fn scrape(sites: usize, vips: usize) -> Scrape {
    let mut s = Scrape::default();
    for (i, name) in names(sites).into_iter().enumerate() {
        let n = i as u64 + 1;
        let c = SiteCounters {
            local_packets: n * 1_000_003,
            local_bytes: n * 98_000_294,
            forwarded_packets: n * 7_000_001,
            forwarded_bytes: n * 686_000_098,
            received_packets: n * 13,
            received_bytes: n * 1_274,
            probe_packets: 0,
        };
        s.sites.insert(name, (c, 100 + i as u32));
    }
    for i in 0..vips {
        s.vips.insert(
            format!("vip-{i:02}"),
            VipCounters { packets: i as u64 * 123_457, bytes: i as u64 * 12_098_786 },
        );
    }
    s.exceptions = (0..anycast_common::counters::EXCEPTION_SLOTS as u64).map(|i| i * 17).collect();
    s.events = (0..anycast_common::Event::COUNT as u64).map(|i| i * 5).collect();
    s.exceptions[exception_index(Exception::Truncated, Verdict::Pass) as usize] = 5;
    s.flow_entries = 123_456;
    s.flow_capacity = 262_144;
    s.process = Process::read();
    s
}

/// Median ms of `metrics::render` (text exposition of given counter values) at 256 sites ×
/// 64 VIPs; each round averages `per_round` renders. Reading the maps is not included.
pub fn metrics_render_ms(rounds: usize, per_round: usize) -> Result<f64> {
    let s = scrape(METRICS_SITES, METRICS_VIPS);
    let text = metrics::render(s.clone()).context("rendering /metrics")?;
    ensure!(
        text.lines().filter(|l| l.starts_with("anycast_site_packets_total{")).count() == 3 * METRICS_SITES,
        "the rendered text does not have one sample per site and action"
    );
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let inputs: Vec<Scrape> = (0..per_round).map(|_| s.clone()).collect();
        let start = Instant::now();
        for input in inputs {
            std::hint::black_box(metrics::render(input).context("rendering /metrics")?);
        }
        times.push(start.elapsed().as_secs_f64() * 1e3 / per_round as f64);
    }
    Ok(median(&times))
}

/// What the controller run measured.
pub struct ControllerRun {
    pub peak_rss_bytes: u64,
    /// Median ms of `GET /metrics` over HTTP (map reads + render + transfer).
    pub metrics_http_ms: f64,
    pub load: LoadLatency,
    /// Flow-table entries the sampler counted while busy, and reloads applied meanwhile.
    pub flow_entries: u64,
    pub reloads: usize,
    pub command: CommandLatency,
}

/// The flow table of the `/load` figure: 2^20 entries, filled before the busy phase.
const FLOW_TABLE: u32 = 1 << 20;
/// Where the controller serves `/load` to its siblings.
const PEER_LISTEN: &str = "127.0.0.1:9101";

/// Runs the `anycast` controller (`run --config`) with 256 sites × 64 VIPs on a veth in a
/// namespace of its own, idle for `idle`, scrapes `/metrics` a few times, and reads its
/// peak RSS (VmHWM); then measures `GET /load` idle and busy ([`load_latency`]) before
/// stopping it and removing its pins.
pub fn controller_peak_rss(anycast: &Path, idle: Duration) -> Result<ControllerRun> {
    let ns = Netns::new("bench-rss")?;
    ns.add_veth("rs0", &ns, "rs1")?;
    // The controller refuses a host that does not forward to its remote sites.
    ns.enable_forwarding()?;
    let dir = std::env::temp_dir().join(format!("anycast-bench-{}", std::process::id()));
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/anycast-bench-{}", std::process::id()));
    fs::create_dir_all(dir.join("state")).with_context(|| format!("creating {}", dir.display()))?;
    let config = dir.join("anycast.toml");
    fs::write(&config, controller_config(&pin_dir, &dir.join("state"), None))?;
    fs::write(dir.join("state/peer.key"), "bench-peer-key-0123456789abcdef")?;
    let log = dir.join("anycast.log");
    let result = (|| {
        let mut child = spawn_in(&ns, anycast, &config, &log)?;
        let outcome = measure(&ns, &mut child, idle).and_then(|(rss, http)| {
            let socket = dir.join("state/admin.sock");
            let (load, flow_entries, reloads) = load_latency(&ns, &child, &pin_dir, &dir, &config, &log)?;
            let command = command_latency(&child, &pin_dir, &socket, &config, &log)?;
            Ok(ControllerRun {
                peak_rss_bytes: rss,
                metrics_http_ms: http,
                load,
                flow_entries,
                reloads,
                command,
            })
        });
        // SIGTERM: the controller stops and leaves the (pinned) data path; then detach it.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait()?.is_none() {
            child.kill()?;
            child.wait()?;
        }
        outcome
    })();
    let detach = Command::new(anycast).arg("detach").arg("--pin-dir").arg(&pin_dir).output();
    let _ = fs::remove_dir_all(&pin_dir);
    let result = result.with_context(|| {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        format!("the anycast controller (log {}):\n{}", log.display(), tail.join("\n"))
    });
    if result.is_ok() {
        let _ = fs::remove_dir_all(&dir);
    }
    let detached = match detach {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(anyhow!(
            "`anycast detach --pin-dir {}`: {}",
            pin_dir.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(e).context("running anycast detach"),
    };
    let run = result?;
    detached?;
    Ok(run)
}

/// Peak RSS (bytes) and the median ms of `GET /metrics`.
fn measure(ns: &Netns, child: &mut Child, idle: Duration) -> Result<(u64, f64)> {
    let start = Instant::now();
    // Up when /metrics answers (bounded: the load of 64 tables takes well under a second).
    let up = loop {
        if let Some(status) = child.try_wait()? {
            bail!("the controller exited ({status}) before serving /metrics");
        }
        if ns.run(http_get_metrics).is_ok() {
            break start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(15) {
            bail!("the controller did not serve /metrics within 15 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut http = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let body = ns.run(http_get_metrics)?;
        http.push(t.elapsed().as_secs_f64() * 1e3);
        ensure!(body.contains("anycast_site_packets_total{"), "/metrics lacks the site counters");
    }
    if let Some(rest) = idle.checked_sub(start.elapsed()) {
        std::thread::sleep(rest.max(Duration::from_millis(200)));
    }
    let _ = up;
    let status = fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok((kib * 1024, median(&http)))
}

/// `GET /load` from the controller's peer listener, ms, every 5 ms for `time`.
fn load_samples(ns: &Netns, time: Duration) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    let start = Instant::now();
    while start.elapsed() < time {
        let t = Instant::now();
        ns.run(|| http_get(PEER_LISTEN, "/load"))?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(out)
}

/// An owner round trip as an operator's command waits for it, ms, every 20 ms for `time`:
/// `POST /drain/` of a site that does not exist, on the admin socket. The owner answers it
/// (404) from its own state and writes nothing, so the time is the command's wait for the
/// owner's thread and its answer, not a table build.
fn command_samples(socket: &Path, time: Duration) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    let start = Instant::now();
    while start.elapsed() < time {
        let t = Instant::now();
        let mut s =
            UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"POST /drain/no-such-site HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
        ensure!(
            text.split_whitespace().nth(1) == Some("404"),
            "POST /drain/no-such-site: {}",
            text.lines().next().unwrap_or("")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(out)
}

/// `GET /load` latency (what a sibling's poll waits for): first with the controller idle
/// (the baseline), then while its flow table holds 2^20 entries (which its sampler walks
/// every 2 s) and it reloads, again and again, a config whose 64 VIPs each have a Maglev
/// table of their own over 256 sites (so every reload rebuilds and swaps 64 tables).
/// Returns the figures, the flow-table count the controller reported and the reloads it
/// applied during the busy phase.
fn load_latency(
    ns: &Netns,
    child: &Child,
    pin_dir: &Path,
    dir: &Path,
    config: &Path,
    log: &Path,
) -> Result<(LoadLatency, u64, usize)> {
    // The first report comes with the steering task's second measurement.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ns.run(|| http_get(PEER_LISTEN, "/load")).is_err() {
        ensure!(Instant::now() < deadline, "no /load within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let idle = load_samples(ns, Duration::from_secs(2))?;
    fill_flows(pin_dir, FLOW_TABLE)?;
    let state = dir.join("state");
    let variants = [controller_config(pin_dir, &state, Some(0)), controller_config(pin_dir, &state, Some(1))];
    let applied_before = applied(log)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let busy = std::thread::scope(|s| -> Result<Vec<f64>> {
        let reloader = s.spawn(|| -> Result<usize> {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                fs::write(config, &variants[i % 2])?;
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
                i += 1;
                // Wait for it to be applied (or 10 s), then the next one at once.
                let want = applied_before + i;
                let until = Instant::now() + Duration::from_secs(10);
                while applied(log)? < want
                    && Instant::now() < until
                    && !stop.load(std::sync::atomic::Ordering::Relaxed)
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Ok(i)
        });
        let samples = load_samples(ns, Duration::from_secs(8));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = reloader.join().map_err(|_| anyhow!("the reloader panicked"))??;
        // The last reload may still be in flight: what follows reads the tables it writes.
        wait_applied(log, applied_before + sent, Duration::from_secs(15), "the last reload")?;
        samples
    })?;
    let reloads = applied(log)? - applied_before;
    ensure!(reloads >= 2, "only {reloads} reloads during the busy phase: it was not busy");
    let metrics = ns.run(http_get_metrics)?;
    let flow_entries = metrics
        .lines()
        .find_map(|l| l.strip_prefix("anycast_flow_table_entries "))
        .and_then(|v| v.trim().parse().ok())
        .context("no anycast_flow_table_entries")?;
    let (idle_p99, busy_p99) = (quantile(&idle, 0.99), quantile(&busy, 0.99));
    let load = LoadLatency {
        idle_p50: round(median(&idle), 3),
        idle_p99: round(idle_p99, 3),
        busy_p50: round(median(&busy), 3),
        busy_p99: round(busy_p99, 3),
        busy_over_idle_p99: round(busy_p99 / idle_p99, 2),
    };
    Ok((load, flow_entries, reloads))
}

/// Owner round trips ([`command_samples`]) while the check flags are swept: the reloads of
/// [`load_latency`] brought buckets home, and flagged them; `check_grace = 2` then sweeps
/// them every second (one at a time), each sweep reading the 2^20 pins (every one alive,
/// so the flags they keep stay).
fn command_latency(
    child: &Child,
    pin_dir: &Path,
    socket: &Path,
    config: &Path,
    log: &Path,
) -> Result<CommandLatency> {
    // The baseline: the same tables (64, one per VIP: an owner command's own cost grows
    // with them) and the same full flow table, before any sweep — the first sweep is due
    // `check_grace` / 2 (30 s) after the controller's start, later than this.
    let idle = command_samples(socket, Duration::from_secs(3))?;
    // A flagged bucket without a live pin is cleared by the first sweep, and with no bucket
    // flagged no sweep runs: a few are kept by pins of their own.
    let kept = pin_into_flagged(pin_dir, 8)?;
    ensure!(kept > 0, "no flagged bucket after the reloads: nothing to sweep");
    let body = fs::read_to_string(config)?;
    fs::write(config, body.replacen("[datapath]\n", "[datapath]\ncheck_grace = 2\n", 1))?;
    let text = |log: &Path| fs::read_to_string(log).map_err(anyhow::Error::from);
    let before = applied(log)?;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_applied(log, before + 1, Duration::from_secs(10), "the check_grace reload")?;
    // From the first sweep on (its read of 2^20 pins takes a while).
    let mark = text(log)?.len();
    let sweeps_since = |mark: usize| -> Result<Vec<f64>> {
        Ok(text(log)?
            .get(mark..)
            .unwrap_or("")
            .lines()
            .filter_map(|l| l.split(" pins read in ").nth(1)?.split(" ms").next()?.parse().ok())
            .collect())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while sweeps_since(mark)?.is_empty() {
        ensure!(Instant::now() < deadline, "no sweep of the check flags within 10 s of check_grace = 2");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mark = text(log)?.len();
    // Long enough for more than one sweep of 2^20 pins (~2 s each on a busy 2-vCPU host).
    let sweeping = command_samples(socket, Duration::from_secs(8))?;
    let reads = sweeps_since(mark)?;
    ensure!(!reads.is_empty(), "no sweep ended while the round trips were measured");
    let (idle_p99, sweeping_p99) = (quantile(&idle, 0.99), quantile(&sweeping, 0.99));
    Ok(CommandLatency {
        idle_p50: round(median(&idle), 3),
        idle_p99: round(idle_p99, 3),
        sweeping_p50: round(median(&sweeping), 3),
        sweeping_p99: round(sweeping_p99, 3),
        sweeping_over_idle_p99: round(sweeping_p99 / idle_p99, 2),
        sweeps: reads.len(),
        sweep_read_ms: round(median(&reads), 1),
    })
}

/// Reloads the controller has logged as applied.
fn applied(log: &Path) -> Result<usize> {
    Ok(fs::read_to_string(log)?.matches("SIGHUP: config applied").count())
}

/// Waits until `want` reloads are applied; an error naming `what` after `within`.
fn wait_applied(log: &Path, want: usize, within: Duration, what: &str) -> Result<()> {
    let until = Instant::now() + within;
    while applied(log)? < want {
        ensure!(Instant::now() < until, "{what} was not applied within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// A configured remote site's slot in the pinned `SITES`, and its generation: what a pin to
/// it holds.
fn remote_site(pin_dir: &Path) -> Result<(u16, u32)> {
    use anycast_common::site::{SITE_CONFIGURED, SITE_LOCAL};
    use aya::maps::{Array, Map, MapData};
    let data = MapData::from_pin(pin_dir.join(anycast_common::maps::SITES))?;
    let sites: Array<MapData, SiteInfo> = Map::from_map_data(data)?.try_into()?;
    (0..sites.len())
        .find_map(|i| {
            let s = sites.get(&i, 0).ok()?;
            (s.flags & (SITE_CONFIGURED | SITE_LOCAL) == SITE_CONFIGURED).then_some((i as u16, s.generation))
        })
        .context("no remote site in SITES")
}

/// The pinned `FLOWS`, for writing.
fn pinned_flows(pin_dir: &Path) -> Result<aya::maps::HashMap<aya::maps::MapData, FlowKey, FlowValue>> {
    let data = aya::maps::MapData::from_pin(pin_dir.join(anycast_common::maps::FLOWS))?;
    Ok(aya::maps::Map::from_map_data(data)?.try_into()?)
}

/// Pins a live TCP flow (to a remote site) into up to `most` of the flagged local buckets of
/// the VIPs' tables, found by trying client addresses and ports under the config's hash
/// key: the sweeps then keep those flags, and so keep running. Returns how many it pinned.
fn pin_into_flagged(pin_dir: &Path, most: usize) -> Result<usize> {
    let maps = anycast_user::datapath::maps::DataPathMaps::from_pins(pin_dir, MAGLEV_DEFAULT_SIZE)?;
    let (site, generation) = remote_site(pin_dir)?;
    let mut flows = pinned_flows(pin_dir)?;
    let mut pinned = 0;
    for (vip, info) in maps.vips()? {
        let Some(table) = maps.maglev(info.index)? else { continue };
        let flagged = (0..table.len())
            .filter(|&s| table[s] & (MAGLEV_CHECK | MAGLEV_LOCAL) == MAGLEV_CHECK | MAGLEV_LOCAL);
        for slot in flagged {
            if pinned == most {
                return Ok(pinned);
            }
            // A try lands in the slot with probability 1 / table.len(): four times that many
            // tries miss it with probability e^-4, and then the next flagged slot is tried.
            let found = (0..4 * table.len() as u32)
                .map(|n| FlowKey {
                    src: [10, 99, (n >> 24) as u8, (n >> 16) as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    dst: vip.addr,
                    sport: n as u16,
                    dport: vip.port,
                    proto: vip.proto,
                    family: vip.family,
                    pad: [0; 2],
                })
                .find(|k| {
                    reference::maglev_slot(reference::flow_hash(k, &reference::KEY), table.len()) == slot
                });
            if let Some(key) = found {
                flows.insert(key, FlowValue { site, state: 0, generation }, 0)?;
                pinned += 1;
            }
        }
    }
    Ok(pinned)
}

/// Fills the pinned flow table with `n` distinct flows (what a busy site's table holds):
/// TCP flows of the 64 VIPs pinned to a remote site, with its slot's generation (so that
/// the sweep takes each for alive).
fn fill_flows(pin_dir: &Path, n: u32) -> Result<()> {
    use anycast_common::addr::Family;
    let (site, generation) = remote_site(pin_dir)?;
    let mut flows = pinned_flows(pin_dir)?;
    for i in 0..n {
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&(0x0a00_0000 | (i >> 8)).to_be_bytes());
        let key = FlowKey {
            src,
            dst: [10, 201, 0, (i % METRICS_VIPS as u32) as u8 + 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: (i & 0xff) as u16 + 1024,
            dport: 80,
            proto: libc::IPPROTO_TCP as u8,
            family: Family::V4 as u8,
            pad: [0; 2],
        };
        flows.insert(key, FlowValue { site, state: 0, generation }, 0)?;
    }
    Ok(())
}

/// `anycast run --config` inside `ns`: setns(2) in the child before exec, rather than
/// `ip netns exec`, which would also give it a private mount namespace and sysfs without
/// the host's /sys/fs/bpf where the controller pins.
fn spawn_in(ns: &Netns, anycast: &Path, config: &Path, log: &Path) -> Result<Child> {
    let netns = fs::File::open(Path::new("/run/netns").join(ns.name()))?;
    let out = fs::File::create(log)?;
    let mut cmd = Command::new(anycast);
    cmd.arg("run").arg("--config").arg(config).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    // A sweep that clears nothing says so only at debug (what `command_latency` counts).
    cmd.env("RUST_LOG", "info,anycast_user::owner::actor=debug");
    let fd = netns.as_raw_fd();
    // SAFETY: setns is async-signal-safe; `netns` outlives the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting {}", anycast.display()))
}

fn http_get_metrics() -> Result<String> {
    http_get("127.0.0.1:9100", "/metrics")
}

/// `GET path` over HTTP/1.0 (the server closes after its answer); the whole reply of a 200.
fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    ensure!(
        text.starts_with("HTTP/1.") && text.split_whitespace().nth(1) == Some("200"),
        "GET {path}: {}",
        text.lines().next().unwrap_or("")
    );
    Ok(text)
}

/// 256 sites (one local) × 64 VIPs. `tables: None`: every VIP served by every site (as with
/// `sites` omitted), the scale of the metrics figure; `Some(variant)`: VIP `v` served by
/// every site but `site-(v+1)`, so that each VIP has a table of its own, and the remote
/// capacities shifted by `variant` (so that a reload between two variants rebuilds all 64).
fn controller_config(pin_dir: &Path, state_dir: &Path, tables: Option<usize>) -> String {
    let mut c = format!(
        "[local]\ninterfaces = [\"rs0\"]\ntunnel_v4 = \"{}\"\n\n[datapath]\npin_dir = \"{}\"\nflow_table_size = {FLOW_TABLE}\nhash_key = \"{}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:9100\"\nstate_dir = \"{}\"\nsocket = \"{}\"\npeer_listen = \"{PEER_LISTEN}\"\n\
         peer_key_file = \"{}\"\n",
        world::TUNNEL_V4,
        pin_dir.display(),
        testkit::daemon::hash_key_hex(),
        state_dir.display(),
        state_dir.join("admin.sock").display(),
        state_dir.join("peer.key").display(),
    );
    for (i, name) in names(METRICS_SITES).iter().enumerate() {
        if i == 0 {
            c += &format!("\n[[sites]]\nname = \"{name}\"\nlocal = true\ncapacity = 100\n");
        } else {
            c += &format!(
                "\n[[sites]]\nname = \"{name}\"\nendpoint = \"10.1.{}.{}\"\nencap = \"ip\"\ncapacity = {}\n",
                i / 250,
                i % 250 + 1,
                100 + i + 100 * tables.unwrap_or(0)
            );
        }
    }
    let names = names(METRICS_SITES);
    for i in 0..METRICS_VIPS {
        c += &format!(
            "\n[[vips]]\nname = \"vip-{i:02}\"\naddress = \"10.201.0.{}\"\nport = 80\nprotocol = \"tcp\"\n",
            i + 1
        );
        if tables.is_some() {
            let members: Vec<String> = names
                .iter()
                .enumerate()
                .filter(|(s, _)| *s != i + 1)
                .map(|(_, n)| format!("\"{n}\""))
                .collect();
            c += &format!("sites = [{}]\n", members.join(", "));
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use anycast_user::config::{Config, SiteKind};

    use super::*;

    #[test]
    fn controller_config_is_valid_at_scale() {
        let text = controller_config(Path::new("/sys/fs/bpf/x"), Path::new("/tmp/x"), None);
        let c = Config::parse(&text, "bench.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!((c.sites.len(), c.vips.len()), (METRICS_SITES, METRICS_VIPS));
        assert_eq!(c.sites.iter().filter(|s| s.kind == SiteKind::Local).count(), 1);
        // The busy variants: 64 VIPs of 64 different site sets, capacities that differ.
        let [a, b] = [0, 1].map(|v| {
            let text = controller_config(Path::new("/sys/fs/bpf/x"), Path::new("/tmp/x"), Some(v));
            Config::parse(&text, "bench.toml").unwrap_or_else(|e| panic!("{e}"))
        });
        let sets: std::collections::BTreeSet<&Vec<String>> = a.vips.iter().map(|v| &v.sites).collect();
        assert_eq!(sets.len(), METRICS_VIPS);
        assert!(a.sites.iter().zip(&b.sites).skip(1).all(|(x, y)| x.capacity != y.capacity));
    }

    #[test]
    fn scrape_renders_every_site_and_vip() {
        let text = metrics::render(scrape(3, 2)).unwrap();
        assert!(text.contains("anycast_site_packets_total{site=\"site-002\",action=\"forwarded\"} 21000003"));
        assert!(text.contains("anycast_vip_packets_total{vip=\"vip-01\"} 123457"));
    }
}
