//! The daemon's listeners (`[admin] listen` for `/metrics`, `[admin] peer_listen` for the
//! sibling sites' `/load`, and the Unix admin socket `[admin] socket`), served with bounds a
//! slow or hostile client cannot outlast.
//!
//! `axum::serve` sets none: no timer, so no header-read timeout, and no cap, so a client
//! that opens connections and sends half a header (a slow-loris) holds one file descriptor
//! each for as long as it likes, until the daemon cannot open a socket or a map (the
//! default soft limit is 1024). Here hyper's HTTP/1 connection is driven directly, with a
//! listener's [`Bounds`]:
//! - at most `per_source` connections from one source and `connections` in all; the next
//!   one is closed as soon as it is accepted, and counted
//!   (`anycast_listener_refused_total{listener}`). A source is an address on TCP (each
//!   sibling polls from its own address, one request at a time: one host cannot lock the
//!   others out) and the peer's uid on the admin socket (`SO_PEERCRED`: root tooling gone
//!   wrong does not lock out an operator of the socket's group, nor the other way round);
//! - `header_timeout` to send a request's header, and the next one's on a kept-alive
//!   connection (hyper's `header_read_timeout`): a slow-loris is closed after it;
//! - `connection_timeout` for the whole connection, which bounds a client that sends its
//!   header and then trickles a body or reads the reply slowly. Past it, the request in
//!   flight gets [`GRACE`] to finish, then the connection is closed.
//!
//! The admin API's request bodies are capped by its router (`server::ADMIN_BODY_LIMIT`).

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, serve::Listener};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::net::{TcpListener, UnixListener};

use super::server::COMMAND_TIMEOUT;

/// What one listener admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Connections served at once.
    pub connections: usize,
    /// Connections served at once from one [`Source`].
    pub per_source: usize,
    /// Time to send a request's whole header.
    pub header_timeout: Duration,
    /// A connection's whole life.
    pub connection_timeout: Duration,
}

/// The TCP listeners'. A scraper and a few sibling sites hold one connection at a time
/// each; two listeners at 64 stay far below the 1024 descriptors of a default soft limit,
/// which the maps, the links and the probe sockets need too. A peer or a scraper sends its
/// header in one segment; 2 s leaves room for a retransmission or two on a lossy backbone
/// (the initial RTO is 1 s). Every reply is built from published views in milliseconds and
/// the peer poller gives up after `[load] peer_timeout_ms` (≤ 60 s, 500 ms by default);
/// Prometheus's default scrape timeout is 10 s.
pub const TCP: Bounds = Bounds {
    connections: 64,
    per_source: 8,
    header_timeout: Duration::from_secs(2),
    connection_timeout: Duration::from_secs(10),
};

/// The admin socket's. The CLI makes one connection per command (`anycast top`, one per
/// refresh); 16 leave room for scripts run side by side, and a uid's 8 leave the other
/// half to another. Its header comes from a local process in one write: 5 s is for a host
/// so loaded that the CLI is not scheduled. A command may wait for the data-path owner up
/// to [`COMMAND_TIMEOUT`] (then it is answered 503): the connection lives that and 10 s.
pub const ADMIN: Bounds = Bounds {
    connections: 16,
    per_source: 8,
    header_timeout: Duration::from_secs(5),
    connection_timeout: Duration::from_secs(COMMAND_TIMEOUT.as_secs() + 10),
};

const GRACE: Duration = Duration::from_secs(1);
/// At most one log line per listener this often about refused connections (the counter
/// has them all): a flood must not flood the journal.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Whom a connection's share is counted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A TCP client's address.
    Address(IpAddr),
    /// The uid of the process on the other end of the admin socket (`None`: the kernel
    /// did not say, counted as one source).
    Uid(Option<u32>),
}

impl Source {
    /// An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d: one address.
    pub fn address(ip: IpAddr) -> Source {
        Source::Address(ip.to_canonical())
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Address(ip) => write!(f, "{ip}"),
            Source::Uid(Some(uid)) => write!(f, "uid {uid}"),
            Source::Uid(None) => write!(f, "an unknown uid"),
        }
    }
}

/// A listener whose connections [`serve`] can tell apart by [`Source`].
pub trait Sources: Listener {
    fn source(io: &Self::Io, addr: &Self::Addr) -> Source;
}

impl Sources for TcpListener {
    fn source(_: &Self::Io, addr: &Self::Addr) -> Source {
        Source::address(addr.ip())
    }
}

impl Sources for UnixListener {
    fn source(io: &Self::Io, _: &Self::Addr) -> Source {
        Source::Uid(io.peer_cred().ok().map(|c| c.uid()))
    }
}

/// One listener's admission: who holds its slots, and how many connections it refused.
pub struct Gate {
    /// `metrics`, `peer` or `admin`: the `listener` label.
    pub name: &'static str,
    pub bounds: Bounds,
    slots: Mutex<Slots>,
    refused: AtomicU64,
    warned: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Slots {
    open: usize,
    by_source: HashMap<Source, usize>,
}

/// A slot held by one connection, given back when dropped.
pub struct Admitted {
    gate: Arc<Gate>,
    source: Source,
}

impl Gate {
    pub fn new(name: &'static str, bounds: Bounds) -> Arc<Gate> {
        Arc::new(Gate {
            name,
            bounds,
            slots: Mutex::default(),
            refused: AtomicU64::new(0),
            warned: Mutex::new(None),
        })
    }

    /// A slot for a connection from `source`, or `None` (counted) when the listener or the
    /// source's share is full.
    pub fn admit(self: &Arc<Gate>, source: Source) -> Option<Admitted> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let from_source = slots.by_source.get(&source).copied().unwrap_or(0);
        if slots.open >= self.bounds.connections || from_source >= self.bounds.per_source {
            drop(slots);
            self.refused.fetch_add(1, Ordering::Relaxed);
            self.warn(source);
            return None;
        }
        slots.open += 1;
        slots.by_source.insert(source, from_source + 1);
        Some(Admitted { gate: self.clone(), source })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).open
    }

    /// Connections refused since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn warn(&self, source: Source) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *warned = Some(Instant::now());
            log::warn!(
                "{} listener: refused a connection from {source} ({} open, or {} from one source); all are \
                 counted in anycast_listener_refused_total",
                self.name,
                self.bounds.connections,
                self.bounds.per_source
            );
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut slots = self.gate.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.open -= 1;
        if let Some(n) = slots.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                slots.by_source.remove(&self.source);
            }
        }
    }
}

/// Serves `router` on `listener` within the gate's bounds, forever. Accept errors (e.g.
/// out of descriptors) are logged and retried after a pause by axum's accept loop.
pub async fn serve<L: Sources>(mut listener: L, router: Router, gate: Arc<Gate>) {
    let Bounds { header_timeout, connection_timeout, .. } = gate.bounds;
    loop {
        let (stream, addr) = listener.accept().await;
        // Refused: dropped here, so closed at once (reset if it had sent something).
        let Some(slot) = gate.admit(L::source(&stream, &addr)) else { continue };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            // The outcome (a client gone, a header timeout) is the client's business.
            if tokio::time::timeout(connection_timeout, conn.as_mut()).await.is_err() {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(GRACE, conn).await;
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Source {
        Source::address(s.parse().unwrap())
    }

    #[test]
    fn one_address_gets_its_share_and_all_get_the_cap() {
        let gate = Gate::new("peer", TCP);
        let first: Vec<Admitted> = (0..TCP.per_source).map(|_| gate.admit(ip("10.0.0.1")).unwrap()).collect();
        assert!(gate.admit(ip("10.0.0.1")).is_none(), "a ninth from one address");
        // The same address through a dual-stack listener.
        assert!(gate.admit(ip("::ffff:10.0.0.1")).is_none());
        assert_eq!(gate.refused(), 2);
        let mut others = Vec::new();
        for i in 0..(TCP.connections - TCP.per_source) {
            let source = Source::Address(IpAddr::from([10, 0, 1, (i / TCP.per_source) as u8]));
            others.push(gate.admit(source).unwrap_or_else(|| panic!("connection {i} from {source}")));
        }
        assert_eq!(gate.open(), TCP.connections);
        assert!(gate.admit(ip("10.0.2.1")).is_none(), "past the cap");
        assert_eq!(gate.refused(), 3);
        // Slots come back when connections end.
        drop(first);
        assert_eq!(gate.open(), TCP.connections - TCP.per_source);
        let again: Vec<Admitted> = (0..TCP.per_source).map(|_| gate.admit(ip("10.0.0.1")).unwrap()).collect();
        drop((again, others));
        assert_eq!(gate.open(), 0);
        assert!(gate.slots.lock().unwrap().by_source.is_empty(), "an address left behind");
    }

    #[test]
    fn a_uid_gets_its_share_of_the_admin_socket() {
        let gate = Gate::new("admin", ADMIN);
        let root: Vec<Admitted> =
            (0..ADMIN.per_source).map(|_| gate.admit(Source::Uid(Some(0))).unwrap()).collect();
        assert!(gate.admit(Source::Uid(Some(0))).is_none(), "past root's share");
        let operator: Vec<Admitted> = (0..ADMIN.connections - ADMIN.per_source)
            .map(|_| gate.admit(Source::Uid(Some(1000))).unwrap())
            .collect();
        assert!(gate.admit(Source::Uid(Some(1001))).is_none(), "past the cap");
        assert_eq!((gate.open(), gate.refused()), (ADMIN.connections, 2));
        drop((root, operator));
        assert_eq!(gate.open(), 0);
    }
}
