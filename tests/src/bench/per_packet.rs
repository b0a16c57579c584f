//! Per-packet cost through BPF_PROG_RUN, timed behind the reset harness
//! (anycast-ebpf/src/bin/bench_reset.rs): with `repeat > 1` the kernel hands the same
//! buffer to every repetition (net/bpf/test_run.c reuses one xdp_buff), so the harness
//! restores the input frame before each repetition and tail-calls the program under test.
//! The no-op baseline is timed through the same harness, so `ns_over_noop` is the cost of
//! the data path alone.
//!
//! Before a case is timed it is run once and its verdict, output frame and counter changes
//! are checked against docs/datapath.md; after each timed round its counters must have
//! moved by exactly `repetitions` packets of its kind. A benchmark of the wrong path is
//! worse than none: any mismatch stops the run with the reason.

use std::path::Path;

use std::collections::BTreeMap;

use anycast_common::{
    Action as Verdict, Event, Exception, FlowValue, maps::FLOW_TABLE_DEFAULT, site::MAGLEV_SITE,
};
use anycast_user::datapath::maps::DataPathMaps;
use anyhow::{Context, Result, bail, ensure};
use aya::programs::{ProgramFd, TestRun, TestRunOptions};

use super::{
    counters::Totals,
    reset::ResetHarness,
    stats::median,
    world::{
        self, Connections, NEXT_HOP_MAC, PORT_TCP_LOCAL, PORT_TCP_MOVED, PORT_TCP_SHARED, PORT_UDP_PINNED,
        TUNNEL_V4, VIP_TCP, VIP_TCP_LOCAL, VIP_TCP_MOVED, VIP_TCP_SHARED, VIP_UDP, VIP_UDP_PINNED,
    },
};
use crate::{
    anchor,
    expect::{self, Tunnel},
    harness::{Action, DataPath, xdp_md},
    packet::{self, HOST_MAC, Packet, addr, hex},
    reference,
};

/// Where the harness stamps its 4-byte run counter for the new-flow cases: the IPv4 source
/// address (frame offsets 26..30), a new client and so a new flow every run. (The source
/// port is not next to any other 2 bytes that may change: the destination address and port
/// select the VIP.)
const NEW_FLOW_STAMP: u32 = 26;
/// Offset of the destination port in the anchor frames (Ethernet 14 + IPv4 20 + 2).
const DPORT: usize = 36;
/// Repetitions per round of the handshake case: its SYNs' embryos must survive until their
/// ACKs (each overwritten one turns a promotion into an unpinned forward, which the
/// counters cannot tell apart): ~3 % of 4096 collide in 65536 embryo slots.
const HANDSHAKES: u32 = 4096;

/// Pinned flows of `vip_forward_established_many`, one per repetition: each packet's flow
/// state is then as far from the cache as under many established flows.
const MANY_PINS: u32 = 1 << 16;

/// The flow table before a timed round of a new-flow case.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    /// As the previous rounds left it.
    AsIs,
    /// Emptied: every insert of the round finds a free entry (the anchor's "reset the table
    /// between rounds"), so the figure is the insert, not the eviction.
    Empty,
    /// Filled to capacity with other flows: every insert of the round also evicts the least
    /// recently used entry (the LRU steady state under a flood of new flows).
    Full,
}

/// Which program the harness tail-calls.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Noop,
    Anycast,
}

/// What one packet of a case must do (docs/datapath.md).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The baseline: PASS, untouched, the data path not involved.
    Noop,
    /// Not for us: PASS, untouched, no counter (§2 pre-filter).
    NotOurs,
    /// To the case's VIP, for the local stack: PASS, untouched, VIP + local (§6).
    Local,
    /// To the case's VIP, forwarded to a remote site: XDP_TX, IPIP-encapsulated towards the
    /// site its Maglev table names (§7).
    Forward,
    /// IPIP from a known peer to our tunnel address: stripped, PASS, received (§5).
    Decap,
    /// IHL < 5 to a VIP: PASS untouched, `bad_header` (§2).
    Malformed,
}

impl Kind {
    /// The counter changes of one packet to VIP `vip`.
    fn per_packet(self, vip: u32) -> Totals {
        match self {
            Kind::Noop | Kind::NotOurs => Totals::default(),
            Kind::Local => Totals::vip(vip, 1, 0),
            Kind::Forward => Totals::vip(vip, 0, 1),
            Kind::Decap => Totals { received: 1, ..Totals::default() },
            Kind::Malformed => Totals::exception(Exception::BadHeader, Verdict::Pass),
        }
    }
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    kind: Kind,
    /// Offset the harness stamps with its run counter (0: none).
    vary_offset: u32,
    /// The VIP slot its packets are for (Local, Forward).
    vip: u32,
    /// What runs before each timed round (untimed).
    prime: Prime,
    table: Table,
    /// At most this many repetitions per round.
    repeat_cap: Option<u32>,
}

/// What runs before a timed round.
enum Prime {
    None,
    /// Each frame once through the data path: the handshake an established-flow case needs.
    Frames(Vec<Vec<u8>>),
    /// This frame (the SYNs) stamped as the round's frames will be, as many times, from the
    /// same run counter: the embryos the round's ACKs promote.
    Stamped(Vec<u8>),
    /// The case's frame stamped as the round's frames will be, each of those flows pinned
    /// (written as a promotion writes it) to the site its bucket names: every packet of
    /// the round follows a pin of its own.
    Pinned,
}

impl Case {
    fn target(&self) -> Target {
        if self.kind == Kind::Noop { Target::Noop } else { Target::Anycast }
    }
}

/// `frame` with its destination port replaced.
fn to_port(frame: &[u8], port: u16) -> Vec<u8> {
    packet::set(frame.to_vec(), DPORT, &port.to_be_bytes())
}

/// The cases, on the anchor frames (ports changed to pick the VIP entry of each path) and
/// the two packets the anchor set lacks (decap, malformed). Names are the JSON's.
fn cases() -> Vec<Case> {
    let (syn, ack, udp) = (hex(anchor::SYN), hex(anchor::ACK), hex(anchor::UDP));
    let decap = packet::ip_in_ip(anchor::SITE_ENDPOINTS[0], TUNNEL_V4, &Packet::parse(&syn)).frame();
    let malformed = packet::set(udp.clone(), 14, &[0x44]);
    let case = |name, frame, kind, vip| Case {
        name,
        frame,
        kind,
        vip,
        vary_offset: 0,
        prime: Prime::None,
        table: Table::AsIs,
        repeat_cap: None,
    };
    let stamped = |c: Case| Case { vary_offset: NEW_FLOW_STAMP, ..c };
    vec![
        case("noop", hex(anchor::NON_VIP), Kind::Noop, 0),
        case("non_vip_pass", hex(anchor::NON_VIP), Kind::NotOurs, 0),
        stamped(case("vip_local_new", to_port(&syn, PORT_TCP_LOCAL), Kind::Local, VIP_TCP_LOCAL)),
        case("vip_local_established", to_port(&ack, PORT_TCP_LOCAL), Kind::Local, VIP_TCP_LOCAL),
        case("vip_local_established_shared", to_port(&ack, PORT_TCP_SHARED), Kind::Local, VIP_TCP_SHARED),
        case("vip_local_moved_bucket", to_port(&ack, PORT_TCP_MOVED), Kind::Local, VIP_TCP_MOVED),
        stamped(case("vip_forward_new", syn.clone(), Kind::Forward, VIP_TCP)),
        Case {
            prime: Prime::Stamped(syn.clone()),
            table: Table::Empty,
            repeat_cap: Some(HANDSHAKES),
            ..stamped(case("vip_forward_handshake", ack.clone(), Kind::Forward, VIP_TCP))
        },
        Case {
            prime: Prime::Frames(vec![syn.clone(), ack.clone()]),
            ..case("vip_forward_established", ack.clone(), Kind::Forward, VIP_TCP)
        },
        Case {
            prime: Prime::Pinned,
            repeat_cap: Some(MANY_PINS),
            ..stamped(case("vip_forward_established_many", ack, Kind::Forward, VIP_TCP))
        },
        stamped(case("vip_udp_stateless", udp.clone(), Kind::Local, VIP_UDP)),
        Case {
            prime: Prime::Frames(vec![to_port(&udp, PORT_UDP_PINNED)]),
            ..case("vip_forward_udp_pinned", to_port(&udp, PORT_UDP_PINNED), Kind::Forward, VIP_UDP_PINNED)
        },
        Case {
            table: Table::Full,
            ..stamped(case(
                "vip_forward_new_evicting",
                to_port(&udp, PORT_UDP_PINNED),
                Kind::Forward,
                VIP_UDP_PINNED,
            ))
        },
        case("decap", decap, Kind::Decap, 0),
        case("malformed_drop", malformed, Kind::Malformed, 0),
    ]
}

/// One case's figures (of this build).
pub struct CaseResult {
    pub name: &'static str,
    pub ns_per_pkt: f64,
    pub ns_over_noop: f64,
    /// The same case on the baseline build, when one was loaded.
    pub baseline: Option<Baseline>,
}

/// A case on the baseline build, timed in the same rounds as this build's.
pub struct Baseline {
    pub ns_over_noop: f64,
    /// This build − the baseline: the median of the per-round differences (each round
    /// times both builds back to back, so drift cancels), and their range.
    pub diff: f64,
    pub diff_min: f64,
    pub diff_max: f64,
}

/// One build of the data path with its own maps, configured as [`world::configure`] says.
struct Build {
    dp: DataPath,
    maps: DataPathMaps,
}

impl Build {
    /// This build's object, or the one at `object`: it must have this build's map layout
    /// (the same world is written into its maps).
    fn load(object: Option<&Path>, flow_entries: u32) -> Result<Build> {
        let mut dp = match object {
            None => DataPath::load_anycast(Some(flow_entries)).context("loading the anycast data path")?,
            Some(path) => DataPath::load_anycast_file(path, Some(flow_entries))
                .with_context(|| format!("loading the baseline data path {}", path.display()))?,
        };
        let mut maps = dp.maps().context("the object's maps are not this build's layout")?;
        world::configure(&mut maps).context("configuring the data path")?;
        Ok(Build { dp, maps })
    }
}

/// The loaded programs and the world they see; run on a thread inside the `lb` namespace.
pub struct PerPacket {
    harness: ResetHarness,
    /// This build, then the baseline if any.
    builds: Vec<Build>,
    noop: DataPath,
    ingress: u32,
    /// `FLOWS` capacity: at least one round of new flows, so that an emptied table takes a
    /// whole round without evicting.
    flow_entries: u32,
    /// The sockets of the local-flow cases.
    _connections: Connections,
}

impl PerPacket {
    /// `repeat`: repetitions per timed round. `baseline`: another build's object (of the
    /// same map layout) to time beside this one, case by case in the same rounds.
    pub fn load(ingress: u32, repeat: u32, baseline: Option<&Path>) -> Result<PerPacket> {
        let flow_entries = repeat.next_power_of_two().max(FLOW_TABLE_DEFAULT);
        let mut builds = vec![Build::load(None, flow_entries)?];
        if let Some(path) = baseline {
            builds.push(Build::load(Some(path), flow_entries)?);
        }
        let noop = DataPath::load_noop().context("loading the noop baseline")?;
        let client_port = Packet::parse(&hex(anchor::ACK)).key().sport;
        let connections = Connections::open(client_port, &[PORT_TCP_LOCAL, PORT_TCP_MOVED])?;
        Ok(PerPacket {
            harness: ResetHarness::load()?,
            builds,
            noop,
            ingress,
            flow_entries,
            _connections: connections,
        })
    }

    fn fd(&self, target: Target, build: usize) -> Result<ProgramFd> {
        let dp = if target == Target::Noop { &self.noop } else { &self.builds[build].dp };
        Ok(dp.xdp().fd()?.try_clone()?)
    }

    /// Every case: verified once on every build, then `rounds` interleaved rounds of
    /// `repeat` repetitions (noop and cases alternate, so drift hits all alike; with a
    /// baseline, each case runs on both builds back to back, the first of the two
    /// alternating from round to round); the median round of each.
    pub fn run(&mut self, rounds: usize, repeat: u32) -> Result<Vec<CaseResult>> {
        let cases = cases();
        let builds = self.builds.len();
        for b in 0..builds {
            for case in &cases {
                self.verify(case, b).with_context(|| {
                    format!("case {} (build {b}): the path under test is not the one named", case.name)
                })?;
            }
        }
        // times[case][build][round]
        let mut times = vec![vec![Vec::with_capacity(rounds); builds]; cases.len()];
        for round in 0..rounds {
            for (case, t) in cases.iter().zip(&mut times) {
                for k in 0..builds {
                    let b = if round % 2 == 0 { k } else { builds - 1 - k };
                    let ns =
                        self.timed_round(case, b, repeat).with_context(|| format!("case {}", case.name))?;
                    t[b].push(ns);
                }
            }
        }
        // The noop does not depend on the build: every sample of it counts.
        let noop = median(&times[0].concat());
        Ok(cases
            .iter()
            .zip(&times)
            .map(|(c, t)| {
                let ns = median(&t[0]);
                let baseline = t.get(1).map(|base| {
                    let diffs: Vec<f64> = t[0].iter().zip(base).map(|(a, b)| a - b).collect();
                    Baseline {
                        ns_over_noop: median(base) - noop,
                        diff: median(&diffs),
                        diff_min: diffs.iter().copied().fold(f64::INFINITY, f64::min),
                        diff_max: diffs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    }
                });
                CaseResult { name: c.name, ns_per_pkt: ns, ns_over_noop: ns - noop, baseline }
            })
            .collect())
    }

    /// Runs what `case` needs before `repeat` repetitions, and readies the harness for
    /// them (its frame, its target, its run counter).
    fn prime(&mut self, case: &Case, build: usize, repeat: u32) -> Result<()> {
        match &case.prime {
            Prime::None => {}
            Prime::Frames(frames) => {
                for frame in frames {
                    let run = self.builds[build].dp.run(frame, Some(self.ingress))?;
                    ensure!(run.action == Action::Tx, "priming frame: {:?}, expected XDP_TX", run.action);
                }
            }
            Prime::Stamped(frame) => {
                let fd = self.fd(Target::Anycast, build)?;
                self.harness.prepare(frame, case.vary_offset, &fd)?;
                self.harness.reset_runs()?;
                let (action, _, _) = self.harness.run(frame, self.ingress, repeat)?;
                ensure!(action == Action::Tx, "priming frames: {action:?}, expected XDP_TX");
            }
            Prime::Pinned => self.pin_stamped(case, build, repeat)?,
        }
        let fd = self.fd(case.target(), build)?;
        self.harness.prepare(&case.frame, case.vary_offset, &fd)?;
        self.harness.reset_runs()
    }

    /// Pins the flows of the first `repeat` stamps of `case`'s frame (the harness writes
    /// run counter k, little-endian, at the stamp offset) to their buckets' sites.
    fn pin_stamped(&mut self, case: &Case, build: usize, repeat: u32) -> Result<()> {
        let maps = &mut self.builds[build].maps;
        let table = maps.maglev(case.vip)?.context("no Maglev table for the case's VIP")?;
        let mut generations = BTreeMap::new();
        for run in 1..=repeat {
            let frame = packet::set(case.frame.clone(), case.vary_offset as usize, &run.to_le_bytes());
            let key = Packet::parse(&frame).key();
            let site = reference::bucket(&table, &key) & MAGLEV_SITE;
            let generation = match generations.get(&site) {
                Some(&g) => g,
                None => *generations.entry(site).or_insert(maps.site(site)?.generation),
            };
            let value = FlowValue { site: site as u16, state: 0, generation };
            maps.set_flow(&key, &value).context("pinning a flow")?;
        }
        Ok(())
    }

    /// Sets the flow table up as `case` wants it (untimed). Filling runs the case's own
    /// stamped frame, so the table holds flows of the same shape as those the round inserts.
    fn set_table(&mut self, case: &Case, build: usize) -> Result<()> {
        match case.table {
            Table::AsIs => {}
            Table::Empty => {
                self.builds[build].maps.clear_flows().context("emptying FLOWS")?;
            }
            Table::Full => {
                // A capacity's worth of new flows: whatever the table held, it is then full
                // of them. (Not exactly `flow_entries`: the common LRU keeps up to 128 free
                // entries per CPU in per-CPU lists, kernel/bpf/bpf_lru_list.c, and evicts
                // rather than take them from another CPU.)
                self.harness.run(&case.frame, self.ingress, self.flow_entries).context("filling FLOWS")?;
                let count = self.builds[build].maps.flow_count() as u32;
                let nearly = self.flow_entries - self.flow_entries / 16;
                ensure!(count >= nearly, "FLOWS holds {count} flows after filling, expected ≥ {nearly}");
            }
        }
        Ok(())
    }

    fn timed_round(&mut self, case: &Case, build: usize, repeat: u32) -> Result<f64> {
        let repeat = case.repeat_cap.map_or(repeat, |cap| repeat.min(cap));
        // Primed first: filling the table then goes on with the run counter, so that the
        // round's flows are new ones.
        self.prime(case, build, repeat)?;
        self.set_table(case, build)?;
        let before = Totals::read(&self.builds[build].maps)?;
        let unknown =
            |maps: &DataPathMaps| -> Result<u64> { Ok(maps.events()?[Event::FlowUnknown as usize]) };
        let unknown_before = unknown(&self.builds[build].maps)?;
        let (action, _, ns) = self.harness.run(&case.frame, self.ingress, repeat)?;
        let moved = Totals::read(&self.builds[build].maps)?.since(&before);
        let want = case.kind.per_packet(case.vip).times(u64::from(repeat));
        ensure!(
            moved == want,
            "{repeat} repetitions moved the counters by {moved:?}, expected {want:?} (last verdict {action:?})"
        );
        if let Prime::Pinned = case.prime {
            // A missed pin is forwarded by its bucket and counted alike: only this tells.
            let missed = unknown(&self.builds[build].maps)? - unknown_before;
            ensure!(missed == 0, "{missed} of {repeat} repetitions found no pin");
        }
        Ok(ns)
    }

    /// One repetition through the harness, checked packet by packet.
    fn verify(&mut self, case: &Case, build: usize) -> Result<()> {
        self.prime(case, build, 1)?;
        self.set_table(case, build)?;
        let before = Totals::read(&self.builds[build].maps)?;
        let (action, out, _) = self.harness.run(&case.frame, self.ingress, 1)?;
        let moved = Totals::read(&self.builds[build].maps)?.since(&before);
        let want = case.kind.per_packet(case.vip);
        ensure!(moved == want, "counters moved by {moved:?}, expected {want:?}");
        match case.kind {
            Kind::Noop | Kind::NotOurs | Kind::Local | Kind::Malformed => {
                // The frame as stamped (a new client each run), otherwise untouched.
                let mut want = case.frame.clone();
                let at = case.vary_offset as usize;
                if at != 0 && out.len() >= at + 4 {
                    want[at..at + 4].copy_from_slice(&out[at..at + 4]);
                }
                ensure!(
                    action == Action::Pass && out == want,
                    "{action:?} with {} bytes, expected XDP_PASS untouched",
                    out.len()
                );
            }
            Kind::Decap => {
                let want = expect::decapsulated(&Packet::parse(&case.frame));
                ensure!(
                    action == Action::Pass && out == want,
                    "{action:?} with {out:02x?}, expected XDP_PASS of {want:02x?}"
                );
            }
            Kind::Forward => self.verify_forward(case, build, action, &out)?,
        }
        Ok(())
    }

    /// XDP_TX of exactly the frame §7 prescribes, towards the site the VIP's Maglev table
    /// names for this flow (for the new-flow case: the flow the harness stamped).
    fn verify_forward(&self, case: &Case, build: usize, action: Action, out: &[u8]) -> Result<()> {
        let maps = &self.builds[build].maps;
        if action != Action::Tx {
            bail!(
                "{action:?}, expected XDP_TX (is bpf_fib_lookup failing? exceptions: {:?})",
                maps.exceptions()?
            );
        }
        let outer = 20;
        ensure!(
            out.len() == case.frame.len() + outer,
            "output of {} bytes, expected {} (IPIP)",
            out.len(),
            case.frame.len() + outer
        );
        let mut input = case.frame.clone();
        if case.vary_offset != 0 {
            let at = case.vary_offset as usize;
            input[at..at + 4].copy_from_slice(&out[at + outer..at + outer + 4]);
        }
        let p = Packet::parse(&input);
        let table = maps.maglev(case.vip)?.context("no Maglev table for the case's VIP")?;
        let site = reference::bucket(&table, &p.key()) & MAGLEV_SITE;
        let endpoint = world::REMOTE_SITES
            .iter()
            .position(|&s| s == site)
            .map(|i| anchor::SITE_ENDPOINTS[i])
            .with_context(|| format!("the Maglev table names site {site}, not a remote site"))?;
        let tunnel = Tunnel {
            smac: HOST_MAC,
            dmac: NEXT_HOP_MAC,
            src: addr(TUNNEL_V4),
            dst: addr(endpoint),
            gue_port: None,
        };
        let mut want = expect::encapsulated(&p, &tunnel);
        // The stamped input carries a stale inner header checksum, which the data path
        // forwards as it is (it never rewrites the inner packet); the builder behind
        // `Packet` recomputes it, so the inner bytes are the input's.
        want[14 + outer..].copy_from_slice(&input[14..]);
        ensure!(out == want, "encapsulated frame differs:\n got  {out:02x?}\n want {want:02x?}");
        Ok(())
    }
}

impl PerPacket {
    /// A cross-check of the harness, on the two frames that no program changes (so that
    /// `repeat > 1` needs no reset): the noop program, and anycast on the `vip_local_pass`
    /// frame, each timed on its own (median of `rounds`). Returns (noop ns, local pass ns
    /// over that noop).
    pub fn without_harness(&self, rounds: usize, repeat: u32) -> Result<(f64, f64)> {
        let time = |dp: &DataPath, frame: &[u8]| -> Result<f64> {
            let ctx = xdp_md(frame.len(), self.ingress);
            let mut times = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let r = dp.xdp().test_run(TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: Some(&ctx),
                    repeat,
                    ..TestRunOptions::new()
                })?;
                ensure!(r.return_value == 2, "verdict {}, expected XDP_PASS", r.return_value);
                times.push(r.duration.as_nanos() as f64);
            }
            Ok(median(&times))
        };
        let noop = time(&self.noop, &hex(anchor::NON_VIP))?;
        let local = time(&self.builds[0].dp, &hex(anchor::UDP))?;
        Ok((noop, local - noop))
    }
}
