//! Long-lived TCP transfers through a topology (tests and the lab): a sink service on the VIP that counts the
//! bytes of every connection, and a client that holds connections open while it sends at
//! a bounded rate for a bounded time, then checks that the far end got every byte.
//!
//! A connection ends like this: the client half-closes (FIN), the sink answers with the
//! number of bytes it read (u64, big endian) and closes, the client reads that number and
//! the end of the stream. So "acknowledged" is what the service itself received, not only
//! what the peer's kernel acknowledged, and a connection that was reset anywhere (RST from
//! a site that never saw its SYN, a broken path) cannot pass for a completed one.
//!
//! Sockets are made inside the namespaces (a socket keeps its namespace) and then used
//! from any thread. Every wait has a timeout, every loop a stop flag and a deadline.

use std::{
    io::{self, ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::Netns;

/// Bytes per write.
pub const CHUNK: usize = 4096;
/// How long one read or write may block: far above any delay of a working path, short
/// enough that a broken one fails the test quickly.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the sink's threads look at their stop flag (a thread per connection, and
/// tests with over a thousand connections).
const POLL: Duration = Duration::from_millis(200);
/// How often the sink accepts: often enough that the listen backlog never fills up.
const ACCEPT_POLL: Duration = Duration::from_millis(5);

/// How a connection ended, seen from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every byte sent was counted by the service, and both sides closed cleanly.
    Completed,
    /// Anything else: ECONNRESET, EPIPE, a short or missing answer, a timeout, a count
    /// that differs from what was sent. The reason says which.
    Reset(String),
}

/// One connection's figures, from the client.
#[derive(Clone, Debug)]
pub struct Report {
    /// The client's address (the flow's source).
    pub local: SocketAddr,
    /// Bytes written.
    pub sent: u64,
    /// Bytes the service says it read (0 when it could not say).
    pub acknowledged: u64,
    /// Segments the client's kernel sent on it (SYN, data, ACKs, FIN, retransmissions:
    /// `tcpi_segs_out`), i.e. the packets of this connection that the data path saw; read
    /// after the service's FIN, so complete for a completed connection.
    pub segments: u64,
    pub outcome: Outcome,
}

impl Report {
    pub fn reset(&self) -> bool {
        self.outcome != Outcome::Completed
    }
}

/// What the sink saw of one connection.
#[derive(Clone, Debug)]
pub struct Served {
    pub peer: SocketAddr,
    pub bytes: u64,
    /// Read to the client's FIN and answered; false if the connection broke.
    pub clean: bool,
}

/// A TCP sink on `addr` inside a namespace, until dropped.
pub struct Sink {
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<Served>>>,
    /// Connections accepted and not ended yet.
    open: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    pub fn start(ns: &Netns, addr: SocketAddr) -> io::Result<Sink> {
        let listener = ns.run(|| TcpListener::bind(addr))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let served: Arc<Mutex<Vec<Served>>> = Arc::default();
        let open = Arc::new(AtomicUsize::new(0));
        let (st, sv, op) = (stop.clone(), served.clone(), open.clone());
        let thread = thread::spawn(move || {
            let mut connections = Vec::new();
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let (st, sv, op) = (st.clone(), sv.clone(), op.clone());
                        op.fetch_add(1, Ordering::Relaxed);
                        connections.push(thread::spawn(move || {
                            let (bytes, clean) = drain(stream, &st);
                            sv.lock().unwrap().push(Served { peer, bytes, clean });
                            op.fetch_sub(1, Ordering::Relaxed);
                        }));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
                    Err(e) => {
                        eprintln!("tcp sink on {addr}: accept: {e}");
                        break;
                    }
                }
            }
            for c in connections {
                let _ = c.join();
            }
        });
        Ok(Sink { stop, served, open, thread: Some(thread) })
    }

    /// The connections that have ended so far.
    pub fn served(&self) -> Vec<Served> {
        self.served.lock().unwrap().clone()
    }

    /// The connections accepted that have not ended yet.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The connections that have ended, once there are `n` of them or after [`IO_TIMEOUT`]
    /// (a connection thread records its figures just after it answered the client).
    pub fn wait_served(&self, n: usize) -> Vec<Served> {
        let deadline = Instant::now() + IO_TIMEOUT;
        while self.served.lock().unwrap().len() < n && Instant::now() < deadline {
            thread::sleep(POLL / 5);
        }
        self.served()
    }
}

/// Reads to EOF counting bytes, then answers with the count. Returns (bytes, clean).
fn drain(mut stream: TcpStream, stop: &AtomicBool) -> (u64, bool) {
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    if stream.set_nonblocking(false).and_then(|()| stream.set_read_timeout(Some(POLL))).is_err() {
        return (0, false);
    }
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) {
                    return (bytes, false);
                }
            }
            Err(_) => return (bytes, false),
        }
    }
    let answered =
        stream.set_write_timeout(Some(IO_TIMEOUT)).and_then(|()| stream.write_all(&bytes.to_be_bytes()));
    (bytes, answered.is_ok())
}

/// One open client connection.
pub struct Connection {
    stream: TcpStream,
    local: SocketAddr,
    sent: u64,
    /// The first write error, if any: the connection is then done for.
    failed: Option<String>,
}

impl Connection {
    /// Connects from `from` (port 0: an ephemeral one) to `to`, inside `ns`.
    pub fn open(ns: &Netns, from: SocketAddr, to: SocketAddr) -> io::Result<Connection> {
        let stream = ns.run(|| -> io::Result<TcpStream> {
            let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.bind(&SockAddr::from(from))?;
            socket.connect_timeout(&SockAddr::from(to), IO_TIMEOUT)?;
            Ok(socket.into())
        })?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        Ok(Connection { stream, local, sent: 0, failed: None })
    }

    /// Writes `len` bytes (unless an earlier write failed). Blocks at most [`IO_TIMEOUT`]
    /// per chunk.
    pub fn send(&mut self, len: usize) {
        let chunk = [0x5a_u8; CHUNK];
        let mut left = len;
        while left > 0 && self.failed.is_none() {
            let n = left.min(CHUNK);
            match self.stream.write_all(&chunk[..n]) {
                Ok(()) => {
                    self.sent += n as u64;
                    left -= n;
                }
                Err(e) => self.failed = Some(format!("write after {} bytes: {e}", self.sent)),
            }
        }
    }

    /// Half-closes, reads the service's count and the end of the stream.
    pub fn finish(mut self) -> Report {
        let mut acknowledged = 0;
        let outcome = match self.failed.take() {
            Some(reason) => Outcome::Reset(reason),
            None => match self.close() {
                Ok(count) => {
                    acknowledged = count;
                    match count == self.sent {
                        true => Outcome::Completed,
                        false => {
                            Outcome::Reset(format!("the service counted {count} of {} bytes", self.sent))
                        }
                    }
                }
                Err(e) => Outcome::Reset(e),
            },
        };
        let segments = segments_out(&self.stream).unwrap_or(0);
        Report { local: self.local, sent: self.sent, acknowledged, segments, outcome }
    }

    fn close(&mut self) -> Result<u64, String> {
        self.stream.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
        let mut count = [0u8; 8];
        self.stream.read_exact(&mut count).map_err(|e| format!("reading the service's count: {e}"))?;
        let mut rest = [0u8; 1];
        match self.stream.read(&mut rest) {
            Ok(0) => Ok(u64::from_be_bytes(count)),
            Ok(_) => Err("more than the count after the count".to_owned()),
            Err(e) => Err(format!("waiting for the service's FIN: {e}")),
        }
    }
}

/// `tcpi_segs_out` of TCP_INFO.
fn segments_out(stream: &TcpStream) -> io::Result<u64> {
    // SAFETY: tcp_info is plain data, valid zeroed.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of `len` bytes the kernel fills.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    match rc {
        0 => Ok(u64::from(info.tcpi_segs_out)),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Sends on every connection, each at `bytes_per_sec` in [`CHUNK`]s, until `stop` is set or
/// `max` has passed, then finishes them all: one thread per connection.
pub fn transfer(
    connections: Vec<Connection>,
    bytes_per_sec: u64,
    max: Duration,
    stop: &AtomicBool,
) -> Vec<Report> {
    let interval = Duration::from_secs_f64(CHUNK as f64 / bytes_per_sec.max(1) as f64);
    thread::scope(|s| {
        let threads: Vec<_> = connections
            .into_iter()
            .map(|mut c| {
                s.spawn(move || {
                    let start = Instant::now();
                    let mut chunks = 0u32;
                    while !stop.load(Ordering::Relaxed) && start.elapsed() < max && c.failed.is_none() {
                        // A fixed schedule: a late wake-up is caught up, the rate holds.
                        match (start + interval * chunks).checked_duration_since(Instant::now()) {
                            Some(wait) => thread::sleep(wait.min(POLL)),
                            None => {
                                c.send(CHUNK);
                                chunks += 1;
                            }
                        }
                    }
                    c.finish()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("connection thread")).collect()
    })
}

/// Connections that did not complete, for a failure message.
pub fn resets(reports: &[Report]) -> Vec<&Report> {
    reports.iter().filter(|r| r.reset()).collect()
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
