//! The `anycast` command line as an operator meets it (docs/controller.md, "Commands" and
//! "Signals"): every command, and every documented error of the config, the start and the
//! signals, through the real binary.
//!
//! 1. `cli_check_config_names_every_problem_with_line_and_column`: `check-config` on a good
//!    file says OK and exits 0; on each of ~35 bad files it prints `FILE:LINE:COLUMN:
//!    message` at the place of the mistake (marked in the case's text, so the expected
//!    position is the test's, not the parser's) and exits 4 (a config error); several
//!    problems are reported at once; a missing file is an error; a bad argument gets a
//!    usage message.
//! 2. `cli_daemon_refuses_a_bad_config_at_start`: nothing pinned, nothing attached.
//! 3. `cli_daemon_refuses_a_pinned_map_of_another_layout`: a map pinned under one of the
//!    data path's names with other key/value sizes stops the start, untouched.
//! 4. `cli_status_as_a_table_and_from_the_pins`: the table through the daemon, and the same
//!    figures read from the pinned maps once no daemon answers.
//! 5. `cli_top_shows_the_rates_and_stops_after_count`: `top --count 2` prints two blocks
//!    whose per-site rate is the rate the client achieved.
//! 6. `cli_drain_and_undrain`: weight 0 in the kernel's Maglev table, kept across a
//!    restart (`overrides.json`), refused for an unknown site, and applied to the pins
//!    when no daemon answers.
//! 7. `cli_daemon_sigint_leaves_the_data_path_forwarding`: SIGINT stops the controller, the
//!    pinned program goes on counting, the next start adopts it.
//! 8. `cli_run_iface_attaches_and_detaches_on_sigint_and_sigterm`: the demo mode attaches
//!    natively (or generic, with a warning, when native is refused), pins nothing, and
//!    detaches on either signal.

use std::{
    ffi::OsStr,
    io::Read,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anycast_common::maps::{MAX_SITES, MAX_VIPS};
use anycast_tests::{
    admin::AdminApi,
    pinned::Pinned,
    topology::{LOCAL_SITE, LOCAL_VIP, LOCAL_VIP_PORT, local_site, two_sites},
};
use anycast_user::model::status::Status;
use testkit::{
    daemon::{self, Daemon, DaemonError},
    metrics::metric,
    netns::Netns,
    require::{Need, require},
    sequenced::{Sender, assert_all_arrived, bind, send_and_receive},
    wait,
};

/// A command that only reads a file or talks to a local daemon: immediate.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
/// Where a test marks the place of the mistake in a case's text (removed before writing).
const MARK: char = '⟨';

fn vip() -> SocketAddr {
    SocketAddr::new(LOCAL_VIP.parse().unwrap(), LOCAL_VIP_PORT)
}

/// A directory of this test process, removed on drop (named like every test's, so that a
/// failed test's is found at the end of the suite).
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("{}{}-{tag}", daemon::PREFIX, std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            testkit::teardown::warn(format_args!("removing {}: {e}", self.0.display()));
        }
    }
}

/// `anycast ARGS` on the host, to completion (bounded by [`CLI_TIMEOUT`]).
fn anycast(args: &[&OsStr]) -> Output {
    let bin = daemon::anycast_bin().expect("the anycast binary");
    daemon::output_within(Command::new(bin).args(args), CLI_TIMEOUT)
        .expect("running anycast")
        .unwrap_or_else(|| panic!("anycast {args:?} hung"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A valid config: a local and a remote site, and (from [`vips`]) a VIP.
const SITES: &str = r#"[local]
interfaces = ["eth0"]
tunnel_v4 = "10.0.0.1"

[[sites]]
name = "a"
local = true
capacity = 100

[[sites]]
name = "b"
endpoint = "10.0.0.2"
capacity = 100
"#;

const VIP: &str = r#"
[[vips]]
name = "dns"
address = "192.0.2.1"
port = 53
protocol = "udp"
"#;

fn valid() -> String {
    format!("{SITES}{VIP}")
}

/// One bad file: its text with [`MARK`] where the problem is (none: a problem of the whole
/// file, reported with no line) and a part of the message.
struct Case {
    name: &'static str,
    text: String,
    message: String,
}

fn case(name: &'static str, text: String, message: impl Into<String>) -> Case {
    Case { name, text, message: message.into() }
}

/// `valid()` with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    let v = valid();
    assert!(v.contains(from), "{from:?} is not in the valid config");
    v.replacen(from, to, 1)
}

/// 1-based line and column (in characters) of the mark, and the text without it.
fn locate(marked: &str) -> (Option<(usize, usize)>, String) {
    let Some(at) = marked.find(MARK) else { return (None, marked.to_owned()) };
    let before = &marked[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or(before).chars().count() + 1;
    (Some((line, column)), marked.replacen(MARK, "", 1))
}

fn cases() -> Vec<Case> {
    let many_sites: String = (0..MAX_SITES)
        .map(|i| {
            // The first site past the limit (after a and b) is where the problem is.
            let mark = if i == MAX_SITES - 2 { MARK.to_string() } else { String::new() };
            format!(
                "\n[[sites]]\nname = {mark}\"r{i}\"\nendpoint = \"10.{}.{}.1\"\ncapacity = 1\n",
                1 + i / 256,
                i % 256
            )
        })
        .collect();
    let many_vips: String = (1..=MAX_VIPS + 1)
        .map(|p| {
            let mark = if p == MAX_VIPS + 1 { MARK.to_string() } else { String::new() };
            format!("\n[[vips]]\naddress = {mark}\"192.0.2.1\"\nport = {p}\nprotocol = \"udp\"\n")
        })
        .collect();
    let site_c = "\n[[sites]]\nname = \"c\"\nendpoint = \"10.0.0.3\"\ncapacity = 100\n";
    let section = |body: &str| format!("{}{body}", valid());
    vec![
        case(
            "no [local]",
            valid().replacen("[local]\ninterfaces = [\"eth0\"]\ntunnel_v4 = \"10.0.0.1\"\n", "", 1),
            "missing section [local]",
        ),
        case("no [[sites]]", "[local]\ninterfaces = [\"eth0\"]\n".into(), "no [[sites]]"),
        case(
            "sites not tables",
            format!("sites = {MARK}\"a\"\n[local]\ninterfaces = [\"eth0\"]\n"),
            "`sites` must be an array of tables",
        ),
        case("vips not tables", format!("vips = {MARK}1\n{SITES}"), "`vips` must be an array of tables"),
        case(
            "too many sites",
            format!("{SITES}{many_sites}"),
            format!("{} sites; the data path holds at most {MAX_SITES}", MAX_SITES + 2),
        ),
        case("too many VIPs", format!("{SITES}{many_vips}"), "VIPs; the data path holds at most"),
        case(
            "Maglev table below the site count",
            format!("{SITES}{site_c}\n[datapath]\nmaglev_table_size = {MARK}2\n"),
            "maglev_table_size 2 is smaller than the number of sites (3)",
        ),
        case(
            "local gue_port 0",
            edit("tunnel_v4 = \"10.0.0.1\"\n", &format!("tunnel_v4 = \"10.0.0.1\"\ngue_port = {MARK}0\n")),
            "gue_port 0 is not a port",
        ),
        case(
            "remote gue_port 0",
            edit(
                "endpoint = \"10.0.0.2\"\n",
                &format!("endpoint = \"10.0.0.2\"\nencap = \"gue\"\ngue_port = {MARK}0\n"),
            ),
            "site `b`: gue_port must be 1..=65535",
        ),
        case(
            "endpoint unspecified",
            edit("endpoint = \"10.0.0.2\"", &format!("endpoint = {MARK}\"0.0.0.0\"")),
            "endpoint 0.0.0.0 is not a unicast address",
        ),
        case(
            "endpoint multicast",
            edit("endpoint = \"10.0.0.2\"", &format!("endpoint = {MARK}\"224.0.0.5\"")),
            "endpoint 224.0.0.5 is not a unicast address",
        ),
        case(
            "endpoint loopback",
            edit("endpoint = \"10.0.0.2\"", &format!("endpoint = {MARK}\"127.0.0.1\"")),
            "endpoint 127.0.0.1 is not a unicast address",
        ),
        case(
            "VIP multicast",
            edit("address = \"192.0.2.1\"", &format!("address = {MARK}\"239.1.1.1\"")),
            "VIP address 239.1.1.1 is not a unicast address",
        ),
        case(
            "VIP is the tunnel address",
            edit("address = \"192.0.2.1\"", &format!("address = {MARK}\"10.0.0.1\"")),
            "VIP address 10.0.0.1 is this host's tunnel address",
        ),
        case(
            "VIP with no site",
            edit("protocol = \"udp\"\n", &format!("protocol = \"udp\"\nsites = {MARK}[]\n")),
            "VIP `dns`: sites is empty",
        ),
        case(
            "VIP site listed twice",
            edit("protocol = \"udp\"\n", &format!("protocol = \"udp\"\nsites = [\"a\", {MARK}\"a\"]\n")),
            "VIP `dns`: site `a` is listed twice",
        ),
        case(
            "VIP unknown site",
            edit("protocol = \"udp\"\n", &format!("protocol = \"udp\"\nsites = [{MARK}\"z\"]\n")),
            "VIP `dns`: unknown site `z`",
        ),
        case(
            "site name",
            edit("name = \"b\"", &format!("name = {MARK}\"b b\"")),
            "site name `b b`: use 1..=64 characters",
        ),
        case(
            "VIP name",
            edit("name = \"dns\"", &format!("name = {MARK}\"d/ns\"")),
            "VIP name `d/ns`: use 1..=64 characters",
        ),
        case(
            "local site with encap",
            edit("local = true\n", &format!("local = true\nencap = {MARK}\"ip\"\n")),
            "site `a` is local: encap applies only to remote sites",
        ),
        case(
            "local site with gue_port",
            edit("local = true\n", &format!("local = true\ngue_port = {MARK}6080\n")),
            "site `a` is local: gue_port applies only to remote sites",
        ),
        case(
            "flow table too large",
            section(&format!("\n[datapath]\nflow_table_size = {MARK}4000000000\n")),
            "flow_table_size 4000000000 is out of range",
        ),
        case(
            "relative pin_dir",
            section(&format!("\n[datapath]\npin_dir = {MARK}\"bpf/anycast\"\n")),
            "pin_dir must be an absolute path",
        ),
        case(
            "relative state_dir",
            section(&format!("\n[admin]\nstate_dir = {MARK}\"state\"\n")),
            "state_dir must be an absolute path",
        ),
        case(
            "peer_listen not an address",
            section(&format!("\n[admin]\npeer_listen = {MARK}\"nowhere\"\n")),
            "socket address",
        ),
        case(
            "smoothing_ms",
            section(&format!("\n[load]\nsmoothing_ms = {MARK}600001\n")),
            "smoothing_ms 600001 is out of range 0..=600000",
        ),
        case(
            "peer_timeout_ms",
            section(&format!("\n[load]\npeer_timeout_ms = {MARK}5\n")),
            "peer_timeout_ms 5 is out of range 10..=60000",
        ),
        case(
            "stale_ms",
            section(&format!("\n[load]\nstale_ms = {MARK}50\n")),
            "stale_ms 50 is out of range 100..=600000",
        ),
        case(
            "low watermark",
            section(&format!("\n[load]\nlow = {MARK}0.0\n")),
            "low 0 is not a ratio in (0, 1]",
        ),
        case(
            "high watermark",
            section(&format!("\n[load]\nhigh = {MARK}1.5\n")),
            "high 1.5 is not a ratio in (0, 1]",
        ),
        case(
            "health interval_ms",
            section(&format!("\n[health]\ninterval_ms = {MARK}10\n")),
            "interval_ms 10 is out of range 50..=60000",
        ),
        case(
            "health timeout_ms",
            section(&format!("\n[health]\ntimeout_ms = {MARK}5\n")),
            "timeout_ms 5 is out of range 10..=60000",
        ),
        case(
            "health fall",
            section(&format!("\n[health]\nfall = {MARK}0\n")),
            "fall 0 is out of range 1..=100",
        ),
        case(
            "BGP fall",
            section(&format!("\n[bgp]\ndeprefer_med = 100\nfall = {MARK}101\n")),
            "fall 101 is out of range 1..=100",
        ),
        case("unknown section", section(&format!("\n[{MARK}colour]\nred = 1\n")), "unknown section `colour`"),
    ]
}

#[test]
fn cli_check_config_names_every_problem_with_line_and_column() {
    let dir = Dir::new("check-config");
    let path = dir.0.join("anycast.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        anycast(&[OsStr::new("check-config"), path.as_os_str()])
    };

    let ok = check(&valid());
    assert!(ok.status.success(), "a valid file: {ok:?}");
    assert_eq!(text(&ok.stdout).trim(), format!("{}: OK (1 interfaces, 2 sites, 1 VIPs)", path.display()));

    let mut wrong = Vec::new();
    let cases = cases();
    for Case { name, text: marked, message } in &cases {
        let (at, text) = locate(marked);
        let out = check(&text);
        let stderr = self::text(&out.stderr);
        let want = match at {
            Some((line, column)) => format!("{}:{line}:{column}: ", path.display()),
            None => format!("{}: ", path.display()),
        };
        let found =
            stderr.lines().any(|l| l.strip_prefix(&want).is_some_and(|m| m.contains(message.as_str())));
        if out.status.code() != Some(4) || !found || !stderr.contains("nothing applied") {
            wrong.push(format!(
                "{name}: want exit 4 and `{want}…{message}…`, got {:?}:\n{stderr}",
                out.status
            ));
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases:\n{}", wrong.len(), cases.len(), wrong.join("\n"));

    // Several problems at once, each on its own line, and their count.
    let two =
        edit("capacity = 100\n\n[[sites]]", "capacity = 0\n\n[[sites]]").replace("port = 53", "port = 0");
    let out = check(&two);
    let stderr = text(&out.stderr);
    let located = stderr.lines().filter(|l| l.starts_with(&format!("{}:", path.display()))).count();
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("capacity must be > 0") && stderr.contains("port 0 is out of range"), "{stderr}");
    assert!(located >= 3 && stderr.contains("2 errors, nothing applied"), "{stderr}");

    // A file that is not there.
    let missing = dir.0.join("missing.toml");
    let out = anycast(&[OsStr::new("check-config"), missing.as_os_str()]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(text(&out.stderr).contains(&format!("cannot read {}", missing.display())), "{out:?}");

    // A bad argument: a usage message and exit 2 (clap's), for every command.
    for args in [
        &["run", "--interval", "x"][..],
        &["top", "--count", "x"],
        &["drain"],
        &["status", "--output", "nowhere"],
        &["frobnicate"],
    ] {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let out = anycast(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "anycast {args:?}: {stderr}");
        assert!(stderr.contains("Usage:") || stderr.contains("--help"), "anycast {args:?}: {stderr}");
    }
}

/// The mode of the XDP program `ifname` in `ns` runs, if any: `ip -d link` shows the
/// program as `prog/xdp id N ...`, and its mode in the first line (`xdpgeneric` for generic).
fn xdp_attached(ns: &Netns, ifname: &str) -> Option<&'static str> {
    let details = ns.ip(&["-d", "link", "show", "dev", ifname]).unwrap();
    let generic = details.lines().next().is_some_and(|l| l.split_whitespace().any(|w| w == "xdpgeneric"));
    details.lines().any(|l| l.trim().starts_with("prog/xdp")).then_some(if generic {
        "generic"
    } else {
        "native"
    })
}

/// The start of `daemon` fails; its log.
fn refused_start(daemon: &mut Daemon) -> String {
    match daemon.start() {
        Err(DaemonError::Exited { status, log, .. }) => {
            assert!(!status.success(), "refused, yet exit status {status}:\n{log}");
            log
        }
        other => panic!("the daemon started: {other:?}"),
    }
}

#[test]
fn cli_daemon_refuses_a_bad_config_at_start() {
    if !require("cli_daemon_refuses_a_bad_config_at_start", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("cbs");
    let mut d = Daemon::new(&site).unwrap();
    let (at, body) = locate(&LOCAL_SITE.replace("capacity = 100", &format!("capacity = {MARK}0")));
    let (line, column) = at.expect("the capacity is marked");
    d.write_config(&body).unwrap();
    let log = refused_start(&mut d);
    let located = format!("{}:{line}:{column}: site `here`: capacity must be > 0", d.config_path().display());
    assert!(log.contains(&located), "no {located} in\n{log}");
    assert!(!d.pin_dir().exists(), "a refused start pinned {}", d.pin_dir().display());
    assert_eq!(xdp_attached(&site, "l0"), None, "a refused start attached a program");
}

#[test]
fn cli_daemon_refuses_a_pinned_map_of_another_layout() {
    if !require("cli_daemon_refuses_a_pinned_map_of_another_layout", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("cpl");
    let mut d = Daemon::new(&site).unwrap();
    d.write_config(LOCAL_SITE).unwrap();
    // A map no release left there alone: another TUNNEL_PEERS key, and nothing else.
    let map = d.pin_dir().join(anycast_common::maps::TUNNEL_PEERS);
    std::fs::create_dir_all(d.pin_dir()).unwrap();
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&map)
        .args(["type", "hash", "key", "4", "value", "4", "entries", "8", "name", "TUNNEL_PEERS"])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    assert!(out.status.success(), "bpftool map create: {}", text(&out.stderr));
    let log = refused_start(&mut d);
    // Maps without a LAYOUT that are not release 0.1.0's complete set are nobody's layout:
    // refused, never migrated.
    assert!(
        log.contains(&format!("{} holds maps without a LAYOUT", d.pin_dir().display()))
            && log.contains("not what a release of anycast pinned")
            && log.contains("anycast detach"),
        "{log}"
    );
    assert_eq!(xdp_attached(&site, "l0"), None, "a refused start attached a program");
    let shown = Command::new("bpftool").args(["map", "show", "pinned"]).arg(&map).output().unwrap();
    assert!(
        text(&shown.stdout).contains("key 4B  value 4B"),
        "the old map was changed: {}",
        text(&shown.stdout)
    );
}

/// Columns of the table row that starts with `first` (after the header line).
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first} in\n{table}"))
}

fn cli(d: &Daemon, args: &[&str]) -> Output {
    let config = d.config_path();
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.extend([OsStr::new("--config"), config.as_os_str()]);
    d.cli(all, &[], CLI_TIMEOUT).expect("anycast")
}

#[test]
fn cli_status_as_a_table_and_from_the_pins() {
    if !require("cli_status_as_a_table_and_from_the_pins", &[Need::Kernel]) {
        return;
    }
    const COUNT: u32 = 100;
    let (cl, site) = local_site("cst");
    let mut d = Daemon::new(&site).unwrap();
    // The VIP served here only: `there` is shown but gets nothing (nothing would carry it).
    d.write_config(&two_sites(&["here"])).unwrap();
    d.start().unwrap();
    let srv = bind(&site, &vip().to_string());
    assert_all_arrived(&send_and_receive(&cl, vip(), &srv, COUNT), COUNT, "to the VIP");
    let count = COUNT.to_string();
    let expect = |table: &str, whence: &str| {
        let here = row(table, "here");
        let there = row(table, "there");
        // SITE ROLE ENDPOINT ENCAP STATE WEIGHT LOAD PPS LOCAL FORWARDED RECEIVED
        assert_eq!(here[..6], ["here", "local", "-", "-", "up", "100"], "{whence}:\n{table}");
        assert_eq!(here[8..], [&*count, "0", "0"], "{whence}:\n{table}");
        assert_eq!(there[..6], ["there", "remote", "10.9.0.2", "ip", "up", "100"], "{whence}:\n{table}");
        assert_eq!(there[8..], ["0", "0", "0"], "{whence}:\n{table}");
        // VIP PPS PACKETS SITES
        let svc = row(table, "svc");
        assert_eq!((svc[2], svc[3]), (&*count, "here"), "{whence}:\n{table}");
        assert!(table.starts_with("interfaces: l0   flows: "), "{whence}:\n{table}");
    };
    let live = cli(&d, &["status"]);
    assert!(live.status.success(), "{live:?}");
    expect(&text(&live.stdout), "through the daemon");

    d.kill().unwrap();
    let pinned = cli(&d, &["status"]);
    assert!(pinned.status.success(), "{pinned:?}");
    assert!(text(&pinned.stderr).contains("reading the pinned maps"), "{}", text(&pinned.stderr));
    expect(&text(&pinned.stdout), "from the pinned maps");
    // Without --config (and no file where the default points) there is nothing to fall
    // back on: a clear error, with the exit code of "no daemon".
    let out = d.cli(["status", "--config", "/nonexistent/anycast.toml"], &[], CLI_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(text(&out.stderr).contains("reading the pinned maps needs the config"), "{out:?}");
}

#[test]
fn cli_top_shows_the_rates_and_stops_after_count() {
    if !require("cli_top_shows_the_rates_and_stops_after_count", &[Need::Kernel]) {
        return;
    }
    const RATE: u32 = 400;
    let (cl, site) = local_site("ctp");
    let d = Daemon::started(&site, LOCAL_SITE).unwrap();
    let _srv = bind(&site, &vip().to_string());
    let sender = Sender::new(bind(&cl, "0.0.0.0:0"), vip(), RATE, RATE * 30);
    let (out, achieved) = thread::scope(|s| {
        let started = Instant::now();
        let tx = s.spawn(|| sender.run());
        wait::until(Duration::from_secs(5), || sender.sent() >= RATE / 2);
        let out = cli(&d, &["top", "--interval", "1", "--count", "2"]);
        sender.stop();
        let sent = tx.join().unwrap();
        (out, f64::from(sent) / started.elapsed().as_secs_f64())
    });
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    // Not a terminal: plain blocks headed "-- SECONDS".
    let blocks: Vec<&str> = stdout.split("-- ").filter(|b| !b.is_empty()).collect();
    assert_eq!(blocks.len(), 2, "--count 2 printed:\n{stdout}");
    // A sender that woke up late catches up in a burst, which one second's block may take
    // from its neighbour: each block within half the client's rate, the two together within
    // a quarter (a wrong unit or window would miss both).
    let mut sum = 0.0;
    for block in &blocks {
        let here = row(block, "here");
        let local: f64 = here[4].parse().unwrap();
        assert!(
            (local / achieved - 1.0).abs() < 0.5,
            "LOCAL/s {local} while the client sent {achieved:.0}/s:\n{block}"
        );
        assert_eq!(row(block, "TOTAL")[1].parse::<f64>().unwrap(), local, "{block}");
        assert!(block.contains("exceptions/s: none"), "{block}");
        sum += local;
    }
    assert!(
        (sum / 2.0 / achieved - 1.0).abs() < 0.25,
        "LOCAL/s {sum} over two blocks, the client {achieved:.0}/s"
    );
}

/// Where the VIP's table and the two sites are in the maps (from the daemon's `/status`).
struct Slots {
    vip: u32,
    here: u32,
    there: u32,
}

impl Slots {
    fn of(d: &Daemon) -> Slots {
        let status: Status = d.status().unwrap();
        let site = |name: &str| status.sites.iter().find(|s| s.name == name).unwrap().index;
        Slots { vip: status.vips[0].index, here: site("here"), there: site("there") }
    }

    /// The share of each site (here, there) in the VIP's Maglev table in the kernel.
    fn shares(&self, d: &Daemon) -> (f64, f64) {
        let table = d.maps().unwrap().maglev(self.vip).unwrap().expect("the VIP's Maglev table");
        // An entry is a site index plus flags (docs/datapath.md §6).
        let share = |site: u32| {
            table.iter().filter(|&&s| s & anycast_common::site::MAGLEV_SITE == site).count() as f64
                / table.len() as f64
        };
        (share(self.here), share(self.there))
    }
}

/// A site's state and weight in the daemon's `/status`.
fn state(d: &Daemon, site: &str) -> (String, u32) {
    let status: Status = d.status().unwrap();
    let s = status.sites.into_iter().find(|s| s.name == site).unwrap();
    (s.state, s.weight)
}

#[test]
fn cli_drain_and_undrain() {
    if !require("cli_drain_and_undrain", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("cdr");
    let mut d = Daemon::started(&site, &two_sites(&["here", "there"])).unwrap();
    let slots = Slots::of(&d);
    let shares = |d: &Daemon| slots.shares(d);
    let even = |(here, there): (f64, f64)| (here - 0.5).abs() < 0.01 && (there - 0.5).abs() < 0.01;
    assert!(even(shares(&d)), "{:?}", shares(&d));

    let out = cli(&d, &["drain", "there"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout).trim(),
        "site there: drained: no new flows, established flows stay (weight 0)"
    );
    assert_eq!(shares(&d), (1.0, 0.0), "drained: no slot for there");
    assert_eq!(state(&d, "there"), ("drained".to_owned(), 0));
    let overrides = std::fs::read_to_string(d.dir().join("state/overrides.json")).expect("overrides.json");
    assert!(overrides.contains("\"there\""), "{overrides}");

    // Kept across a restart of the controller.
    let (status, by_itself) = d.stop(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    assert!(by_itself && status.success(), "SIGTERM: {status}");
    d.start().unwrap();
    assert_eq!(state(&d, "there"), ("drained".to_owned(), 0), "after a restart");
    assert_eq!(shares(&d), (1.0, 0.0), "after a restart");

    let out = cli(&d, &["undrain", "there"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).trim(), "site there: undrained (weight 100)");
    assert!(even(shares(&d)), "undrained: {:?}", shares(&d));

    // An unknown site: the daemon's 404, passed on.
    let out = cli(&d, &["drain", "nowhere"]);
    assert!(!out.status.success() && text(&out.stderr).contains("nowhere"), "{out:?}");
    assert!(even(shares(&d)), "a refused drain changed the table: {:?}", shares(&d));

    // No daemon: applied to the pinned maps, and picked up by the next start.
    d.kill().unwrap();
    let out = cli(&d, &["drain", "there"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("applying to the pinned maps"), "{}", text(&out.stderr));
    assert_eq!(shares(&d), (1.0, 0.0), "drained through the pins");
    d.start().unwrap();
    assert_eq!(state(&d, "there"), ("drained".to_owned(), 0), "the next start keeps the drain");
}

#[test]
fn cli_daemon_sigint_leaves_the_data_path_forwarding() {
    if !require("cli_daemon_sigint_leaves_the_data_path_forwarding", &[Need::Kernel]) {
        return;
    }
    const COUNT: u32 = 200;
    let (cl, site) = local_site("csi");
    let mut d = Daemon::started(&site, LOCAL_SITE).unwrap();
    let program = d.link_program_id("l0").unwrap();
    let srv = bind(&site, &vip().to_string());
    assert_all_arrived(&send_and_receive(&cl, vip(), &srv, COUNT), COUNT, "with the controller");

    let (status, by_itself) = d.stop(libc::SIGINT, Duration::from_secs(10)).unwrap();
    assert!(by_itself && status.success(), "SIGINT: {status}\n{}", d.log());
    assert_eq!(d.link_program_id("l0").unwrap(), program, "the link is still pinned, the program attached");
    assert!(xdp_attached(&site, "l0").is_some(), "nothing attached after SIGINT");
    assert_all_arrived(&send_and_receive(&cl, vip(), &srv, COUNT), COUNT, "without a controller");

    let log = d.start().unwrap();
    assert!(log.contains("adopted the running instance"), "{log}");
    assert_eq!(d.link_program_id("l0").unwrap(), program, "the restart replaced the program");
    let text = d.get("/metrics").unwrap();
    // The VIP is on the site's loopback: the datagrams would arrive without XDP too. That
    // the program counted all of them shows it ran while no controller did.
    assert_eq!(
        metric(&text, r#"anycast_vip_packets_total{vip="svc"}"#),
        Some(2 * u64::from(COUNT)),
        "{text}"
    );
}

/// `anycast run --iface` as a child in `ns`, its stdout and stderr collected as they come.
struct Demo {
    child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Demo {
    fn start(ns: &Netns, ifname: &str) -> Demo {
        let bin = daemon::anycast_bin().unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--iface", ifname, "--interval", "1"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ns.spawn(&mut cmd).unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let collect = |mut pipe: Box<dyn Read + Send>| {
            let output = Arc::clone(&output);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    output.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        let readers = vec![
            collect(Box::new(child.stdout.take().unwrap())),
            collect(Box::new(child.stderr.take().unwrap())),
        ];
        Demo { child, output, readers }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Sends `signal`; the exit status and everything it printed.
    fn stop(mut self, signal: i32) -> (std::process::ExitStatus, String) {
        // SAFETY: kill has no memory-safety preconditions; our own unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        let exited = wait::until(Duration::from_secs(10), || matches!(self.child.try_wait(), Ok(Some(_))));
        if exited.is_none() {
            let _ = self.child.kill();
        }
        let status = self.child.wait().unwrap();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        assert!(exited.is_some(), "still running 10 s after signal {signal}:\n{}", self.output());
        (status, self.output())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn cli_run_iface_attaches_and_detaches_on_sigint_and_sigterm() {
    if !require("cli_run_iface_attaches_and_detaches_on_sigint_and_sigterm", &[Need::Kernel]) {
        return;
    }
    let ns = Netns::new("crun").unwrap();
    ns.add_veth("v0", &ns, "v1").unwrap();
    // What `--iface` must never create: the default pin directory. (Counting everything in
    // bpffs would count the pins of tests running beside this one.)
    let default_pins = std::path::Path::new(daemon::BPFFS).join("anycast");
    let pinned_before = default_pins.exists();
    // Native first; then with the peer's MTU above what veth's native XDP takes for a
    // program without multi-buffer support (ERANGE), so that the demo falls back to generic.
    for (signal, mtu, mode) in [(libc::SIGINT, 1500, "native"), (libc::SIGTERM, 9000, "generic")] {
        ns.set_mtu("v1", mtu).unwrap();
        ns.set_mtu("v0", mtu).unwrap();
        let demo = Demo::start(&ns, "v0");
        let attached = format!("attached to v0 ({mode} mode)");
        let up = wait::until(Duration::from_secs(30), || demo.output().contains(&attached));
        assert!(up.is_some(), "no {attached:?} within 30 s:\n{}", demo.output());
        assert_eq!(xdp_attached(&ns, "v0"), Some(mode), "what `ip link` shows of v0");
        if mode == "generic" {
            assert!(demo.output().contains("native XDP not available"), "no warning:\n{}", demo.output());
        }
        // Counters are printed every --interval.
        wait::until(Duration::from_secs(5), || demo.output().matches("--").count() >= 2);
        assert_eq!(default_pins.exists(), pinned_before, "--iface pinned something");
        let (status, output) = demo.stop(signal);
        assert!(status.success(), "{mode}: exit {status} on signal {signal}:\n{output}");
        assert!(output.contains("detached from v0"), "{output}");
        assert_eq!(xdp_attached(&ns, "v0"), None, "{mode}: still attached after signal {signal}");
    }
}
