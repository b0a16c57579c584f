//! Sequenced UDP datagrams: a paced sender and a receiver that records which sequence
//! numbers arrived, to count the datagrams lost (and duplicated) across something done in
//! the middle of a stream (a controller restart, a reload).
//!
//! Sockets are created by the caller inside the namespaces of the topology
//! (`Netns::run(|| UdpSocket::bind(..))`); a socket keeps its namespace, so the sender and
//! the receiver can then run on any thread.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// Bytes per datagram: the sequence number (u32, big endian), then filler.
pub const PAYLOAD: usize = 64;

/// Sends datagrams 0, 1, 2, ... to one address at a steady rate until stopped or until
/// `max` are sent: bounded in count, hence in time (`max / rate`).
pub struct Sender {
    sock: UdpSocket,
    dst: SocketAddr,
    interval: Duration,
    max: u32,
    sent: AtomicU32,
    stop: AtomicBool,
    done: AtomicBool,
}

impl Sender {
    pub fn new(sock: UdpSocket, dst: SocketAddr, per_second: u32, max: u32) -> Sender {
        Sender {
            sock,
            dst,
            interval: Duration::from_secs(1) / per_second.max(1),
            max,
            sent: AtomicU32::new(0),
            stop: AtomicBool::new(false),
            done: AtomicBool::new(false),
        }
    }

    /// Sends until [`Sender::stop`] or `max`; returns how many were sent. Paced against a
    /// fixed schedule (not sleep after send), so a late wake-up is caught up and the rate
    /// holds on average.
    pub fn run(&self) -> u32 {
        /// Marks the sender done however `run` ends (a failed send panics), so that a
        /// receiver waiting for it stops.
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _done = Done(&self.done);
        let start = Instant::now();
        let mut msg = [0u8; PAYLOAD];
        let mut seq = 0;
        while seq < self.max && !self.stop.load(Ordering::Relaxed) {
            msg[..4].copy_from_slice(&seq.to_be_bytes());
            self.sock.send_to(&msg, self.dst).unwrap_or_else(|e| panic!("send #{seq} to {}: {e}", self.dst));
            seq += 1;
            self.sent.store(seq, Ordering::Release);
            if let Some(wait) = (start + self.interval * seq).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        seq
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u32 {
        self.sent.load(Ordering::Acquire)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// What a receiver got.
#[derive(Debug, Default)]
pub struct Received {
    /// `seen[n]`: datagram n arrived.
    pub seen: Vec<bool>,
    pub duplicates: u32,
    /// Datagrams that were not ours (wrong length or a number never sent).
    pub foreign: u32,
}

impl Received {
    /// Distinct sequence numbers received.
    pub fn count(&self) -> u32 {
        self.seen.iter().filter(|&&s| s).count() as u32
    }

    /// Sequence numbers below `sent` that never arrived.
    pub fn missing(&self, sent: u32) -> Vec<u32> {
        (0..sent).filter(|&n| !self.seen.get(n as usize).copied().unwrap_or(false)).collect()
    }
}

/// Room for ~10 s of a 1000/s stream in the receiving socket: a receiver thread kept off the
/// CPU for a while on a loaded machine must not lose what the network delivered (the
/// default buffer, ~200 KiB, holds ~200 ms of it), which would pass for a loss in the path.
const RECEIVE_BUFFER: libc::c_int = 16 << 20;

/// Receives `sender`'s datagrams on `sock` until the sender has finished and either all of
/// them arrived or none came for `idle`.
pub fn receive(sock: &UdpSocket, sender: &Sender, idle: Duration) -> Received {
    // SO_RCVBUFFORCE (root) is not capped by net.core.rmem_max as SO_RCVBUF is.
    // SAFETY: a valid socket fd and a pointer to a c_int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&RECEIVE_BUFFER as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    sock.set_read_timeout(Some(Duration::from_millis(50))).expect("set a read timeout");
    let mut got = Received { seen: vec![false; sender.max as usize], ..Received::default() };
    let mut buf = [0u8; 2048];
    let mut last = Instant::now();
    loop {
        match sock.recv(&mut buf) {
            Ok(len) => {
                last = Instant::now();
                let seq = (len == PAYLOAD)
                    .then(|| u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize);
                match seq.and_then(|n| got.seen.get_mut(n)) {
                    Some(seen) if *seen => got.duplicates += 1,
                    Some(seen) => *seen = true,
                    None => got.foreign += 1,
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("receive: {e}"),
        }
        if sender.done() && (got.count() == sender.sent() || last.elapsed() >= idle) {
            return got;
        }
    }
}

/// A UDP socket bound to `addr` inside `ns`.
pub fn bind(ns: &Netns, addr: &str) -> UdpSocket {
    ns.run(|| UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name()))
}

/// Sends `count` numbered datagrams from `from` to `dst` (at 5000/s, from a port of the
/// family of `dst`) while `to` receives.
pub fn send_and_receive(from: &Netns, dst: SocketAddr, to: &UdpSocket, count: u32) -> Received {
    /// How long the receiver waits for a straggler once the sender has finished.
    const IDLE: Duration = Duration::from_secs(2);
    let any = if dst.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    let sender = Sender::new(bind(from, any), dst, 5000, count);
    std::thread::scope(|s| {
        let rx = s.spawn(|| receive(to, &sender, IDLE));
        assert_eq!(sender.run(), count);
        rx.join().expect("receiver")
    })
}

/// Every one of `sent` datagrams arrived, once, and nothing else.
pub fn assert_all_arrived(got: &Received, sent: u32, what: &str) {
    let missing = got.missing(sent);
    assert!(
        missing.is_empty() && got.duplicates == 0 && got.foreign == 0,
        "{what}: {} of {sent} lost (first: {:?}), {} duplicates, {} foreign",
        missing.len(),
        &missing[..missing.len().min(20)],
        got.duplicates,
        got.foreign
    );
}
