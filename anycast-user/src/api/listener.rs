//! The daemon's TCP listeners (`[admin] listen` for `/metrics`, `[admin] peer_listen` for
//! the sibling sites' `/load`), served with bounds a slow or hostile client cannot outlast.
//!
//! `axum::serve` sets none: no timer, so no header-read timeout, and no cap, so a client
//! that opens connections and sends half a header (a slow-loris) holds one file descriptor
//! each for as long as it likes, until the daemon cannot open a socket or a map (the
//! default soft limit is 1024). Here hyper's HTTP/1 connection is driven directly, with:
//! - at most [`MAX_PER_SOURCE`] connections from one address and [`MAX_CONNECTIONS`] in
//!   all; the next one is closed as soon as it is accepted, and counted
//!   (`anycast_listener_refused_total{listener}`). The per-address share keeps one host
//!   from locking the others out: each sibling polls from its own address, one request at
//!   a time;
//! - [`HEADER_TIMEOUT`] to send a request's header, and the next one's on a kept-alive
//!   connection (hyper's `header_read_timeout`): a slow-loris is closed after it;
//! - [`CONNECTION_TIMEOUT`] for the whole connection, which bounds a client that sends its
//!   header and then trickles a body or reads the reply slowly.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;

/// Connections served at once per listener. A scraper and a few sibling sites hold one at
/// a time each; two listeners at 64 stay far below the 1024 descriptors of a default soft
/// limit, which the maps, the links and the probe sockets need too.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections served at once from one address: a host that opens more (a misbehaving
/// client, a slow-loris) cannot take the slots of the others.
pub const MAX_PER_SOURCE: usize = 8;
/// Time to send a request's whole header. A peer or a scraper sends it in one segment; 2 s
/// leaves room for a retransmission or two on a lossy backbone (the initial RTO is 1 s).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection's whole life. Every reply here is built from published views in
/// milliseconds and the peer poller gives up after `[load] peer_timeout_ms` (≤ 60 s, 500 ms
/// by default); Prometheus's default scrape timeout is 10 s. Past it, the request in flight
/// gets [`GRACE`] to finish, then the connection is closed.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
const GRACE: Duration = Duration::from_secs(1);
/// At most one log line per listener this often about refused connections (the counter
/// has them all): a flood must not flood the journal.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// One listener's admission: who holds its slots, and how many connections it refused.
pub struct Gate {
    /// `metrics` or `peer`: the `listener` label.
    pub name: &'static str,
    slots: Mutex<Slots>,
    refused: AtomicU64,
    warned: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Slots {
    open: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// A slot held by one connection, given back when dropped.
pub struct Admitted {
    gate: Arc<Gate>,
    source: IpAddr,
}

impl Gate {
    pub fn new(name: &'static str) -> Arc<Gate> {
        Arc::new(Gate { name, slots: Mutex::default(), refused: AtomicU64::new(0), warned: Mutex::new(None) })
    }

    /// A slot for a connection from `source`, or `None` (counted) when the listener or the
    /// source's share is full.
    pub fn admit(self: &Arc<Gate>, source: IpAddr) -> Option<Admitted> {
        // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d: one address.
        let source = source.to_canonical();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let from_source = slots.by_source.get(&source).copied().unwrap_or(0);
        if slots.open >= MAX_CONNECTIONS || from_source >= MAX_PER_SOURCE {
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

    fn warn(&self, source: IpAddr) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *warned = Some(Instant::now());
            log::warn!(
                "{} listener: refused a connection from {source} ({MAX_CONNECTIONS} open, or \
                 {MAX_PER_SOURCE} from one address); all are counted in anycast_listener_refused_total",
                self.name
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

/// Serves `router` on `listener` within the bounds above, forever. Accept errors (e.g.
/// out of descriptors) are logged and retried after a pause by axum's accept loop.
pub async fn serve(mut listener: TcpListener, router: Router, gate: Arc<Gate>) {
    loop {
        let (stream, peer): (_, SocketAddr) = axum::serve::Listener::accept(&mut listener).await;
        // Refused: dropped here, so closed at once (reset if it had sent something).
        let Some(slot) = gate.admit(peer.ip()) else { continue };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            // The outcome (a client gone, a header timeout) is the client's business.
            if tokio::time::timeout(CONNECTION_TIMEOUT, conn.as_mut()).await.is_err() {
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_gets_its_share_and_all_get_the_cap() {
        let gate = Gate::new("peer");
        let first: Vec<Admitted> = (0..MAX_PER_SOURCE).map(|_| gate.admit(ip("10.0.0.1")).unwrap()).collect();
        assert!(gate.admit(ip("10.0.0.1")).is_none(), "a ninth from one address");
        // The same address through a dual-stack listener.
        assert!(gate.admit(ip("::ffff:10.0.0.1")).is_none());
        assert_eq!(gate.refused(), 2);
        let mut others = Vec::new();
        for i in 0..(MAX_CONNECTIONS - MAX_PER_SOURCE) {
            let source = IpAddr::from([10, 0, 1, (i / MAX_PER_SOURCE) as u8]);
            others.push(gate.admit(source).unwrap_or_else(|| panic!("connection {i} from {source}")));
        }
        assert_eq!(gate.open(), MAX_CONNECTIONS);
        assert!(gate.admit(ip("10.0.2.1")).is_none(), "past the cap");
        assert_eq!(gate.refused(), 3);
        // Slots come back when connections end.
        drop(first);
        assert_eq!(gate.open(), MAX_CONNECTIONS - MAX_PER_SOURCE);
        let again: Vec<Admitted> = (0..MAX_PER_SOURCE).map(|_| gate.admit(ip("10.0.0.1")).unwrap()).collect();
        drop((again, others));
        assert_eq!(gate.open(), 0);
        assert!(gate.slots.lock().unwrap().by_source.is_empty(), "an address left behind");
    }
}
