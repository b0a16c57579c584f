//! The daemon's listeners against slow and greedy clients (issue 15; docs/controller.md,
//! "Control surfaces"), with the real binary on the namespaces of `topology::local_site`:
//!
//! ```text
//! client c0 10.1.0.2 (+ 10.1.0.10-18) ⇄ l0 10.1.0.1 [site: peer_listen 10.1.0.1:9101]
//! ```
//!
//! `listeners_slow_clients_hold_no_slot_for_long`:
//! 1. 80 connections from the client's one address (more than the listener's 64), each
//!    sending half a request header and nothing more: 8 (the share of one address) are
//!    served and the other 72 are closed at once; `GET /load` from another address answers
//!    as fast as before, within the peer poller's 500 ms; the 8 are closed by the server 2 s
//!    after their half header; `/metrics` counts the 72.
//! 2. 72 such connections from 9 addresses: 64 are served (the cap), 8 closed at once, and
//!    so is a well-behaved client meanwhile (the cap bounds the descriptors, whoever asks);
//!    2 s later all are closed and `/load` answers again.
//!
//! `listeners_admin_socket_bounds_a_uid_slow_headers_and_bodies`, on the Unix admin socket:
//! 1. 12 connections of root's, each sending half a request header: 8 (a uid's share) are
//!    served and 4 closed at once, counted; root's `anycast status` is refused meanwhile
//!    and a member of the socket's group (uid 65534) gets its status; the 8 are closed by
//!    the server 5 s after their half header, and then root's `anycast status` answers.
//! 2. `POST /plan` with a body past 1 MiB: 413, from a raw client and through `anycast plan`;
//!    the daemon serves on.
//! 3. `POST /plan` whose body never completes: 408 after 5 s, the connection closed.

use std::{
    ffi::OsStr,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::unix::{net::UnixStream, process::CommandExt},
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use anycast_tests::topology::{LOCAL_SITE, local_site};
use socket2::{Domain, Socket, Type};
use testkit::{
    daemon::{Daemon, anycast_bin},
    metrics::{self, metric},
    netns::Netns,
    require::{Need, require},
    wait,
};

/// The bounds docs/controller.md promises: connections per listener, per address, and the
/// time to send a header.
const CAP: usize = 64;
const PER_SOURCE: usize = 8;
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// `[load] peer_timeout_ms` by default: what a sibling waits for `/load`.
const LOAD_TIMEOUT: Duration = Duration::from_millis(500);
const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1), 9101);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
/// Phase 1: connections from the client's address, more than the cap.
const IDLE: usize = 80;
/// Phase 2: addresses, each opening its share.
const SOURCES: u8 = 9;
/// `GET /load` per measurement.
const GETS: usize = 20;
/// How long the idle connections are watched: the header timeout and ample slack.
const WATCH: Duration = Duration::from_secs(6);
/// The admin socket's bounds docs/controller.md promises: connections per uid, the time to
/// send a header, the largest body.
const ADMIN_PER_UID: usize = 8;
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const ADMIN_BODY_LIMIT: usize = 1 << 20;
const ADMIN_BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Root's connections to the admin socket: more than its share.
const ADMIN_IDLE: usize = 12;
const ADMIN_WATCH: Duration = Duration::from_secs(9);
/// Closed "at once": well before the header timeout.
const AT_ONCE: Duration = Duration::from_millis(500);

/// A request that the listener must refuse (it is full): the connection is closed without
/// an answer. Raw, so that nothing retries it.
fn refused_outright(site: &Netns) -> Result<(), String> {
    site.run(|| {
        let mut s = TcpStream::connect_timeout(&PEER.into(), LOAD_TIMEOUT).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(LOAD_TIMEOUT)).map_err(|e| e.to_string())?;
        let _ = s.write_all(b"GET /load HTTP/1.1\r\nHost: 10.1.0.1\r\nConnection: close\r\n\r\n");
        let mut reply = Vec::new();
        match s.read_to_end(&mut reply) {
            Ok(_) if reply.is_empty() => Ok(()),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
            Ok(_) => Err(format!("answered: {:?}", String::from_utf8_lossy(&reply))),
            Err(e) => Err(format!("neither answered nor closed: {e}")),
        }
    })
}

/// How long after its half header each connection was closed.
fn lifetimes(sent: &[Instant], closed: &[Option<Instant>]) -> Vec<Duration> {
    assert!(closed.iter().all(Option::is_some), "a slow connection still open at the end of the watch");
    sent.iter().zip(closed).map(|(s, c)| c.expect("closed") - *s).collect()
}

/// Checks the slow connections' lives: `served` of them held until the header timeout (not
/// closed before it, nor much after), the others closed at once, and none of those served
/// closed before `checks_end` (the checks ran while they were open). The served ones'
/// shortest and longest lives.
fn slow_lives(
    sent: &[Instant],
    closed: &[Option<Instant>],
    served: usize,
    header_timeout: Duration,
    checks_end: Instant,
) -> (Duration, Duration) {
    let lived = lifetimes(sent, closed);
    let at_once = lived.iter().filter(|t| **t < AT_ONCE).count();
    let mut held: Vec<Duration> = lived.iter().copied().filter(|t| *t >= AT_ONCE).collect();
    held.sort();
    assert_eq!((held.len(), at_once), (served, lived.len() - served), "lifetimes {lived:?}");
    let (first, last) = (held[0], held[held.len() - 1]);
    assert!(
        first >= header_timeout - Duration::from_millis(50)
            && last <= header_timeout + Duration::from_millis(1500),
        "slow connections closed {first:?}..{last:?} after their half header"
    );
    let first_closed = sent.iter().zip(&lived).filter(|(_, t)| **t >= AT_ONCE).map(|(s, t)| *s + *t).min();
    assert!(
        first_closed.is_some_and(|c| c > checks_end),
        "a served slow connection closed before the checks ended"
    );
    (first, last)
}

/// One `GET /load` from the site's own address (a source with no idle connection), a
/// fresh connection as the peer poller makes; its latency or why it failed.
fn get_load(site: &Netns) -> Result<Duration, String> {
    let start = Instant::now();
    metrics::get(site, &format!("http://{PEER}/load"), &[], LOAD_TIMEOUT).map(|_| start.elapsed())
}

/// [`GETS`] of them, each within [`LOAD_TIMEOUT`]; their latencies, sorted.
fn get_loads(site: &Netns, when: &str) -> Vec<Duration> {
    let mut all: Vec<Duration> =
        (0..GETS).map(|i| get_load(site).unwrap_or_else(|e| panic!("GET /load {i} {when}: {e}"))).collect();
    all.sort();
    all
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Connections from each of `sources` (`per` each), to the peer listener from `ns`, each
/// sending half a request header: when it was sent, and the stream (non-blocking).
fn open_slow(ns: &Netns, sources: &[Ipv4Addr], per: usize) -> Vec<(Instant, Option<TcpStream>)> {
    ns.run(|| {
        let mut all = Vec::new();
        for src in sources {
            for _ in 0..per {
                let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
                sock.bind(&SocketAddr::from((*src, 0)).into()).expect("bind");
                sock.connect_timeout(&SocketAddr::from(PEER).into(), Duration::from_secs(1))
                    .expect("connect");
                let mut s: TcpStream = sock.into();
                // A refused connection may already be closed: then it is, at once.
                let sent = s.write_all(b"GET /load HTTP/1.1\r\nHost: 10.1.0.1\r\n").is_ok();
                s.set_nonblocking(true).expect("non-blocking");
                all.push((Instant::now(), sent.then_some(s)));
            }
        }
        all
    })
}

/// When each of `conns` (non-blocking) was closed by the server, watched until all are or
/// `watch` passes (`None`: still open). A server that answered anything instead is a
/// failure.
fn watch_closed<S: Read>(conns: Vec<(Instant, Option<S>)>, watch: Duration) -> Vec<Option<Instant>> {
    let start = Instant::now();
    let mut closed: Vec<Option<Instant>> = conns.iter().map(|(at, s)| s.is_none().then_some(*at)).collect();
    let mut conns = conns;
    let mut buf = [0u8; 512];
    while closed.iter().any(Option::is_none) && start.elapsed() < watch {
        for (i, (_, s)) in conns.iter_mut().enumerate() {
            let Some(stream) = s else { continue };
            match stream.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    panic!("the server answered half a header: {:?}", String::from_utf8_lossy(&buf[..n]))
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                Err(e) => panic!("reading a slow connection: {e}"),
            }
            closed[i] = Some(Instant::now());
            *s = None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    closed
}

fn scrape(d: &Daemon, series: &str) -> Option<u64> {
    metric(&d.get("/metrics").unwrap_or_else(|e| panic!("/metrics: {e}\n{}", d.log())), series)
}

#[test]
fn listeners_slow_clients_hold_no_slot_for_long() {
    if !require("listeners_slow_clients_hold_no_slot_for_long", &[Need::Kernel]) {
        return;
    }
    let (cl, site) = local_site("lst");
    let sources: Vec<Ipv4Addr> = (0..SOURCES).map(|i| Ipv4Addr::new(10, 1, 0, 10 + i)).collect();
    for s in &sources {
        cl.add_addr("c0", &format!("{s}/24")).unwrap();
    }
    let mut d = Daemon::new(&site).unwrap();
    d.set_peer_listen(PEER.into());
    d.write_config(LOCAL_SITE).unwrap();
    d.start().unwrap();
    let open = |d: &Daemon| scrape(d, r#"anycast_listener_connections{listener="peer"}"#);
    let refused = |d: &Daemon| scrape(d, r#"anycast_listener_refused_total{listener="peer"}"#);
    assert!(
        wait::until(Duration::from_secs(10), || get_load(&site).is_ok()).is_some(),
        "/load never answered\n{}",
        d.log()
    );
    assert_eq!(refused(&d), Some(0));

    // 1. One address, more connections than the cap.
    let before = get_loads(&site, "before");
    let slow = open_slow(&cl, &[CLIENT], IDLE);
    let sent: Vec<Instant> = slow.iter().map(|(at, _)| *at).collect();
    let (closed, during, during_end) = std::thread::scope(|s| {
        let watcher = s.spawn(|| watch_closed(slow, WATCH));
        let settled = wait::until(Duration::from_secs(2), || {
            refused(&d) == Some((IDLE - PER_SOURCE) as u64) && open(&d) == Some(PER_SOURCE as u64)
        });
        assert!(
            settled.is_some(),
            "open {:?}, refused {:?}, wanted {PER_SOURCE} and {}",
            open(&d),
            refused(&d),
            IDLE - PER_SOURCE
        );
        let during = get_loads(&site, "with the slow connections open");
        let during_end = Instant::now();
        (watcher.join().unwrap(), during, during_end)
    });
    // The well-behaved requests all ran while the 8 were open.
    let (first, last) = slow_lives(&sent, &closed, PER_SOURCE, HEADER_TIMEOUT, during_end);
    assert_eq!(refused(&d), Some((IDLE - PER_SOURCE) as u64));
    assert_eq!(scrape(&d, r#"anycast_listener_refused_total{listener="metrics"}"#), Some(0));
    assert!(wait::until(Duration::from_secs(1), || open(&d) == Some(0)).is_some(), "open {:?}", open(&d));
    println!(
        "GET /load, {GETS} each: median {:.2} ms, max {:.2} ms with no slow connection; median {:.2} ms, \
         max {:.2} ms with {IDLE} opened from one address ({} closed at once, {PER_SOURCE} served); \
         those closed {:.0}..{:.0} ms after their half header",
        ms(before[GETS / 2]),
        ms(before[GETS - 1]),
        ms(during[GETS / 2]),
        ms(during[GETS - 1]),
        IDLE - PER_SOURCE,
        ms(first),
        ms(last),
    );

    // 2. Many addresses: the cap holds, whoever asks.
    let slow = open_slow(&cl, &sources, PER_SOURCE);
    let sent: Vec<Instant> = slow.iter().map(|(at, _)| *at).collect();
    let total = sources.len() * PER_SOURCE;
    let (closed, locked_out) = std::thread::scope(|s| {
        let watcher = s.spawn(|| watch_closed(slow, WATCH));
        let settled = wait::until(Duration::from_secs(1), || open(&d) == Some(CAP as u64));
        assert!(settled.is_some(), "open {:?}, wanted {CAP}", open(&d));
        let locked_out = refused_outright(&site);
        (watcher.join().unwrap(), locked_out)
    });
    locked_out.unwrap_or_else(|e| panic!("a connection past the cap: {e}"));
    let lived = lifetimes(&sent, &closed);
    let at_once = lived.iter().filter(|t| **t < AT_ONCE).count();
    assert_eq!(at_once, total - CAP, "lifetimes {lived:?}");
    assert!(lived.iter().all(|t| *t < HEADER_TIMEOUT + Duration::from_millis(1500)), "{lived:?}");
    // Phase 1's refusals, these, and the well-behaved one.
    assert_eq!(refused(&d), Some((IDLE - PER_SOURCE + total - CAP + 1) as u64));
    let after = get_loads(&site, "after the slow connections");
    println!(
        "{total} slow connections from {SOURCES} addresses: {CAP} served, {} closed at once, a well-behaved \
         client refused meanwhile; GET /load after: median {:.2} ms",
        total - CAP,
        ms(after[GETS / 2])
    );
}

/// `n` connections to the admin socket at `socket`, each sending half a request header: when
/// it was sent, and the stream (non-blocking).
fn open_slow_unix(socket: &Path, n: usize) -> Vec<(Instant, Option<UnixStream>)> {
    (0..n)
        .map(|_| {
            let mut s = UnixStream::connect(socket).expect("connect to the admin socket");
            let sent = s.write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\n").is_ok();
            s.set_nonblocking(true).expect("non-blocking");
            (Instant::now(), sent.then_some(s))
        })
        .collect()
}

/// `anycast status` through `socket` as uid and gid 65534 (nobody, nogroup).
fn status_as_nobody(socket: &Path) -> Output {
    Command::new(anycast_bin().unwrap())
        .args([OsStr::new("status"), OsStr::new("--socket"), socket.as_os_str()])
        .args([OsStr::new("--config"), OsStr::new("/nonexistent.toml")])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("anycast as nobody")
}

/// A raw `POST /plan` of `len` bytes to the admin socket: the reply's status line.
fn post_plan(socket: &Path, len: usize) -> String {
    let mut s = UnixStream::connect(socket).expect("connect to the admin socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST /plan HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\r\n").unwrap();
    // The server may answer and close before it has read it all.
    let _ = s.write_all(&vec![b'#'; len]);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).lines().next().unwrap_or_default().to_owned()
}

#[test]
fn listeners_admin_socket_bounds_a_uid_slow_headers_and_bodies() {
    if !require("listeners_admin_socket_bounds_a_uid_slow_headers_and_bodies", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("lsa");
    let mut d = Daemon::new(&site).unwrap();
    // uid 65534's primary group: a member of the socket's group.
    d.set_socket_group("nogroup");
    d.write_config(LOCAL_SITE).unwrap();
    d.start().unwrap();
    let socket = d.socket();
    let config = d.config_path();
    let status_as_root = |d: &Daemon| {
        d.cli(
            [OsStr::new("status"), OsStr::new("--config"), config.as_os_str()],
            &[],
            Duration::from_secs(30),
        )
        .expect("anycast status")
    };
    let open = |d: &Daemon| scrape(d, r#"anycast_listener_connections{listener="admin"}"#);
    let refused = |d: &Daemon| scrape(d, r#"anycast_listener_refused_total{listener="admin"}"#);
    let root = status_as_root(&d);
    assert!(root.status.success(), "{}", String::from_utf8_lossy(&root.stderr));
    assert_eq!((open(&d), refused(&d)), (Some(0), Some(0)));

    // 1. More of root's connections than a uid's share, each sending half a header.
    let slow = open_slow_unix(&socket, ADMIN_IDLE);
    let sent: Vec<Instant> = slow.iter().map(|(at, _)| *at).collect();
    let excess = (ADMIN_IDLE - ADMIN_PER_UID) as u64;
    let (closed, during_end) = std::thread::scope(|s| {
        let watcher = s.spawn(|| watch_closed(slow, ADMIN_WATCH));
        let settled = wait::until(Duration::from_secs(2), || {
            refused(&d) == Some(excess) && open(&d) == Some(ADMIN_PER_UID as u64)
        });
        assert!(
            settled.is_some(),
            "open {:?}, refused {:?}, wanted {ADMIN_PER_UID} and {excess}",
            open(&d),
            refused(&d)
        );
        let root = status_as_root(&d);
        let stderr = String::from_utf8_lossy(&root.stderr);
        assert!(
            !root.status.success() && stderr.contains("talking to the daemon"),
            "root past its share: {stderr}"
        );
        assert_eq!(refused(&d), Some(excess + 1));
        let member = status_as_nobody(&socket);
        assert!(
            member.status.success() && String::from_utf8_lossy(&member.stdout).contains("here"),
            "another uid while root holds its share: {}",
            String::from_utf8_lossy(&member.stderr)
        );
        let during_end = Instant::now();
        (watcher.join().unwrap(), during_end)
    });
    slow_lives(&sent, &closed, ADMIN_PER_UID, ADMIN_HEADER_TIMEOUT, during_end);
    assert!(wait::until(Duration::from_secs(1), || open(&d) == Some(0)).is_some(), "open {:?}", open(&d));
    let root = status_as_root(&d);
    assert!(
        root.status.success(),
        "root once its connections closed: {}",
        String::from_utf8_lossy(&root.stderr)
    );

    // 2. A body past the limit: 413, and the daemon serves on.
    let reply = post_plan(&socket, ADMIN_BODY_LIMIT + 1);
    assert!(reply.starts_with("HTTP/1.1 413"), "POST /plan of {} bytes: {reply:?}", ADMIN_BODY_LIMIT + 1);
    let big = d.dir().join("big.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    while text.len() <= ADMIN_BODY_LIMIT {
        text.push_str("# a comment that makes the file larger than the admin API takes\n");
    }
    std::fs::write(&big, text).unwrap();
    let plan = d
        .cli(
            [OsStr::new("plan"), big.as_os_str(), OsStr::new("--config"), config.as_os_str()],
            &[],
            Duration::from_secs(30),
        )
        .expect("anycast plan");
    let stderr = String::from_utf8_lossy(&plan.stderr);
    assert!(!plan.status.success() && stderr.contains("(413)"), "anycast plan of a too-large file: {stderr}");
    let root = status_as_root(&d);
    assert!(root.status.success(), "after the large bodies: {}", String::from_utf8_lossy(&root.stderr));
    assert_eq!(refused(&d), Some(excess + 1));

    // 3. A body that never completes: 408 once its time is up, the connection closed (it
    //    would otherwise hold a slot for the connection's whole bound, 130 s).
    let mut s = UnixStream::connect(&socket).expect("connect to the admin socket");
    s.set_read_timeout(Some(ADMIN_BODY_TIMEOUT * 3)).unwrap();
    let sent = Instant::now();
    write!(s, "POST /plan HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n# a start").unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let took = sent.elapsed();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "a body that never completes, after {took:?}: {reply:?}");
    assert!(
        ADMIN_BODY_TIMEOUT <= took && took <= ADMIN_BODY_TIMEOUT * 2,
        "answered after {took:?}, its time being {ADMIN_BODY_TIMEOUT:?}"
    );
    assert!(wait::until(Duration::from_secs(1), || open(&d) == Some(0)).is_some(), "open {:?}", open(&d));
}
