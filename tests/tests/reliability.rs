//! Reliability under sustained traffic (issue 6), through the two sites of
//! `anycast_tests::sustained` (client → A, which serves the VIPs itself and forwards part
//! of the flows to B over IPIP). In each scenario a sequenced UDP stream and long-lived TCP
//! transfers run to each site while A's controller is disturbed; every datagram must
//! arrive, no TCP connection may be reset and every byte sent must be counted by the
//! service that got the connection (the one A's Maglev table named):
//!
//! 1. `reliability_restart_…`: A's controller SIGKILLed and started again; it adopts the
//!    pinned program (same kernel program id on both interfaces).
//! 2. `reliability_upgrade_…`: A's controller stopped and started with a second build of
//!    the XDP object (another kernel tag), then with the embedded one again: each time the
//!    loader swaps the program of the pinned links with BPF_LINK_UPDATE (new program id),
//!    writes nothing to the maps (they are kept: counters go on, no TCP flow misses the
//!    flow table), and no packet is lost.
//! 3. `reliability_reload_…`: a broken config on SIGHUP is refused with its line and
//!    reason; the weights, the program and the traffic are untouched.
//! 4. `reliability_flow_table_…`: a 1024-entry flow table, 1536 open TCP connections (half
//!    forwarded to B, pinned when their handshakes complete; half local, which need no
//!    entry: the host's sockets know them) and 2048 new UDP flows (pinned on their first
//!    packet): the LRU evicts, every new flow is served, the table stays at capacity and
//!    never holds a local connection, each forwarded connection that lost its entry is
//!    re-pinned from its embryo or forwarded by its unchanged bucket, and no connection is
//!    reset.
//! 5. `reliability_lab_…`: `cargo xtask run --for 20` exits 0 and leaves no namespace,
//!    host link, pin, file or process behind.
//!
//! The second build for the upgrade is the embedded object with one instruction re-encoded:
//! its first `rX = imm` (64-bit move of a non-negative immediate) becomes `wX = imm` (32-bit
//! move). A 32-bit ALU operation zero-extends into the whole register, so both leave the
//! same value and the program behaves the same; but the kernel's program tag (a SHA-1 of the
//! instructions) differs, which is what makes the loader upgrade instead of adopting —
//! exactly as a rebuilt release would, at no build cost.

use std::{
    collections::HashSet,
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::AtomicBool,
    thread,
    time::{Duration, Instant},
};

use anycast_tests::{
    admin::AdminApi,
    pinned::Pinned,
    sustained::{self, Flows, under_traffic},
};
use anycast_user::{datapath::object::ANYCAST, model::status::Status};
use aya::programs::loaded_programs;
use object::{Object as _, ObjectSection as _};
use testkit::{
    daemon::Daemon,
    metrics::metric,
    require::{Need, require},
    serial,
    sites::{FlowClient, UdpService},
    tcp::{CHUNK, Connection, Sink},
    wait,
};

/// Traffic before and after the disturbance.
const SETTLE: Duration = Duration::from_secs(1);
const TCP_PER_SITE: usize = 4;
const LOG_TIMEOUT: Duration = Duration::from_secs(15);
/// Mid-flow TCP packets that found no pin, no local socket and no embryo (docs/datapath.md §6).
const FLOW_UNKNOWN: &str = r#"anycast_datapath_events_total{event="flow_unknown"}"#;
const PROMOTED: &str = r#"anycast_datapath_events_total{event="promoted"}"#;

/// Kernel program ids of the links on A's two interfaces.
fn programs(a: &Daemon) -> [u32; 2] {
    ["a0", "a1"].map(|iface| a.link_program_id(iface).unwrap_or_else(|e| panic!("{iface}: {e}")))
}

/// The kernel's tag of a loaded program.
fn tag(id: u32) -> u64 {
    loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| p.tag())
        .unwrap_or_else(|| panic!("no loaded program {id}"))
}

fn metrics(daemon: &Daemon) -> String {
    daemon.get("/metrics").expect("GET /metrics")
}

#[test]
fn reliability_restart_under_traffic_loses_nothing() {
    if !require("reliability_restart_under_traffic_loses_nothing", &[Need::Kernel]) {
        return;
    }
    let chain = sustained::topology("rrs").unwrap();
    let (mut a, _b) = sustained::start(&chain, None);
    let before = programs(&a);
    let flows = Flows::pick(&a, TCP_PER_SITE);
    let mut log = String::new();
    let measured = under_traffic(&chain, flows, SETTLE, || {
        a.kill().expect("SIGKILL A's controller");
        // A moment with no controller at all: the pinned data path alone steers.
        thread::sleep(Duration::from_millis(200));
        log = a.start().expect("restart A's controller");
    });
    eprintln!("restart (SIGKILL): {}", measured.summary());
    measured.assert_clean("across A's SIGKILL and restart");
    for iface in ["a0", "a1"] {
        assert!(log.contains(&format!("{iface}: adopted the running instance")), "restart log:\n{log}");
    }
    assert_eq!(programs(&a), before, "the restart replaced the program");
    let text = metrics(&a);
    assert_eq!(sustained::udp_vip_packets(&a), Some(u64::from(measured.datagrams_sent())), "{text}");
    assert_eq!(metric(&text, FLOW_UNKNOWN), Some(0), "a TCP packet found no pin, socket or embryo\n{text}");
}

/// The embedded object with its first 64-bit `mov rX, imm` (imm ≥ 0) re-encoded as the
/// 32-bit `mov wX, imm` (see the module docs). Instructions that the ELF relocates, and the
/// second half of a 16-byte `lddw`, are left alone.
fn second_build(object: &[u8]) -> Vec<u8> {
    const LDDW: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW
    const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const MOV32_IMM: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
    let file = object::File::parse(object).expect("the embedded object is ELF");
    let section = file.section_by_name("xdp").expect("an xdp section");
    let (offset, size) = section.file_range().expect("xdp has file contents");
    let relocated: HashSet<u64> = section.relocations().map(|(at, _)| at).collect();
    let mut out = object.to_vec();
    let code = &mut out[offset as usize..(offset + size) as usize];
    let mut at = 0;
    while at + 8 <= code.len() {
        let imm = i32::from_le_bytes(code[at + 4..at + 8].try_into().expect("4 bytes"));
        match code[at] {
            LDDW => at += 16,
            MOV64_IMM if imm >= 0 && !relocated.contains(&(at as u64)) => {
                code[at] = MOV32_IMM;
                return out;
            }
            _ => at += 8,
        }
    }
    panic!("no 64-bit move of an immediate to re-encode in the xdp section");
}

/// Stops A's controller as a service manager would (SIGTERM: the data path stays), then
/// starts it with `extra` arguments. Returns the new controller's start log.
fn replace_controller(a: &mut Daemon, extra: &[&OsStr]) -> String {
    let mark = a.log_mark();
    a.signal(libc::SIGTERM).expect("SIGTERM A's controller");
    a.wait_for_log(mark, "controller stopped", LOG_TIMEOUT).expect("A's controller stops");
    // Reaps it (it has exited: nothing is left to kill).
    let _ = a.kill();
    a.start_with(extra).expect("start A's new controller")
}

#[test]
fn reliability_upgrade_under_traffic_swaps_program_keeps_maps() {
    if !require("reliability_upgrade_under_traffic_swaps_program_keeps_maps", &[Need::Kernel]) {
        return;
    }
    let chain = sustained::topology("rup").unwrap();
    let (mut a, _b) = sustained::start(&chain, None);
    let object: PathBuf = a.config_path().with_file_name("anycast-next.bpf.o");
    fs::write(&object, second_build(ANYCAST)).expect("write the second build");
    let first = programs(&a).map(|id| (id, tag(id)));
    let flows = Flows::pick(&a, TCP_PER_SITE);
    // Program ids and tags after each swap (a swapped-out program is unloaded).
    let (mut logs, mut ids) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let measured = under_traffic(&chain, flows, SETTLE, || {
        logs.push(replace_controller(&mut a, &[OsStr::new("--object"), object.as_os_str()]));
        ids.push(programs(&a).map(|id| (id, tag(id))));
        thread::sleep(SETTLE);
        // And back: the embedded build again (a rollback is an upgrade too).
        logs.push(replace_controller(&mut a, &[]));
        ids.push(programs(&a).map(|id| (id, tag(id))));
    });
    eprintln!(
        "upgrade (and back) in {:.1} s: {}; a0's program (id, tag): {} → {} → {}",
        started.elapsed().as_secs_f64(),
        measured.summary(),
        shown(first[0]),
        shown(ids[0][0]),
        shown(ids[1][0])
    );
    measured.assert_clean("across two program upgrades");
    for log in &logs {
        for iface in ["a0", "a1"] {
            assert!(log.contains(&format!("{iface}: program upgraded in place (link update)")), "{log}");
        }
        // The new program found the pinned maps and the config's state in them.
        assert!(log.contains("maps reconciled: 0 writes, 0 Maglev tables"), "{log}");
    }
    let [second, third] = [ids[0], ids[1]];
    for i in 0..2 {
        let ((id1, tag1), (id2, tag2), (id3, tag3)) = (first[i], second[i], third[i]);
        assert!(id1 != id2 && id2 != id3, "program ids {id1} → {id2} → {id3}");
        assert_ne!(tag2, tag1, "the second build has the same tag");
        assert_eq!(tag3, tag1, "the embedded build again");
    }
    // Counters kept across both swaps; no TCP packet missed the (kept) flow table.
    let text = metrics(&a);
    assert_eq!(sustained::udp_vip_packets(&a), Some(u64::from(measured.datagrams_sent())), "{text}");
    assert_eq!(metric(&text, FLOW_UNKNOWN), Some(0), "a TCP packet found no pin, socket or embryo\n{text}");
}

fn shown((id, tag): (u32, u64)) -> String {
    format!("({id}, {tag:016x})")
}

fn weights(a: &Daemon) -> Vec<(String, u32)> {
    let status: Status = a.status().expect("/status");
    status.sites.into_iter().map(|s| (s.name, s.weight)).collect()
}

#[test]
fn reliability_reload_broken_config_under_traffic() {
    if !require("reliability_reload_broken_config_under_traffic", &[Need::Kernel]) {
        return;
    }
    let chain = sustained::topology("rrl").unwrap();
    let (mut a, _b) = sustained::start(&chain, None);
    let (program, before) = (programs(&a), weights(&a));
    // A change that would move flows (B's weight, 1:1 to 1:3) and an endpoint that is no
    // address, in one file: all of it is refused.
    let broken = sustained::config_a()
        .replace("encap = \"ip\"\ncapacity = 100\n", "encap = \"ip\"\ncapacity = 100\nweight = 300\n")
        .replace("endpoint = \"10.2.0.2\"", "endpoint = \"10.2.0.300\"");
    assert_eq!(broken.matches("weight = 300").count(), 1, "only B's weight changes:\n{broken}");
    let line = broken.lines().position(|l| l.contains("10.2.0.300")).expect("the broken line") + 1;
    let flows = Flows::pick(&a, TCP_PER_SITE);
    let mut log = String::new();
    let measured = under_traffic(&chain, flows, SETTLE, || {
        a.write_config(&broken).unwrap();
        let mark = a.log_mark();
        a.signal(libc::SIGHUP).unwrap();
        log = a.wait_for_log(mark, "nothing applied", LOG_TIMEOUT).expect("the refusal in the log");
    });
    eprintln!("reload (broken config): {}", measured.summary());
    measured.assert_clean("across a refused reload");
    assert!(log.contains("SIGHUP: config refused"), "{log}");
    let located = format!("{}:{line}:", a.config_path().display());
    let reason = log
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(&located))
        .unwrap_or_else(|| panic!("no {located}… in\n{log}"));
    assert!(reason.contains("10.2.0.300") || reason.contains("address"), "reason: {reason}\n{log}");
    assert!(a.running(), "the controller exited on a broken config:\n{}", a.log());
    assert_eq!(weights(&a), before, "a weight of the refused file was applied");
    assert_eq!(programs(&a), program);
}

#[test]
fn reliability_flow_table_overflow_evicts_and_serves_every_flow() {
    if !require("reliability_flow_table_overflow_evicts_and_serves_every_flow", &[Need::Kernel]) {
        return;
    }
    let _turn = serial::heavy();
    const CAPACITY: u32 = 1024;
    // More open connections than the table holds, half of them on each site.
    const TCP_PER_SITE: usize = 768;
    const NEW_FLOWS: u32 = 2 * CAPACITY;
    const FLOWS_PER_SEC: u32 = 1000;
    let chain = sustained::topology("rft").unwrap();
    let (a, _b) = sustained::start(&chain, Some(CAPACITY));
    let text = metrics(&a);
    assert_eq!(metric(&text, "anycast_flow_table_capacity"), Some(u64::from(CAPACITY)), "{text}");

    let vip = |port| std::net::SocketAddr::from((sustained::VIP, port));
    let sinks = [&chain.a, &chain.b].map(|ns| Sink::start(ns, vip(sustained::TCP_PORT)).unwrap());
    let udp = [&chain.a, &chain.b].map(|ns| UdpService::start(ns).unwrap());
    let Flows { tcp: tcp_ports, .. } = Flows::pick(&a, TCP_PER_SITE);
    // Every connection established and sending. The kernel's LRU evicts entries not used
    // since its last pass first, so connections (used again and again) outlive one-packet
    // flows; with more connections than entries, connections are evicted.
    let mut connections: Vec<Connection> = tcp_ports
        .iter()
        .flatten()
        .map(|&p| {
            let mut c =
                Connection::open(&chain.client, (sustained::CLIENT, p).into(), vip(sustained::TCP_PORT))
                    .unwrap_or_else(|e| panic!("TCP connection from port {p}: {e}"));
            c.send(CHUNK);
            c
        })
        .collect();
    // New UDP flows on top, each of which must be served.
    let ports = FlowClient::default()
        .send(&chain.client, FLOWS_PER_SEC, NEW_FLOWS, &AtomicBool::new(false))
        .expect("new UDP flows");
    wait::until(Duration::from_secs(5), || {
        udp.iter().map(UdpService::datagrams).sum::<u64>() >= u64::from(NEW_FLOWS)
    });
    let maps = a.maps().unwrap();
    let entries = maps.flow_count();
    let tcp = libc::IPPROTO_TCP as u8;
    let pinned = |p: u16| maps.flow(&sustained::flow_key(p, sustained::TCP_PORT, tcp)).unwrap().is_some();
    // Local connections never have an entry; forwarded ones without one now (evicted) find
    // their embryo or their bucket on the next packet.
    let local_pinned = tcp_ports[0].iter().filter(|&&p| pinned(p)).count();
    let evicted_tcp = tcp_ports[1].iter().filter(|&&p| !pinned(p)).count();
    let promoted_before = metric(&metrics(&a), PROMOTED).expect("the promoted counter");
    connections.iter_mut().for_each(|c| c.send(CHUNK));
    let reports: Vec<_> = connections.into_iter().map(Connection::finish).collect();
    let text = metrics(&a);
    let repinned = metric(&text, PROMOTED).expect("the promoted counter") - promoted_before;
    let unknown = metric(&text, FLOW_UNKNOWN).expect("the flow_unknown counter");
    let flows = NEW_FLOWS as usize + reports.len();
    eprintln!(
        "flow table of {CAPACITY}: {flows} flows ({} TCP connections, {NEW_FLOWS} UDP flows), {entries} entries; \
         {local_pinned} local connections with an entry; {evicted_tcp} forwarded connections without one, then \
         {repinned} re-pinned from their embryos and {unknown} packets forwarded unpinned; {} connections reset",
        reports.len(),
        reports.iter().filter(|r| r.reset()).count()
    );

    // Every new flow was served, once, by one of the sites.
    let mut served: Vec<(u16, u64)> = udp.iter().flat_map(|s| s.served()).collect();
    served.sort_unstable();
    let want: Vec<(u16, u64)> = ports.iter().map(|&p| (p, 1)).collect();
    assert_eq!(served.len(), want.len(), "UDP flows served / sent");
    assert_eq!(served, want, "a UDP flow was not served exactly once");
    // The table is full (the kernel's LRU frees in batches, so a little below capacity).
    assert!(
        entries <= CAPACITY as usize && entries >= CAPACITY as usize * 3 / 4,
        "{entries} entries in a table of {CAPACITY}"
    );
    assert_eq!(local_pinned, 0, "local connections need no flow-table entry");
    // UDP flows and forwarded connections together overflow the table: some connections
    // lost their pin. Each one's next packet was re-pinned or forwarded by its bucket (the
    // Maglev table did not change), and none was reset.
    assert!(evicted_tcp > 0, "no forwarded connection lost its entry: the scenario evicted nothing\n{text}");
    assert!(
        repinned + unknown >= evicted_tcp as u64,
        "{repinned} re-pinned + {unknown} unpinned for {evicted_tcp} evicted connections\n{text}"
    );
    let resets: Vec<_> = reports.iter().filter(|r| r.reset()).collect();
    assert!(
        resets.is_empty(),
        "{} TCP connections reset: {:#?}",
        resets.len(),
        &resets[..resets.len().min(5)]
    );
    for (i, sink) in sinks.iter().enumerate() {
        let mut seen: Vec<u16> = sink.wait_served(tcp_ports[i].len()).iter().map(|s| s.peer.port()).collect();
        seen.sort_unstable();
        assert_eq!(seen, tcp_ports[i], "connections served by site {}", sustained::SITES[i]);
    }
}

/// Where the nested cargo builds and finds things: the target directory and profile of
/// this test executable (<target>/<profile>/deps/<name>-<hash>).
/// `cargo xtask` as a command: the xtask that runs the tests (`ANYCAST_XTASK`), or under a
/// plain `cargo test` `cargo run -p xtask` (the cargo that runs the tests released its build
/// lock before running them, so this nested one does not wait on it; the test's timeout
/// bounds it).
fn xtask() -> Command {
    if let Some(xtask) = std::env::var_os("ANYCAST_XTASK") {
        return Command::new(xtask);
    }
    let exe = std::env::current_exe().expect("the test executable");
    let profile_dir = exe.parent().and_then(Path::parent).expect("<target>/<profile>/deps");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .env("CARGO_TARGET_DIR", profile_dir.parent().expect("a target directory"))
        .args(["run", "--quiet", "--package", "xtask", "--"]);
    cmd
}

/// Names in `dir` that start with `prefix`.
fn entries(dir: &str, prefix: &str) -> HashSet<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Interfaces of the host's namespace.
fn host_links() -> HashSet<String> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or("").to_owned()))
        .collect()
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    entries("/proc", "")
        .into_iter()
        .filter(|pid| pid.parse::<u32>().is_ok())
        .filter_map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then(|| format!("{pid}: {cmdline}"))
        })
        .collect()
}

#[test]
fn reliability_lab_runs_and_leaves_nothing_behind() {
    if !require("reliability_lab_runs_and_leaves_nothing_behind", &[Need::Kernel]) {
        return;
    }
    let _turn = serial::heavy();
    const SECONDS: u64 = 20;
    const TIMEOUT: Duration = Duration::from_secs(120);
    // 20 s of traffic and a few seconds to start and tear down (~25 s here); the rest is
    // room for a loaded machine.
    const EXPECTED: Duration = Duration::from_secs(60);
    let links_before = host_links();
    let dir = std::env::temp_dir().join(format!("anycast-test-{}-lab", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));

    let mut cmd = xtask();
    cmd.args(["run", "--for", &SECONDS.to_string()]);
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start cargo xtask run");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > TIMEOUT {
            // SIGINT: the lab's own teardown path, then the hard way.
            // SAFETY: our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            thread::sleep(Duration::from_secs(10));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let elapsed = started.elapsed();
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let _ = fs::remove_dir_all(&dir);
    let output = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    eprintln!("cargo xtask run --for {SECONDS}: {status:?} after {:.1} s", elapsed.as_secs_f64());
    for line in stdout
        .lines()
        .filter(|l| l.starts_with("final") || l.starts_with("lab: every") || l.starts_with("lab: TCP"))
    {
        eprintln!("  {line}");
    }
    assert!(status.is_some_and(|s| s.success()), "the lab failed ({status:?}) after {elapsed:?}\n{output}");
    assert!(stdout.contains("lab: every packet accounted for"), "{output}");
    assert!(stdout.contains(", 0 reset"), "{output}");
    // The load ramp made a spill to b and c, and the calm after it brought the flows home.
    assert!(stdout.contains("lab: during the surge a shed up to"), "{output}");
    assert!(stdout.contains("after it, a took them all back"), "{output}");
    assert!(stdout.contains("lab: torn down"), "{output}");
    assert!(elapsed < EXPECTED, "the lab took {elapsed:?}\n{output}");

    // What this lab made is named after its xtask pid (printed with its namespaces).
    let pid = stdout
        .lines()
        .find_map(|l| l.strip_prefix("lab: namespaces "))
        .and_then(|names| names.strip_prefix(testkit::netns::PREFIX)?.split('-').next()?.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no lab namespace named in the output\n{output}"));
    let left: Vec<String> = [
        entries(testkit::netns::NETNS_DIR, &format!("{}{pid}-", testkit::netns::PREFIX)),
        entries(testkit::daemon::BPFFS, &format!("{}{pid}-", testkit::daemon::PREFIX)),
        entries(&std::env::temp_dir().to_string_lossy(), &format!("{}{pid}-", testkit::daemon::PREFIX)),
    ]
    .into_iter()
    .flatten()
    .chain(processes_with(&format!("{}{pid}-", testkit::daemon::PREFIX)))
    .chain(host_links().difference(&links_before).map(|l| format!("host link {l}")))
    .collect();
    assert!(left.is_empty(), "the lab left behind: {left:?}\n{output}");
}
