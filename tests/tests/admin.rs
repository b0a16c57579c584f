//! The admin API's requests, fuzzed against the real daemon: generated requests (well
//! formed, almost well formed, and plain bytes) sent to its admin socket and to its metrics
//! listener (TCP). Whatever comes, the daemon answers with an HTTP status or closes the connection, keeps running, and a
//! request that is not a well-formed drain or undrain of a configured site changes nothing:
//! the sites' weights and states in `/status` and the VIP's Maglev table in the kernel stay
//! as they were (docs/controller.md, "HTTP"; BRIEF: a forged control message changes
//! nothing).
//!
//! A property test rather than a libFuzzer target: the parser under test is the daemon's
//! HTTP stack and router as they run, with their state, which an in-process fuzzer cannot
//! have without a loaded data path. Every run replays the fixed requests of [`SEEDS`], then
//! generates [`CASES`] more; `cargo xtask test --fuzz` sets `ANYCAST_FUZZ_SECONDS` to keep
//! generating for that long.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use anycast_tests::{
    admin::AdminApi,
    pinned::Pinned,
    topology::{local_site, two_sites},
};
use anycast_user::datapath::maps::DataPathMaps;
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use testkit::{
    daemon::{ADMIN_LISTEN, Daemon},
    netns::Netns,
    require::{Need, require},
};

/// Generated requests per run of the normal suite.
const CASES: u32 = 200;
/// How long one request may take to be answered (or the connection closed).
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Requests that have broken HTTP servers before, replayed every run.
const SEEDS: &[&[u8]] = &[
    b"",
    b"\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /status HTTP/1.1\r\n\r\n",
    b"POST /drain/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"POST /drain/%ff%fe HTTP/1.1\r\n\r\n",
    b"POST /drain/x%00 HTTP/1.1\r\n\r\n",
    b"POST /drain/../status HTTP/1.1\r\n\r\n",
    b"POST //drain/here HTTP/1.1\r\n\r\n",
    b"PUT /drain/here HTTP/1.1\r\n\r\n",
    b"GET /drain/here HTTP/1.1\r\n\r\n",
    b"POST /drain/here/x HTTP/1.1\r\n\r\n",
    b"POST /undrain HTTP/1.1\r\n\r\n",
    b"POST /metrics HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"POST /status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
    b"GET /status HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"GET /status HTTP/2.0\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET http://127.0.0.1:9100/status HTTP/1.1\r\n\r\n",
    b"GET * HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
];

/// What a request must not change: the sites' state and weight, and which Maglev table the
/// VIP's entry of the outer map holds (a new table is swapped in whole, so its kernel id
/// changes; reading the id is one system call, reading 65,537 entries is not).
#[derive(Debug, PartialEq)]
struct State {
    sites: Vec<(String, String, u32)>,
    table: Option<u32>,
}

fn state(d: &Daemon, maps: &DataPathMaps) -> State {
    let status = d.status().unwrap();
    let table = maps.maglev_id(status.vips[0].index).unwrap();
    State { sites: status.sites.into_iter().map(|s| (s.name, s.state, s.weight)).collect(), table }
}

/// Sends `request` as it is on `stream`, half-closes, and reads what comes back: the
/// status line's code, or `None` if the daemon closed without answering (its right for
/// garbage).
fn exchange<S: Read + Write>(
    mut s: S,
    request: &[u8],
    shutdown: impl FnOnce(&S),
) -> Result<Option<u16>, String> {
    // The daemon may close early on garbage: a failed write is then no failure.
    if s.write_all(request).is_ok() {
        shutdown(&s);
    }
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(format!("no answer and no close within {IO_TIMEOUT:?}: {e}")),
    }
    if answer.is_empty() {
        return Ok(None);
    }
    let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
    let code = head
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {head:?}"))?;
    Ok(Some(code))
}

/// `request` to the admin API (the daemon's Unix socket) and to its metrics listener (TCP,
/// inside its namespace): both must answer or close, and neither may change anything.
fn send(d: &Daemon, site: &Netns, request: &[u8]) -> Result<[Option<u16>; 2], String> {
    let admin =
        UnixStream::connect(d.socket()).map_err(|e| format!("connect {}: {e}", d.socket().display()))?;
    admin.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    admin.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let admin = exchange(admin, request, |s| drop(s.shutdown(Shutdown::Write)))
        .map_err(|e| format!("admin socket: {e}"))?;
    let metrics = site.run(|| {
        let addr = ADMIN_LISTEN.parse().unwrap();
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        exchange(s, request, |s| drop(s.shutdown(Shutdown::Write)))
            .map_err(|e| format!("metrics listener: {e}"))
    })?;
    Ok([admin, metrics])
}

/// A request line, headers and a body, each from shapes that reach the router and shapes
/// that break the parser; or just bytes. Names after /drain/ start with `x`, so that no
/// generated request (percent-decoding included) drains a configured site.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        Just("GET".to_owned()),
        Just("POST".to_owned()),
        Just("PUT".to_owned()),
        Just("DELETE".to_owned()),
        Just("HEAD".to_owned()),
        Just("OPTIONS".to_owned()),
        "[A-Za-z]{0,12}",
    ];
    let path = prop_oneof![
        Just("/metrics".to_owned()),
        Just("/status".to_owned()),
        Just("/load".to_owned()),
        "/(drain|undrain)/x[a-z0-9%./_-]{0,24}",
        "/(drain|undrain)(/|//)?",
        "/[ -~]{0,64}",
        "[ -~]{0,16}",
        Just(format!("/status?{}", "a".repeat(9000))),
    ];
    let version =
        prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0"), Just("HTTP/2.0"), Just("HTTP/9.9"), Just("")];
    let header = prop_oneof![
        "(Host|host): [ -~]{0,32}".prop_map(String::from),
        "Content-Length: -?[0-9]{0,24}".prop_map(String::from),
        Just("Transfer-Encoding: chunked".to_owned()),
        Just("Connection: keep-alive".to_owned()),
        "[!-9;-~]{1,16}: [ -~]{0,64}".prop_map(String::from),
        "[ -~]{0,80}".prop_map(String::from),
    ];
    let formed = (
        method,
        path,
        version,
        prop::collection::vec(header, 0..6),
        prop::collection::vec(any::<u8>(), 0..128),
    )
        .prop_map(|(m, p, v, headers, body)| {
            let mut r = format!("{m} {p} {v}\r\n").into_bytes();
            for h in headers {
                r.extend_from_slice(h.as_bytes());
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"\r\n");
            r.extend(body);
            r
        });
    prop_oneof![4 => formed, 1 => prop::collection::vec(any::<u8>(), 0..512)]
}

#[test]
fn admin_requests_fuzzed_change_nothing() {
    if !require("admin_requests_fuzzed_change_nothing", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("adz");
    let mut d = Daemon::new(&site).unwrap();
    // Two sites serving the VIP: a drain would show in both the weights and the table.
    d.write_config(&two_sites(&["here", "there"])).unwrap();
    d.start().unwrap();
    let maps = d.maps().unwrap();
    let before = state(&d, &maps);
    assert!(before.table.is_some(), "{before:?}");

    // TestRunner takes a `Fn`: the daemon is borrowed for each case.
    let d = std::cell::RefCell::new(d);
    let check = |request: &[u8]| -> Result<(), TestCaseError> {
        let d = &mut *d.borrow_mut();
        let shown = String::from_utf8_lossy(&request[..request.len().min(200)]).into_owned();
        let answers = send(d, &site, request).map_err(|e| TestCaseError::fail(format!("{shown:?}: {e}")))?;
        for code in answers.into_iter().flatten() {
            prop_assert!((200..600).contains(&code), "{shown:?}: status {code}");
        }
        prop_assert!(d.running(), "{shown:?} stopped the daemon:\n{}", d.log());
        let after = state(d, &maps);
        prop_assert!(after == before, "{shown:?} changed the state: {:?} → {:?}", before.sites, after.sites);
        Ok(())
    };
    for seed in SEEDS {
        check(seed).unwrap_or_else(|e| panic!("{e}"));
    }
    let budget =
        std::env::var("ANYCAST_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).map(Duration::from_secs);
    let start = Instant::now();
    let mut runs = 0;
    let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
    loop {
        let result = runner.run(&request(), |r| check(&r));
        if let Err(e) = result {
            panic!("after {runs} runs of {CASES}: {e}");
        }
        runs += 1;
        if budget.is_none_or(|b| start.elapsed() >= b) {
            break;
        }
    }
    eprintln!(
        "admin: {} seeds and {} generated requests in {:.1} s, nothing changed",
        SEEDS.len(),
        runs * CASES,
        start.elapsed().as_secs_f64()
    );
    // And the API still does its job.
    let d = d.into_inner();
    let out = d
        .cli(["drain", "there", "--config", d.config_path().to_str().unwrap()], &[], IO_TIMEOUT * 5)
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_ne!(state(&d, &maps), before, "a real drain changed nothing");
}
