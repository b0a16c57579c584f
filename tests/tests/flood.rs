//! Floods against a site under live TCP while its weights change (issue 13; docs/datapath.md
//! §6), with real packets through the real daemons, on the two sites of
//! `anycast_tests::sustained`:
//!
//! ```text
//! client c0 10.1.0.2 ⇄ a0 10.1.0.1 [A, VIP on lo] a1 10.2.0.1 ⇄ b0 10.2.0.2 [B, VIP on lo]
//! ```
//!
//! `flood_of_syns_acks_and_handshakes_under_weight_changes_moves_no_connection`: 8 long-lived
//! TCP transfers served at A and 8 forwarded to B; A's flow table holds 4096 entries and its
//! pin guard lets [`PIN_RATE`] promotions per second per CPU through (burst [`PIN_BURST`]).
//! From the client's veth, as raw frames on one packet socket at the highest rate the
//! machine reaches (reported), each kind for [`FLOOD_MAX`] or [`PACKETS`] packets, at least
//! [`PACKETS_MIN`]: spoofed SYNs, then random ACKs, then two-packet flows (a SYN, then the
//! ACK of the same 5-tuple), every flow a new one, each kind from its own part of
//! [`SPOOFED`] — a prefix that A and B route into a blackhole, so that their kernels'
//! answers (SYN-ACKs, RSTs) go nowhere and no real connection shares a 4-tuple with the
//! flood. Meanwhile A's config alternates B's weight between
//! [`WEIGHTS`] every 500 ms, each reload through the admin API applied, and every table
//! A steered by is read back. Then:
//!
//! - 0 connections reset, every byte counted by the service, each connection served by the
//!   site A's table named when it started; B's 8 still pinned to B, A's 8 never pinned.
//! - The flood counted: per kind, the events it must cause (`embryo_written` for each SYN
//!   whose bucket is remote, `flow_unknown` for each random ACK whose bucket is remote, a
//!   promotion or a `pin_limited` for each handshake forwarded) within the bounds A's tables
//!   give for its frames, less the frames that never reached A's program. The flood goes
//!   out in chunks of [`CHUNK`] frames, each timed, and every reload is timed too: a chunk
//!   may have met any table A steered by from when it was sent to [`LAG`] after, so a frame
//!   remote in every one of those tables is certain, one remote in some is possible.
//! - The flow table: after the SYNs and after the ACKs it holds B's 8 connections and
//!   nothing else; after the handshakes none of the SYN-only flows or random ACKs either,
//!   and at most as many handshakes as the pin guard let through.

use std::{
    collections::BTreeMap,
    hash::{BuildHasher, RandomState},
    net::Ipv4Addr,
    ops::Range,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anycast_common::{Event, FlowKey};
use anycast_tests::{
    admin::AdminApi,
    checksum,
    packet::{self, ACK, SYN},
    pinned::Pinned,
    reference,
    sustained::{self, Flows, SITES, Steering, TCP_PORT, Table, VIP, under_traffic},
    topology::ForwardChain,
};
use anycast_user::api::client::Method;
use testkit::{
    daemon::Daemon,
    frames::{Flooded, PacketSocket},
    metrics::metric,
    require::{Need, require},
    serial, wait,
};

const CAPACITY: u32 = 4096;
const TCP_PER_SITE: usize = 8;
/// Promotions per second per CPU, and the burst: the flood's handshakes outrun it.
const PIN_RATE: u32 = 2000;
const PIN_BURST: u32 = 1000;
/// Packets of each kind at most (a handshake is two), and the longest one kind's flood may
/// run: long enough for several weight changes at the rates a small machine reaches.
const PACKETS: usize = 1 << 20;
const FLOOD_MAX: Duration = Duration::from_millis(2500);
/// The fewest packets of each kind that make a flood here: several times the table.
const PACKETS_MIN: usize = 50_000;
/// Frames per timed chunk of a flood (a few milliseconds of it).
const CHUNK: usize = 4096;
/// The longest a frame may wait between its chunk's send and A's program (frames queued on
/// the veth): a chunk may have met a table applied this long after it was sent.
const LAG: Duration = Duration::from_millis(100);
/// The longest A's counters may take to settle after a flood (frames queued on the veth).
const QUIET_MAX: Duration = Duration::from_secs(5);
/// B's weight at A, alternating (A's is its capacity, 100), and how often it changes.
const WEIGHTS: [u32; 2] = [300, 33];
const WEIGHT_PERIOD: Duration = Duration::from_millis(500);
/// The transfers run this long before the flood and after it.
const SETTLE: Duration = Duration::from_secs(2);
/// The flood's sources: 10.99.0.0/16, blackholed at A and B. Each kind takes a /18 of it
/// (third octet from [`Kind::base`]).
const SPOOFED: &str = "10.99.0.0/16";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Syn,
    Ack,
    Handshake,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Syn, Kind::Ack, Kind::Handshake];

    fn name(self) -> &'static str {
        match self {
            Kind::Syn => "spoofed SYNs",
            Kind::Ack => "random ACKs",
            Kind::Handshake => "two-packet flows",
        }
    }

    /// The third octet where this kind's /18 of [`SPOOFED`] starts.
    fn base(self) -> u8 {
        match self {
            Kind::Syn => 0,
            Kind::Ack => 64,
            Kind::Handshake => 128,
        }
    }

    /// The kind whose part of [`SPOOFED`] holds `key`'s source, if any.
    fn of(key: &FlowKey) -> Option<Kind> {
        (key.src[..2] == [10, 99]).then(|| Kind::ALL[usize::from(key.src[2] / 64)])
    }

    /// The TCP flags of its packets, in order.
    fn packets(self) -> &'static [u8] {
        match self {
            Kind::Syn => &[SYN],
            Kind::Ack => &[ACK],
            Kind::Handshake => &[SYN, ACK],
        }
    }
}

/// Bytes of a flood frame: Ethernet, IPv4 without options, TCP without options or payload;
/// where its IPv4 and TCP headers start.
const FRAME: usize = 54;
const IP: usize = 14;
const TCP: usize = IP + 20;

/// A frame of the flood from `src`:`sport` to VIP:[`TCP_PORT`], built whole.
fn frame(src: Ipv4Addr, sport: u16, flags: u8, macs: ([u8; 6], [u8; 6])) -> [u8; FRAME] {
    let p = packet::tcp(&src.to_string(), &VIP.to_string(), sport, TCP_PORT, flags).payload_len(0);
    p.macs(macs.0, macs.1).frame().try_into().expect("a frame of 54 bytes")
}

/// `template` (a [`frame`]) from `src`:`sport` instead: its addresses and checksums patched
/// (building a million frames whole would take longer than the test).
fn patched(template: &[u8; FRAME], src: Ipv4Addr, sport: u16) -> [u8; FRAME] {
    let mut f = *template;
    let (old_src, new_src) = (&template[IP + 12..IP + 16], src.octets());
    let (old_port, new_port) = (&template[TCP..TCP + 2], sport.to_be_bytes());
    let sum = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    let ip = checksum::update(sum(IP + 10), old_src, &new_src);
    let tcp = checksum::update(checksum::update(sum(TCP + 16), old_src, &new_src), old_port, &new_port);
    f[IP + 10..IP + 12].copy_from_slice(&ip.to_be_bytes());
    f[IP + 12..IP + 16].copy_from_slice(&new_src);
    f[TCP..TCP + 2].copy_from_slice(&new_port);
    f[TCP + 16..TCP + 18].copy_from_slice(&tcp.to_be_bytes());
    f
}

/// One kind's flood: its flows and their frames, in the order sent.
struct Flood {
    kind: Kind,
    keys: Vec<FlowKey>,
    frames: Vec<[u8; FRAME]>,
}

impl Flood {
    /// [`PACKETS`] packets of distinct flows of `kind` to VIP:[`TCP_PORT`], from addresses of
    /// the kind's /18 and ports that look random: flow i is (i × an odd constant + `seed`)
    /// mod 2^30, a permutation (14 bits of address, 16 of port), so no two are the same.
    fn new(kind: Kind, seed: u32, macs: ([u8; 6], [u8; 6])) -> Flood {
        let template_src = Ipv4Addr::new(10, 99, kind.base(), 0);
        let templates: Vec<[u8; FRAME]> =
            kind.packets().iter().map(|&f| frame(template_src, 1, f, macs)).collect();
        let flows = PACKETS / templates.len();
        let (mut keys, mut frames) = (Vec::with_capacity(flows), Vec::with_capacity(PACKETS));
        for i in 0u32.. {
            if keys.len() == flows {
                break;
            }
            let j = i.wrapping_mul(0x9e37_79b1).wrapping_add(seed) & ((1 << 30) - 1);
            let (host, sport) = ((j >> 16) as u16, j as u16);
            if sport == 0 {
                continue;
            }
            let src = Ipv4Addr::new(10, 99, kind.base() + (host >> 8) as u8, host as u8);
            for (t, &flags) in templates.iter().zip(kind.packets()) {
                let f = patched(t, src, sport);
                if keys.len() < 4 {
                    assert_eq!(
                        f,
                        frame(src, sport, flags, macs),
                        "a patched frame differs from one built whole"
                    );
                }
                frames.push(f);
            }
            keys.push(packet::flow_key(src.into(), VIP.into(), sport, TCP_PORT, libc::IPPROTO_TCP as u8));
        }
        Flood { kind, keys, frames }
    }

    /// (certain, possible): of the flows whose first frame went out in one of `chunks`,
    /// those whose bucket names B in every table `steered` may have applied to that chunk,
    /// and in at least one (a flow is only certain if all its frames went out).
    fn remote(&self, chunks: &[Chunk], steered: &Steered) -> (u64, u64) {
        let per_flow = self.kind.packets().len();
        let whole = chunks.last().map_or(0, |c| c.frames.end) / per_flow;
        let (mut certain, mut possible) = (0, 0);
        for chunk in chunks {
            let tables = steered.during(chunk.sent, chunk.done + LAG);
            let flows = chunk.frames.start.div_ceil(per_flow)..chunk.frames.end.div_ceil(per_flow);
            for i in flows {
                let hash = reference::flow_hash(&self.keys[i], &reference::KEY);
                let remote = tables.iter().filter(|t| t.site_of_hash(hash) == Some(1)).count();
                if i < whole && remote == tables.len() {
                    certain += 1;
                }
                if remote > 0 {
                    possible += 1;
                }
            }
        }
        (certain, possible)
    }
}

/// Frames `frames` of a flood, handed to the kernel from `sent` to `done`.
struct Chunk {
    frames: Range<usize>,
    sent: Instant,
    done: Instant,
}

/// Every table of the TCP VIP A steered by, and when each reload applied one.
struct Steered {
    /// Distinct tables, the first one A started with.
    tables: Vec<Table>,
    /// Per reload: its request sent, its table read back, the index of that table.
    reloads: Vec<(Instant, Instant, usize)>,
}

impl Steered {
    fn new(first: Table) -> Steered {
        let now = Instant::now();
        Steered { tables: vec![first], reloads: vec![(now, now, 0)] }
    }

    fn record(&mut self, requested: Instant, table: Table) {
        let index = self.tables.iter().position(|t| *t == table).unwrap_or_else(|| {
            self.tables.push(table);
            self.tables.len() - 1
        });
        self.reloads.push((requested, Instant::now(), index));
    }

    /// The tables A may have steered by at some time in `from..to`: each one whose reload was
    /// requested before `to`, unless the next one was surely applied before `from`.
    fn during(&self, from: Instant, to: Instant) -> Vec<&Table> {
        let mut tables: Vec<&Table> = Vec::new();
        for (k, &(requested, _, index)) in self.reloads.iter().enumerate() {
            let replaced = self.reloads.get(k + 1).is_some_and(|&(_, read, _)| read < from);
            let table = &self.tables[index];
            if requested < to && !replaced && !tables.contains(&table) {
                tables.push(table);
            }
        }
        tables
    }
}

/// A's data-path events and exceptions (by `reason/action`), and the packets of the TCP VIP.
#[derive(Clone, Debug, Default)]
struct Counters {
    events: BTreeMap<&'static str, u64>,
    exceptions: BTreeMap<String, u64>,
    vip_packets: u64,
}

impl Counters {
    fn read(a: &Daemon) -> Counters {
        let text = a.get("/metrics").expect("A's /metrics");
        let events = Event::ALL
            .iter()
            .map(|e| {
                let series = format!("anycast_datapath_events_total{{event=\"{}\"}}", e.name());
                (e.name(), metric(&text, &series).unwrap_or(0))
            })
            .collect();
        let exceptions = text
            .lines()
            .filter_map(|l| l.strip_prefix("anycast_exceptions_total{"))
            .filter_map(|l| {
                let (labels, value) = l.split_once("} ")?;
                let label =
                    |name: &str| labels.split(',').find_map(|kv| kv.strip_prefix(&format!("{name}=\"")));
                let name = format!(
                    "{}/{}",
                    label("reason")?.trim_end_matches('"'),
                    label("action")?.trim_end_matches('"')
                );
                Some((name, value.trim().parse().ok()?))
            })
            .collect();
        let vip_packets =
            metric(&text, r#"anycast_vip_packets_total{vip="tcp"}"#).expect("the TCP VIP's packets");
        Counters { events, exceptions, vip_packets }
    }

    /// What moved since `before`, non-zero only.
    fn since(&self, before: &Counters) -> Counters {
        let moved = |now: u64, then: Option<&u64>| now - then.copied().unwrap_or(0);
        Counters {
            events: self
                .events
                .iter()
                .map(|(&k, &v)| (k, moved(v, before.events.get(k))))
                .filter(|(_, v)| *v > 0)
                .collect(),
            exceptions: self
                .exceptions
                .iter()
                .map(|(k, &v)| (k.clone(), moved(v, before.exceptions.get(k))))
                .filter(|(_, v)| *v > 0)
                .collect(),
            vip_packets: self.vip_packets - before.vip_packets,
        }
    }

    fn event(&self, e: Event) -> u64 {
        self.events.get(e.name()).copied().unwrap_or(0)
    }
}

/// What one kind's flood did.
struct Phase {
    kind: Kind,
    flooded: Flooded,
    chunks: Vec<Chunk>,
    /// Counters moved from just before the flood to when they were quiet after it.
    moved: Counters,
    /// The whole phase, for the pin guard's bound.
    elapsed: Duration,
    /// A's flow table right after it: entries by the kind whose source they have (`None`:
    /// not the flood's).
    flows: BTreeMap<Option<&'static str>, usize>,
}

/// A's flow table: its entries by the flood kind whose source they have (`None`: not the
/// flood's).
fn flow_table_by_kind(a: &Daemon) -> BTreeMap<Option<&'static str>, usize> {
    let flows = a.maps().expect("A's pinned maps").flows().expect("A's FLOWS");
    let mut by_kind = BTreeMap::new();
    for (key, _) in flows {
        *by_kind.entry(Kind::of(&key).map(Kind::name)).or_insert(0) += 1;
    }
    by_kind
}

/// Alternates B's weight at A every [`WEIGHT_PERIOD`] until `stop`, each time rewriting A's
/// config and reloading it through the admin API, and records in `steered` each table A
/// steers by then; returns the number of reloads.
fn change_weights(a: &Daemon, stop: &AtomicBool, steered: &Mutex<Steered>) -> usize {
    let deadline = Instant::now() + (FLOOD_MAX + QUIET_MAX) * Kind::ALL.len() as u32;
    let mut reloads = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        thread::sleep(WEIGHT_PERIOD);
        let weight = WEIGHTS[reloads % 2];
        let config = sustained::config_a().replacen(
            "encap = \"ip\"\ncapacity = 100\n",
            &format!("encap = \"ip\"\ncapacity = 100\nweight = {weight}\n"),
            1,
        );
        // Before the file changes, in case anything reads it before the request.
        let requested = Instant::now();
        a.write_config(&config).expect("A's config");
        let (status, body) = a.admin(Method::POST, "/reload", None).expect("POST /reload");
        let reply: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert!(
            status == 200 && reply["tables"].as_u64() > Some(0),
            "reload {reloads} (B's weight {weight}): {status} {body}"
        );
        reloads += 1;
        let table = Table::read(a, Steering::Current, "tcp");
        steered.lock().unwrap().record(requested, table);
    }
    reloads
}

/// `frames` out of `socket` in timed chunks of [`CHUNK`], for at most [`FLOOD_MAX`].
fn flood_in_chunks(socket: &PacketSocket, frames: &[[u8; FRAME]]) -> (Flooded, Vec<Chunk>) {
    let start = Instant::now();
    let (mut chunks, mut busy) = (Vec::new(), 0);
    let mut next = 0;
    while next < frames.len() && start.elapsed() < FLOOD_MAX {
        let sent = Instant::now();
        let part = &frames[next..frames.len().min(next + CHUNK)];
        let f = socket.flood(part, FLOOD_MAX.saturating_sub(start.elapsed())).expect("the flood");
        chunks.push(Chunk { frames: next..next + f.sent, sent, done: Instant::now() });
        (next, busy) = (next + f.sent, busy + f.busy);
    }
    (Flooded { sent: next, elapsed: start.elapsed(), busy }, chunks)
}

/// Sends each kind's flood in turn, reading A's counters and flow table around each.
fn flood_all(a: &Daemon, socket: &PacketSocket, floods: &[Flood]) -> Vec<Phase> {
    floods
        .iter()
        .map(|flood| {
            let start = Instant::now();
            let before = Counters::read(a);
            let (flooded, chunks) = flood_in_chunks(socket, &flood.frames);
            // Until A's program has seen the last of it (frames still queued on the veth):
            // the events that only the flood causes stop moving.
            let flood_events = [Event::EmbryoWritten, Event::FlowUnknown, Event::Promoted, Event::PinLimited];
            wait::quiet(Duration::from_millis(300), QUIET_MAX, || {
                let c = Counters::read(a);
                flood_events.map(|e| c.event(e))
            });
            let moved = Counters::read(a).since(&before);
            let flows = flow_table_by_kind(a);
            Phase { kind: flood.kind, flooded, chunks, moved, elapsed: start.elapsed(), flows }
        })
        .collect()
}

#[test]
fn flood_of_syns_acks_and_handshakes_under_weight_changes_moves_no_connection() {
    if !require("flood_of_syns_acks_and_handshakes_under_weight_changes_moves_no_connection", &[Need::Kernel])
    {
        return;
    }
    let _turn = serial::heavy();
    let chain: ForwardChain = sustained::topology("fld").unwrap();
    for ns in [&chain.a, &chain.b] {
        ns.add_route(&["blackhole", SPOOFED]).unwrap();
    }
    let (a, _b) = sustained::start_configured(&chain, |a| {
        a.set_flow_table_size(CAPACITY);
        a.add_datapath_option(&format!("pin_rate = {PIN_RATE}\npin_burst = {PIN_BURST}"));
    });

    // The floods, built before the traffic starts. A seed the OS picks, printed to replay.
    let seed = RandomState::new().hash_one("flood") as u32;
    let macs = (chain.a.mac("a0").unwrap(), chain.client.mac("c0").unwrap());
    let built = Instant::now();
    let floods: Vec<Flood> = Kind::ALL.iter().map(|&k| Flood::new(k, seed, macs)).collect();
    println!("{} flood frames built in {:.1} s (seed {seed:#x})", PACKETS * 3, built.elapsed().as_secs_f64());
    let socket = PacketSocket::open(&chain.client, "c0").expect("a packet socket on c0");

    let flows = Flows::pick(&a, TCP_PER_SITE).without_udp();
    let steered = Mutex::new(Steered::new(Table::read(&a, Steering::Current, "tcp")));
    let start = Counters::read(&a);
    let mut phases = Vec::new();
    let mut reloads = 0;
    let measured = under_traffic(&chain, flows, SETTLE, || {
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            let changer = s.spawn(|| change_weights(&a, &stop, &steered));
            phases = flood_all(&a, &socket, &floods);
            stop.store(true, Ordering::Relaxed);
            reloads = changer.join().expect("the weight changer");
        });
    });
    let total = Counters::read(&a).since(&start);
    let steered = steered.into_inner().unwrap();
    let tables = &steered.tables;

    // Figures.
    println!("{}", measured.summary());
    println!(
        "{reloads} reloads (B's weight {WEIGHTS:?} in turn), {} distinct tables of the TCP VIP",
        tables.len()
    );
    let sent: usize = phases.iter().map(|p| p.flooded.sent).sum();
    let segments: u64 = measured.tcp.iter().map(|r| r.segments).sum();
    // The data path counted every packet to the VIP: the connections' (all their segments,
    // by the client's own count) and what of the flood reached it.
    let delivered = total.vip_packets.saturating_sub(segments);
    let lost = (sent as u64).saturating_sub(delivered);
    for p in &phases {
        let f = &p.flooded;
        println!(
            "{}: {} packets in {:.2} s, {:.0} pps ({} calls retried); moved {:?}, exceptions {:?}; \
             flow table after: {:?}",
            p.kind.name(),
            f.sent,
            f.elapsed.as_secs_f64(),
            f.pps(),
            f.busy,
            p.moved.events,
            p.moved.exceptions,
            p.flows
        );
    }
    println!(
        "flood: {sent} packets sent, {delivered} reached A's program ({lost} lost on the way); \
         connections: {segments} segments"
    );
    let text = a.get("/metrics").unwrap();
    println!("anycast_flow_table_entries {:?}", metric(&text, "anycast_flow_table_entries"));

    // The connections: nothing lost or reset, each at its site; B's pinned there, A's not.
    measured.assert_clean("under the floods and weight changes");
    let maps = a.maps().expect("A's pinned maps");
    let b_index = a.status().expect("A's status").sites.iter().find(|s| s.name == SITES[1]).expect("b").index;
    for (site, ports) in measured.tcp_ports.iter().enumerate() {
        for &p in ports {
            let key = sustained::flow_key(p, TCP_PORT, libc::IPPROTO_TCP as u8);
            let pin = maps.flow(&key).expect("A's FLOWS").map(|v| u32::from(v.site));
            let want = [None, Some(b_index)][site];
            assert_eq!(pin, want, "the pin of the connection from port {p} (site {})", SITES[site]);
        }
    }
    assert!(
        reloads >= 6 && tables.len() >= 3,
        "{reloads} reloads, {} tables: the weights hardly changed",
        tables.len()
    );

    // Each kind was a flood, and reached A's program.
    for p in &phases {
        assert!(p.flooded.sent >= PACKETS_MIN, "{}: {} packets sent", p.kind.name(), p.flooded.sent);
    }
    assert!(delivered <= sent as u64, "more packets at the VIP ({delivered}) than sent ({sent})");

    // The flood counted, kind by kind.
    let bounds = Instant::now();
    let remote: Vec<(u64, u64)> =
        phases.iter().zip(&floods).map(|(p, f)| f.remote(&p.chunks, &steered)).collect();
    println!("bounds from {} tables in {:.1} s", tables.len(), bounds.elapsed().as_secs_f64());
    for (p, &(certain, possible)) in phases.iter().zip(&remote) {
        let m = &p.moved;
        let pinning = [Event::Promoted, Event::PinLimited, Event::PromoteExists, Event::FlowInsertFailed]
            .map(|e| m.event(e))
            .iter()
            .sum::<u64>();
        let (counted, what) = match p.kind {
            Kind::Syn | Kind::Handshake => (m.event(Event::EmbryoWritten), "embryo_written"),
            Kind::Ack => (m.event(Event::FlowUnknown), "flow_unknown"),
        };
        println!(
            "{}: {what} {counted}, for {certain} certain and {possible} possible remote flows",
            p.kind.name()
        );
        assert!(
            counted + lost >= certain && counted <= possible,
            "{}: {what} {counted}, for {certain}..{possible} remote flows ({lost} packets lost): {m:?}",
            p.kind.name()
        );
        match p.kind {
            Kind::Syn | Kind::Ack => {
                assert_eq!(pinning, 0, "{}: pinned something: {m:?}", p.kind.name());
                let want = BTreeMap::from([(None, TCP_PER_SITE)]);
                assert_eq!(p.flows, want, "{}: the flow table holds B's connections alone", p.kind.name());
            }
            Kind::Handshake => {
                // Each handshake whose SYN was forwarded finds its embryo with its ACK (the
                // last one may have gone out without its ACK).
                let unfinished = (p.flooded.sent % 2) as u64;
                assert!(
                    pinning <= counted && pinning + lost + unfinished >= counted,
                    "handshakes: {pinning} promotions or skips for {counted} forwarded SYNs: {m:?}"
                );
                // SAFETY: sysconf(3) has no preconditions.
                let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as u64;
                let refill = (f64::from(PIN_RATE) * p.elapsed.as_secs_f64()).ceil() as u64;
                let guard = cpus * (u64::from(PIN_BURST) + refill);
                let promoted = m.event(Event::Promoted);
                println!(
                    "handshakes: {promoted} promoted, {} pin_limited; the guard allows {guard} on {cpus} CPUs",
                    m.event(Event::PinLimited)
                );
                assert!(promoted <= guard, "{promoted} promotions, the guard allows {guard}: {m:?}");
                if counted > guard {
                    assert!(m.event(Event::PinLimited) > 0, "the guard skipped nothing: {m:?}");
                }
                let in_table = p.flows.get(&Some(Kind::Handshake.name())).copied().unwrap_or(0);
                assert!(
                    in_table as u64 <= promoted,
                    "{in_table} handshakes in the table, {promoted} promoted"
                );
                for kind in [Kind::Syn, Kind::Ack] {
                    let found = p.flows.get(&Some(kind.name()));
                    assert_eq!(found, None, "{} in the flow table: {:?}", kind.name(), p.flows);
                }
                assert_eq!(
                    p.flows.get(&None),
                    Some(&TCP_PER_SITE),
                    "B's connections in the table: {:?}",
                    p.flows
                );
            }
        }
    }
}
