//! `cargo xtask bench` (binary `anycast-bench`): per-packet cost through BPF_PROG_RUN,
//! forwarding throughput on veth with live frames, and control-plane figures, written as
//! the JSON document of issue 7 and a table.
//!
//! - [`world`]: the anchor configuration (../shared/anchor-packets.md) and its namespaces;
//! - [`reset`]: the reset harness that restores the frame before each run;
//! - [`per_packet`]: the reset-harness cases, each verified before it is timed;
//! - [`throughput`]: anycast's XDP forwarding vs the kernel's own (nftables DNAT);
//! - [`control`]: Maglev build, weight change → data path, `/metrics`, controller RSS;
//! - [`report`]: the JSON schema and the table.

pub mod control;
pub mod counters;
pub mod per_packet;
pub mod report;
pub mod reset;
pub mod stats;
pub mod throughput;
pub mod world;

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};

use report::{Case, Control, Machine, MaglevBuild, Report, Throughput, round};

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub rounds: usize,
    pub repeat: u32,
    /// Frames and time bound per throughput run.
    pub live_frames: u64,
    pub live_time: Duration,
    pub controller_idle: Duration,
}

impl Scale {
    /// Issue 7: median of ≥ 5 rounds of ≥ 1e6 repetitions.
    pub const FULL: Scale = Scale {
        rounds: 5,
        repeat: 1_000_000,
        live_frames: 20_000_000,
        live_time: Duration::from_secs(4),
        controller_idle: Duration::from_secs(3),
    };
    /// Two builds side by side (`--against`): more, shorter rounds than [`Scale::FULL`] for
    /// as many repetitions, so that the median of the per-round differences rests on more
    /// pairs.
    pub const AGAINST: Scale = Scale { rounds: 11, repeat: 400_000, ..Scale::FULL };
    /// Smoke run (CI): well under a minute.
    pub const QUICK: Scale = Scale {
        rounds: 3,
        repeat: 200_000,
        live_frames: 2_000_000,
        live_time: Duration::from_secs(1),
        controller_idle: Duration::from_millis(1500),
    };
}

/// Pins the calling thread to the CPU it runs on: BPF_PROG_RUN runs the program on the
/// current CPU, so a migration in the middle of a round would mix two CPUs' caches (and
/// per-CPU maps) into one figure.
fn pin_to_current_cpu() -> Result<()> {
    // SAFETY: sched_getcpu has no preconditions; a zeroed cpu_set_t is valid and CPU_SET
    // writes within it.
    unsafe {
        let cpu = libc::sched_getcpu().max(0) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("pinning the benchmark thread");
        }
    }
    Ok(())
}

/// Runs every benchmark. `anycast` is the controller binary for the RSS figure.
pub fn run(scale: Scale, mode: &'static str, anycast: &Path) -> Result<Report> {
    if let Err(why) = testkit::require::kernel() {
        bail!("the benchmark loads XDP programs and makes network namespaces: {why}");
    }
    let mut machine = Machine::read(mode);
    let notes = &mut machine.notes;
    let topo = world::Topology::build().context("building the benchmark namespaces")?;

    eprintln!("bench: per-packet cases ({} rounds × {} repetitions)", scale.rounds, scale.repeat);
    let (results, (plain_noop, plain_local)) = topo.lb.run(|| -> Result<_> {
        pin_to_current_cpu()?;
        let mut pp = per_packet::PerPacket::load(topo.lb0, scale.repeat, None)?;
        let results = pp.run(scale.rounds, scale.repeat)?;
        Ok((results, pp.without_harness(scale.rounds, scale.repeat)?))
    })?;
    notes.push(format!(
        "per packet: BPF_PROG_RUN behind the reset harness (bench_reset restores the frame, then tail-calls the program), \
         median of {} rounds × {} repetitions, interleaved; ns_over_noop = case − noop, both through the harness \
         (without the harness, where no reset is needed: noop {plain_noop:.0} ns, vip_udp_stateless's frame {plain_local:.0} ns over it)",
        scale.rounds, scale.repeat
    ));
    notes.push(
        "cases, all on the anchor frames to VIP 10.200.1.1 (ports changed to pick each path's VIP entry): \
         vip_local_new = TCP SYN to :8080 (a table whose every bucket is local and clean, installed as its one slot: \
         a site that sheds none of the VIP's flows), a new client address each run (the harness stamps \
         a run counter into the IPv4 source); vip_local_established = TCP ACK to :8080 of a real connection the bench holds \
         (no hash, no lookup); vip_local_established_shared = the same ACK to :8082, whose 65537-slot table spreads new \
         flows over this host and the three sites, its bucket local and clean (a flow-table miss, then the hash and the bucket); vip_local_moved_bucket = TCP ACK to :8081 of a real connection whose \
         bucket names a remote site (flow table miss, then bpf_skc_lookup_tcp finds the socket); vip_forward_new = TCP SYN \
         to :80 over three IPIP sites (65537-slot weighted Maglev), a new client each run: an embryo written, XDP_TX after a \
         real bpf_fib_lookup (next hop cached, docs/datapath.md §7); vip_forward_handshake = the first ACK of each of 4096 \
         such SYNs (stamped alike): the promotion, a flow-table insert into an emptied table; vip_forward_established = TCP \
         ACK of a pinned forwarded flow (the flow table first: no hash, no bucket); vip_forward_established_many = the same ACK from a new client each run, each \
         of 65536 clients' flows pinned beforehand (a flow entry of its own per packet, as under many flows); vip_udp_stateless = UDP to :53 (affinity = \"none\", served locally), a new client \
         each run; vip_forward_udp_pinned = UDP to :5353 (affinity = \"flow\", remote buckets) of a flow its first \
         packet pinned (a QUIC connection's later packets: the flow table first, no hash, no bucket); vip_forward_new_evicting = UDP to :5353 (affinity = \"flow\", remote buckets), a new client each run, the \
         flow table first filled to capacity: each first packet pins and evicts (the steady state under a flood of new \
         pinned flows); decap = IPIP from 10.0.0.2 carrying the anchor SYN; malformed_drop = anchor UDP with IHL 4 (counted \
         bad_header and passed, docs/datapath.md §2)"
            .to_owned(),
    );
    let cases = results
        .iter()
        .map(|r| Case {
            name: r.name,
            ns_per_pkt: round(r.ns_per_pkt, 1),
            ns_over_noop: round(r.ns_over_noop, 1),
        })
        .collect();

    eprintln!(
        "bench: throughput (live frames, ≤ {} frames / {:?} per path)",
        scale.live_frames, scale.live_time
    );
    let tp = throughput::run(&topo, scale.live_frames, scale.live_time)?;
    notes.push(format!(
        "throughput: BPF_PROG_RUN live frames (batch 64) of the anchor TCP ACK into lb0, counted by bench_sink (XDP) on its \
         veth peer, one CPU; anycast = IPIP encap + XDP_TX of a pinned flow; ceiling = bench_ceiling (MACs swapped, XDP_TX: the least an XDP forwarder does); kernel = XDP_PASS into the stack, {} to the first site, \
         routed back out of lb0",
        tp.kernel_job
    ));
    notes.extend(tp.notes);
    let throughput = vec![
        Throughput::Pps { name: "anycast_xdp_forward", pps: tp.anycast_pps.round() },
        Throughput::Pps { name: "platform_ceiling", pps: tp.ceiling_pps.round() },
        Throughput::Pps { name: "kernel_forward", pps: tp.kernel_pps.round() },
        Throughput::Ratio { name: "anycast_over_ceiling", ratio: round(tp.anycast_pps / tp.ceiling_pps, 2) },
        Throughput::Ratio { name: "anycast_over_kernel", ratio: round(tp.anycast_pps / tp.kernel_pps, 2) },
        // The most any XDP forwarder could reach over the kernel path on this platform: a
        // target for `anycast_over_kernel` above it is out of reach of any data path.
        Throughput::Ratio { name: "ceiling_over_kernel", ratio: round(tp.ceiling_pps / tp.kernel_pps, 2) },
    ];

    eprintln!("bench: control plane");
    let build = |sites| round(control::maglev_build_ms(sites, scale.rounds), 3);
    let maglev_build_ms = MaglevBuild { sites_8: build(8), sites_64: build(64), sites_512: build(512) };
    let lb0 = topo.lb0;
    let weight = topo.lb.run(|| control::weight_apply(lb0, scale.rounds))?;
    let metrics_render_ms = control::metrics_render_ms(scale.rounds, 20)?;
    notes.push(format!(
        "control: maglev_build_ms = anycast_user::reconcile::maglev::build, 65537 slots, unequal weights; weight_apply_ms = from a \
         weight change (anchor VIP, all weight to one site) through table build ({:.1} ms) and DataPathMaps::set_maglev \
         ({:.1} ms: new inner map, one outer-map update, which waits out running programs) until a new flow that the old \
         table sent elsewhere lands on that site (BPF_PROG_RUN); metrics_render_ms = anycast_user::api::metrics::render of \
         given counters for 256 sites × 64 VIPs (map reads excluded)",
        weight.build_ms, weight.swap_ms
    ));
    let (rss_bytes, load_ms, command_ms) = if anycast.exists() {
        let c = control::controller_peak_rss(anycast, scale.controller_idle)?;
        notes.push(format!(
            "rss_bytes: VmHWM of `anycast run --config` (256 sites × 64 VIPs, attached to a veth in a namespace) after {:?} \
             idle and 5 scrapes; GET /metrics over HTTP there (map reads + render): {:.2} ms",
            scale.controller_idle, c.metrics_http_ms
        ));
        notes.push(format!(
            "load_ms: GET /load on that controller's peer listener every 5 ms (what a sibling's poll waits for): idle \
             (2 s, the baseline) and busy (8 s) with its flow table filled to 2^20 entries ({} counted by its sampler, \
             which walks them every 2 s) while it applied {} reloads back to back, each rebuilding and swapping 64 \
             Maglev tables over 256 sites; target: busy p99 ≤ 50 ms",
            c.flow_entries, c.reloads
        ));
        notes.push(format!(
            "command_ms: an owner round trip on that controller's admin socket every 20 ms (POST /drain/ of a site that \
             does not exist: the owner answers 404 from its state, writing nothing), idle (3 s after the reloads, the same \
             tables and full flow table, no sweep yet: the baseline) and for 8 s with `check_grace = 2`, so that the check flags that the reloads set (up to 8 \
             of them kept by a live pin each) are swept every second, each sweep reading the 2^20 pins ({} sweeps, a median {:.0} ms each, off the owner's \
             thread)",
            c.command.sweeps, c.command.sweep_read_ms
        ));
        (c.peak_rss_bytes, Some(c.load), Some(c.command))
    } else {
        notes.push(format!(
            "rss_bytes: {} not found, so this is the benchmark process's own VmHWM, not the controller's",
            anycast.display()
        ));
        (own_peak_rss()?, None, None)
    };
    Ok(Report {
        machine,
        cases,
        throughput,
        control: Control {
            maglev_build_ms,
            weight_apply_ms: round(weight.total_ms, 3),
            metrics_render_ms: round(metrics_render_ms, 3),
            rss_bytes,
            load_ms,
            command_ms,
        },
    })
}

/// The per-packet cases on this build and on `baseline` (another build's object of the same
/// map layout, e.g. main's), in the same rounds: each case runs on both builds back to back,
/// so that the host's drift, which moves single runs by tens of ns, hits both alike. Returns
/// the table (ns over the no-op of the same rounds; the difference is the median of the
/// per-round differences, with their range).
pub fn against(scale: Scale, baseline: &Path) -> Result<String> {
    if let Err(why) = testkit::require::kernel() {
        bail!("the benchmark loads XDP programs and makes network namespaces: {why}");
    }
    let topo = world::Topology::build().context("building the benchmark namespaces")?;
    eprintln!(
        "bench: per-packet cases, this build against {} ({} rounds × {} repetitions)",
        baseline.display(),
        scale.rounds,
        scale.repeat
    );
    let results = topo.lb.run(|| -> Result<_> {
        pin_to_current_cpu()?;
        per_packet::PerPacket::load(topo.lb0, scale.repeat, Some(baseline))?.run(scale.rounds, scale.repeat)
    })?;
    let mut t = format!(
        "{:<26} {:>10} {:>10} {:>10} {:>16}\n",
        "ns over noop", "this", "baseline", "this−base", "range of rounds"
    );
    for r in &results {
        let Some(b) = &r.baseline else { continue };
        t += &format!(
            "{:<26} {:>10.1} {:>10.1} {:>+10.1} {:>16}\n",
            r.name,
            r.ns_over_noop,
            b.ns_over_noop,
            b.diff,
            format!("{:+.1}..{:+.1}", b.diff_min, b.diff_max)
        );
    }
    Ok(t)
}

fn own_peak_rss() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:")?.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .context("no VmHWM in /proc/self/status")
}
