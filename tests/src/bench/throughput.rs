//! Forwarding throughput on a veth pair, with BPF_PROG_RUN's live-frames mode as the packet
//! generator (there is no pktgen module on this kernel): the anchor TCP ACK arrives on `lb0`
//! again and again, and `bench_sink` on the peer `nb0` counts what comes out.
//!
//! - anycast: the data path encapsulates (IPIP) and returns XDP_TX; in live mode the kernel
//!   turns XDP_TX into a redirect out of the ingress device (net/bpf/test_run.c), so the
//!   frames leave `lb0` towards `nb0` exactly as a driver's XDP_TX would.
//! - kernel: the generator runs the no-op program, whose XDP_PASS injects the same frames
//!   into the stack (live mode builds skbs and calls netif_receive_skb), which DNATs the
//!   VIP to the first site's endpoint with nftables and routes the result out of `lb0` —
//!   the same job (one flow in, one flow out to the site) done the kernel's way. Without
//!   `nft`, plain routing of the VIP towards that endpoint (reported as such).
//!
//! Live mode recycles its frames with their bytes as the last run left them (only the data
//! pointers are reset), so both paths run behind the reset harness, which restores the
//! frame and tail-calls the anycast or the no-op program: the harness's cost (the `noop`
//! per-packet case) is in both figures.
//!
//! pps = frames counted at the sink / time the generator ran. Every run is bounded in
//! frames and in time. Both paths run on one CPU (the generator's, where the veth peer's
//! NAPI also runs), so the figures compare per-core costs.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anycast_user::datapath::object::{BENCH_CEILING, BENCH_SINK};
use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};

use super::{counters::Totals, reset::ResetHarness, world};
use crate::{
    anchor,
    harness::{DataPath, xdp_md},
    netns::Netns,
    packet::hex,
};

/// Frames per live-mode batch: the kernel's default (NAPI_POLL_WEIGHT), well under the veth
/// peer's 256-entry ring, so a batch never overflows it before the flush.
const BATCH: u32 = 64;
/// Frames per BPF_PROG_RUN call; the time bound is checked between calls.
const CHUNK: u32 = 1 << 16;
/// Time for frames still in flight (the peer's NAPI) before the sink is read.
const SETTLE: Duration = Duration::from_millis(50);
const NFT_TABLE: &str = "anycast_bench";

pub struct Throughput {
    pub anycast_pps: f64,
    /// The platform's ceiling: `bench_ceiling` (MACs swapped, XDP_TX) on the same veth.
    pub ceiling_pps: f64,
    pub kernel_pps: f64,
    /// How the kernel path forwarded: "nftables DNAT" or "plain routing".
    pub kernel_job: &'static str,
    pub notes: Vec<String>,
}

/// What one generator run produced.
struct Run {
    sent: u64,
    counted: u64,
    elapsed: Duration,
}

impl Run {
    fn pps(&self) -> f64 {
        self.counted as f64 / self.elapsed.as_secs_f64()
    }
}

/// The ceiling program, loaded.
struct Ceiling(Ebpf);

impl Ceiling {
    fn load() -> Result<Ceiling> {
        let mut ebpf = Ebpf::load(BENCH_CEILING).context("loading the bench_ceiling object")?;
        let prog: &mut Xdp =
            ebpf.program_mut("bench_ceiling").context("no program bench_ceiling")?.try_into()?;
        prog.load().context("loading bench_ceiling into the kernel")?;
        Ok(Ceiling(ebpf))
    }

    fn program(&self) -> Result<&Xdp> {
        Ok(self.0.program("bench_ceiling").context("no program bench_ceiling")?.try_into()?)
    }
}

/// The sink on `nb0` and its counter.
struct Sink {
    _ebpf: Ebpf,
    packets: PerCpuArray<MapData, u64>,
}

impl Sink {
    fn attach(nb: &Netns, nb0: u32) -> Result<Sink> {
        let mut ebpf = Ebpf::load(BENCH_SINK).context("loading the bench_sink object")?;
        let prog: &mut Xdp = ebpf.program_mut("bench_sink").context("no program bench_sink")?.try_into()?;
        prog.load().context("loading bench_sink into the kernel")?;
        // Native mode: XDP_TX frames from the veth peer arrive only at a native XDP program.
        nb.run(|| prog.attach_to_if_index(nb0, XdpMode::Driver)).context("attaching bench_sink to nb0")?;
        let packets = PerCpuArray::try_from(ebpf.take_map("SINK_PACKETS").context("no map SINK_PACKETS")?)?;
        Ok(Sink { _ebpf: ebpf, packets })
    }

    fn count(&self) -> Result<u64> {
        Ok(self.packets.get(&0, 0)?.iter().sum())
    }
}

/// Up to `frames` copies of `frame` through `prog` in live mode, arriving on `ingress`,
/// for at most `max_time`; call inside the namespace of `ingress`.
fn generate(
    prog: &Xdp,
    frame: &[u8],
    ingress: u32,
    frames: u64,
    max_time: Duration,
    sink: &Sink,
) -> Result<Run> {
    // One CPU for the whole run: the peer's NAPI (and the sink) then runs where the
    // generator does, and a migration cannot split a run over two CPUs.
    super::pin_to_current_cpu()?;
    let ctx = xdp_md(frame.len(), ingress);
    let before = sink.count()?;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < frames && start.elapsed() < max_time {
        let repeat = CHUNK.min((frames - sent) as u32);
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_RUN in live-frames mode")?;
        sent += u64::from(repeat);
    }
    let elapsed = start.elapsed();
    std::thread::sleep(SETTLE);
    Ok(Run { sent, counted: sink.count()? - before, elapsed })
}

/// Runs both paths, `frames` frames each (bounded by `max_time` each).
pub fn run(topo: &world::Topology, frames: u64, max_time: Duration) -> Result<Throughput> {
    let sink = Sink::attach(&topo.nb, topo.nb0)?;
    let frame = hex(anchor::ACK);
    let mut notes = Vec::new();

    let mut harness = ResetHarness::load()?;
    let ceiling = Ceiling::load()?;
    harness.prepare(&frame, 0, ceiling.program()?.fd()?)?;
    let run = topo.lb.run(|| generate(harness.program()?, &frame, topo.lb0, frames, max_time, &sink))?;
    ensure!(
        run.counted * 2 >= run.sent,
        "ceiling: only {} of {} frames reached the sink",
        run.counted,
        run.sent
    );
    notes.push(format!(
        "ceiling (MACs swapped, XDP_TX): {} of {} frames at the sink in {:.3} s",
        run.counted,
        run.sent,
        run.elapsed.as_secs_f64()
    ));
    let ceiling_pps = run.pps();

    let mut anycast = DataPath::load().context("loading the anycast data path")?;
    let mut maps = anycast.maps()?;
    world::configure(&mut maps)?;
    // The flow's handshake first: its ACKs then hit the flow table, as an established
    // forwarded flow's do.
    for f in [hex(anchor::SYN), frame.clone()] {
        topo.lb.run(|| anycast.run(&f, Some(topo.lb0)))?;
    }
    harness.prepare(&frame, 0, anycast.xdp().fd()?)?;
    let before = Totals::read(&maps)?;
    let run = topo.lb.run(|| generate(harness.program()?, &frame, topo.lb0, frames, max_time, &sink))?;
    let moved = Totals::read(&maps)?.since(&before);
    // Every generated frame must have taken the forwarding path: counted forwarded, no
    // exception.
    ensure!(
        moved.forwarded == run.sent && moved.exceptions.iter().all(|&n| n == 0),
        "anycast live run: {} frames sent, counters moved by {moved:?}",
        run.sent
    );
    ensure!(
        run.counted * 2 >= run.sent,
        "anycast live run: only {} of {} frames reached the sink",
        run.counted,
        run.sent
    );
    notes.push(format!(
        "anycast: {} of {} frames at the sink in {:.3} s",
        run.counted,
        run.sent,
        run.elapsed.as_secs_f64()
    ));
    let anycast_pps = run.pps();

    let kernel_job = kernel_path(&topo.lb)?;
    let noop = DataPath::load_noop().context("loading the noop program")?;
    harness.prepare(&frame, 0, noop.xdp().fd()?)?;
    let run = topo.lb.run(|| generate(harness.program()?, &frame, topo.lb0, frames, max_time, &sink))?;
    if kernel_job == DNAT {
        let forwarded = nft_forward_count(&topo.lb)?;
        ensure!(
            forwarded >= run.counted,
            "kernel path: {} frames at the sink but only {forwarded} forwarded after DNAT: something else reached the sink",
            run.counted
        );
    }
    ensure!(
        run.counted * 10 >= run.sent,
        "kernel path: only {} of {} frames reached the sink; the stack is not forwarding them",
        run.counted,
        run.sent
    );
    notes.push(format!(
        "kernel ({kernel_job}): {} of {} frames at the sink in {:.3} s",
        run.counted,
        run.sent,
        run.elapsed.as_secs_f64()
    ));
    Ok(Throughput { anycast_pps, ceiling_pps, kernel_pps: run.pps(), kernel_job, notes })
}

const DNAT: &str = "nftables DNAT";
const ROUTING: &str = "plain routing (nft not installed)";

/// Makes the `lb` namespace forward the VIP's traffic to the first site: nftables DNAT when
/// `nft` exists, else a host route.
fn kernel_path(lb: &Netns) -> Result<&'static str> {
    // ICMP redirects (the packet leaves by the interface it came in) would be extra work the
    // anycast path does not do; liberal TCP tracking keeps the repeated ACK in-window.
    for (key, value) in [
        ("net/ipv4/conf/all/send_redirects", "0"),
        ("net/ipv4/conf/lb0/send_redirects", "0"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/lb0/rp_filter", "0"),
    ] {
        lb.sysctl(key, value)?;
    }
    let endpoint = anchor::SITE_ENDPOINTS[0];
    let has_nft = Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_nft {
        lb.add_route(&[&format!("{}/32", anchor::VIP), "via", endpoint, "dev", "lb0"])?;
        return Ok(ROUTING);
    }
    let rules = format!(
        "table ip {NFT_TABLE} {{\n\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tip daddr {vip} tcp dport 80 dnat to {endpoint}\n\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip daddr {endpoint} tcp dport 80 counter\n\t}}\n\
         }}\n",
        vip = anchor::VIP
    );
    nft(lb, &["-f", "-"], Some(&rules))?;
    // Loaded with the nat table above: conntrack's sysctls exist only now.
    lb.sysctl("net/netfilter/nf_conntrack_tcp_be_liberal", "1")?;
    Ok(DNAT)
}

/// Packets the forward chain counted (forwarded after DNAT).
fn nft_forward_count(lb: &Netns) -> Result<u64> {
    let out = nft(lb, &["list", "chain", "ip", NFT_TABLE, "forward"], None)?;
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no counter in the forward chain:\n{out}"))
}

/// `nft ARGS` inside `lb` (a thread in the namespace spawns it: the child inherits the
/// thread's network namespace), with `stdin` fed if given.
fn nft(lb: &Netns, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let cmd = format!("nft {}", args.join(" "));
    let out = lb
        .run(|| -> Result<std::process::Output> {
            let mut child = Command::new("nft")
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
                input.write_all(text.as_bytes())?;
            }
            Ok(child.wait_with_output()?)
        })
        .with_context(|| format!("running `{cmd}`"))?;
    if !out.status.success() {
        bail!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
