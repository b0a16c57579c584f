//! Bounded traffic for the lab. UDP: a client that opens many short flows (each a new
//! socket, so a new source port, so a new flow for the data path's flow table and a new
//! Maglev pick), and a service that counts the datagrams it is served. TCP: a few
//! long-lived connections sending at a bounded rate, and a service that counts their bytes
//! and confirms the count to the client at the end. All stop on a shared flag and by
//! themselves at a deadline; the UDP client never sends more than
//! `flows/s × datagrams per flow × duration` datagrams, the TCP client more than
//! `connections × bytes/s × duration` bytes.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::lab::Netns;

/// Flows are opened in bursts every TICK so that the pacing does not depend on sleeping for
/// sub-millisecond times.
const TICK: Duration = Duration::from_millis(10);
const PAYLOAD_LEN: usize = 64;

/// What the client has sent so far, readable while it runs.
#[derive(Default)]
pub struct Sent {
    pub flows: AtomicU64,
    pub datagrams: AtomicU64,
    /// TCP bytes written, all connections together.
    pub tcp_bytes: AtomicU64,
}

/// New flows per second over time: steps `(from, flows/s)` in order of `from`, the whole
/// schedule repeating every `period`.
#[derive(Clone, Debug)]
pub struct Ramp {
    pub steps: Vec<(Duration, u32)>,
    pub period: Duration,
}

impl Ramp {
    pub fn at(&self, t: Duration) -> u32 {
        let t = Duration::from_nanos((t.as_nanos() % self.period.as_nanos().max(1)) as u64);
        self.steps.iter().take_while(|(from, _)| *from <= t).last().map_or(0, |(_, rate)| *rate)
    }

    pub fn max(&self) -> u32 {
        self.steps.iter().map(|(_, rate)| *rate).max().unwrap_or(0)
    }
}

pub struct Client {
    pub to: SocketAddr,
    pub rate: Ramp,
    pub datagrams_per_flow: u32,
    pub duration: Duration,
}

impl Client {
    /// Sends from inside `netns` until `duration` passed or `stop` is set; counts in `sent`.
    pub fn spawn(self, netns: &Netns, sent: Arc<Sent>, stop: Arc<AtomicBool>) -> JoinHandle<Result<()>> {
        netns.spawn(move || {
            let limit = u64::from(self.rate.max()) * self.duration.as_secs().max(1);
            let start = Instant::now();
            let (mut flows, mut due_f, mut last) = (0u64, 0f64, Duration::ZERO);
            let mut payload = [0u8; PAYLOAD_LEN];
            while flows < limit && start.elapsed() < self.duration && !stop.load(Ordering::Relaxed) {
                // Catch up with the schedule (the rate integrated over the time since the
                // last tick), so sleeping longer than TICK does not lower the rate.
                let now = start.elapsed();
                due_f += (now - last).as_secs_f64() * f64::from(self.rate.at(last));
                last = now;
                let due = due_f as u64;
                while flows < due.min(limit) {
                    // Port 0: the kernel picks a free ephemeral port, a new one for each
                    // flow while the previous ones are still bound or recently used.
                    let socket = UdpSocket::bind("0.0.0.0:0").context("client socket")?;
                    for seq in 0..self.datagrams_per_flow {
                        payload[..8].copy_from_slice(&flows.to_be_bytes());
                        payload[8..12].copy_from_slice(&seq.to_be_bytes());
                        socket
                            .send_to(&payload, self.to)
                            .with_context(|| format!("sending to {}", self.to))?;
                        sent.datagrams.fetch_add(1, Ordering::Relaxed);
                    }
                    flows += 1;
                    sent.flows.store(flows, Ordering::Relaxed);
                }
                thread::sleep(TICK);
            }
            Ok(())
        })
    }
}

/// A UDP service at `at` inside `netns` counting the datagrams it gets into `served`, until
/// `stop` is set or `deadline` passes. Returns once the socket is bound, so that nothing
/// sent afterwards is missed.
pub fn serve(
    netns: &Netns,
    at: SocketAddr,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    deadline: Duration,
) -> Result<JoinHandle<Result<()>>> {
    let (bound_tx, bound_rx) = mpsc::channel();
    let handle = netns.spawn(move || {
        let socket = UdpSocket::bind(at).with_context(|| format!("binding {at}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        // The receiving end may be gone if the caller gave up; counting goes on regardless.
        let _ = bound_tx.send(());
        let start = Instant::now();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) && start.elapsed() < deadline {
            match socket.recv(&mut buf) {
                Ok(_) => {
                    served.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    });
    match bound_rx.recv() {
        Ok(()) => Ok(handle),
        // The thread ended before binding: its result says why.
        Err(_) => Err(match handle.join() {
            Ok(Err(e)) => e,
            Ok(Ok(())) => anyhow!("service ended before binding {at}"),
            Err(_) => anyhow!("service thread panicked"),
        }),
    }
}

/// Bytes per TCP write.
const TCP_CHUNK: usize = 4096;
/// How long one TCP read or write may block before the connection counts as broken.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// One long-lived TCP connection, as the client saw it when it ended.
#[derive(Clone, Debug)]
pub struct TcpResult {
    /// The client's source port: the sites' services record it too.
    pub port: u16,
    /// Bytes written; the service confirmed every one of them unless `failure` says.
    pub sent: u64,
    /// Segments the client's kernel sent on it (SYN, data, ACKs, FIN, retransmissions:
    /// `tcpi_segs_out`), i.e. the packets of this connection that the data path saw.
    pub segments: u64,
    /// Why it did not complete (reset, EPIPE, short answer, timeout), if it did not.
    pub failure: Option<String>,
}

/// Long-lived TCP transfers to the VIP: `connections` at once, each at `bytes_per_sec`
/// until `duration` passed or `stop` is set; then each half-closes and waits for the
/// service's count of what it read.
pub struct TcpClient {
    pub to: SocketAddr,
    pub connections: u32,
    pub bytes_per_sec: u64,
    pub duration: Duration,
}

impl TcpClient {
    pub fn spawn(
        self,
        netns: &Netns,
        sent: Arc<Sent>,
        results: Arc<Mutex<Vec<TcpResult>>>,
        stop: Arc<AtomicBool>,
    ) -> Vec<JoinHandle<Result<()>>> {
        let interval = Duration::from_secs_f64(TCP_CHUNK as f64 / self.bytes_per_sec.max(1) as f64);
        (0..self.connections)
            .map(|_| {
                let (sent, results, stop) = (Arc::clone(&sent), Arc::clone(&results), Arc::clone(&stop));
                let (to, duration) = (self.to, self.duration);
                netns.spawn(move || {
                    let stream = TcpStream::connect_timeout(&to, TCP_TIMEOUT)
                        .with_context(|| format!("connecting to {to}"))?;
                    let result = transfer(stream, interval, duration, &sent, &stop)?;
                    results.lock().map_err(|_| anyhow!("TCP results poisoned"))?.push(result);
                    Ok(())
                })
            })
            .collect()
    }
}

fn transfer(
    mut stream: TcpStream,
    interval: Duration,
    duration: Duration,
    total: &Sent,
    stop: &AtomicBool,
) -> Result<TcpResult> {
    stream.set_write_timeout(Some(TCP_TIMEOUT))?;
    stream.set_read_timeout(Some(TCP_TIMEOUT))?;
    let port = stream.local_addr()?.port();
    let chunk = [0x5a_u8; TCP_CHUNK];
    let start = Instant::now();
    let mut sent = 0u64;
    let mut failure = None;
    while failure.is_none() && start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        let due = start + interval * u32::try_from(sent / TCP_CHUNK as u64).unwrap_or(u32::MAX);
        match due.checked_duration_since(Instant::now()) {
            Some(wait) => thread::sleep(wait.min(TICK)),
            None => match stream.write_all(&chunk) {
                Ok(()) => {
                    sent += TCP_CHUNK as u64;
                    total.tcp_bytes.fetch_add(TCP_CHUNK as u64, Ordering::Relaxed);
                }
                Err(e) => failure = Some(format!("write after {sent} bytes: {e}")),
            },
        }
    }
    if failure.is_none() {
        match finish(&mut stream) {
            Ok(count) if count == sent => {}
            Ok(count) => failure = Some(format!("the service counted {count} of {sent} bytes")),
            Err(e) => failure = Some(format!("{e:#}")),
        }
    }
    Ok(TcpResult { port, sent, segments: segments_out(&stream)?, failure })
}

/// Half-close, then the service's count (u64, big endian) and its FIN.
fn finish(stream: &mut TcpStream) -> Result<u64> {
    stream.shutdown(Shutdown::Write).context("shutdown")?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).context("reading the service's count")?;
    let mut rest = [0u8; 1];
    match stream.read(&mut rest).context("waiting for the service's FIN")? {
        0 => Ok(u64::from_be_bytes(count)),
        _ => Err(anyhow!("data after the service's count")),
    }
}

/// `tcpi_segs_out` of TCP_INFO: read after the service's FIN has been acknowledged, it
/// covers every packet the client sent on the connection.
fn segments_out(stream: &TcpStream) -> Result<u64> {
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
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("TCP_INFO");
    }
    Ok(u64::from(info.tcpi_segs_out))
}

/// What a site's TCP service counted: per client port, the bytes it read.
pub type TcpServed = Arc<Mutex<Vec<(u16, u64)>>>;

/// A TCP service at `at` inside `netns`: reads each connection to the client's FIN,
/// answers with the number of bytes read and records it in `served`; until `stop` is set
/// or `deadline` passes. Returns once listening.
pub fn serve_tcp(
    netns: &Netns,
    at: SocketAddr,
    served: TcpServed,
    stop: Arc<AtomicBool>,
    deadline: Duration,
) -> Result<JoinHandle<Result<()>>> {
    let (bound_tx, bound_rx) = mpsc::channel();
    let handle = netns.spawn(move || {
        let listener = TcpListener::bind(at).with_context(|| format!("listening on {at}"))?;
        listener.set_nonblocking(true)?;
        let _ = bound_tx.send(());
        let start = Instant::now();
        let mut connections = Vec::new();
        while !stop.load(Ordering::Relaxed) && start.elapsed() < deadline {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let (served, stop) = (Arc::clone(&served), Arc::clone(&stop));
                    connections.push(thread::spawn(move || {
                        if let Ok(bytes) = count_and_answer(stream, &stop) {
                            if let Ok(mut served) = served.lock() {
                                served.push((peer.port(), bytes));
                            }
                        }
                    }));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(TICK),
                Err(e) => return Err(e).context("accept"),
            }
        }
        for c in connections {
            let _ = c.join();
        }
        Ok(())
    });
    match bound_rx.recv() {
        Ok(()) => Ok(handle),
        Err(_) => Err(match handle.join() {
            Ok(Err(e)) => e,
            Ok(Ok(())) => anyhow!("service ended before listening on {at}"),
            Err(_) => anyhow!("service thread panicked"),
        }),
    }
}

fn count_and_answer(mut stream: TcpStream, stop: &AtomicBool) -> Result<u64> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TICK * 10))?;
    stream.set_write_timeout(Some(TCP_TIMEOUT))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut bytes = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) {
                    bail!("stopped before the client's FIN");
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    stream.write_all(&bytes.to_be_bytes())?;
    Ok(bytes)
}
