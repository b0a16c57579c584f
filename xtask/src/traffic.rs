//! Bounded UDP traffic between lab namespaces: a paced sender of sequenced datagrams and a
//! receiver that counts them. Both stop on a shared flag and by themselves at a deadline,
//! and the sender never sends more than `rate × duration` datagrams.

use std::{
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};

use crate::lab::Netns;

/// Datagrams are sent in bursts every TICK so that the pacing does not depend on sleeping
/// for sub-millisecond times.
const TICK: Duration = Duration::from_millis(10);
const PAYLOAD_LEN: usize = 64;

pub struct Sender {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub rate_pps: u32,
    pub duration: Duration,
}

impl Sender {
    /// Sends from inside `netns`; returns the number of datagrams sent.
    pub fn spawn(self, netns: &Netns, stop: Arc<AtomicBool>) -> JoinHandle<Result<u64>> {
        netns.spawn(move || {
            let socket = UdpSocket::bind(self.from)?;
            let limit = u64::from(self.rate_pps) * self.duration.as_secs().max(1);
            let start = Instant::now();
            let mut sent = 0u64;
            let mut payload = [0u8; PAYLOAD_LEN];
            while sent < limit && start.elapsed() < self.duration && !stop.load(Ordering::Relaxed) {
                // Catch up with the schedule (rate × elapsed), so sleeping longer than TICK
                // does not lower the rate.
                let due = (start.elapsed().as_secs_f64() * f64::from(self.rate_pps)) as u64;
                while sent < due.min(limit) {
                    payload[..8].copy_from_slice(&sent.to_be_bytes());
                    socket.send_to(&payload, self.to)?;
                    sent += 1;
                }
                thread::sleep(TICK);
            }
            Ok(sent)
        })
    }
}

/// Counts datagrams arriving at `at` inside `netns` until `stop` is set or `deadline`
/// passes. Returns once the socket is bound, so that nothing sent afterwards is missed.
pub fn receive(
    netns: &Netns,
    at: SocketAddr,
    stop: Arc<AtomicBool>,
    deadline: Duration,
) -> Result<JoinHandle<Result<u64>>> {
    let (bound_tx, bound_rx) = mpsc::channel();
    let handle = netns.spawn(move || {
        let socket = UdpSocket::bind(at).with_context(|| format!("binding {at}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        // The receiving end may be gone if the caller gave up; counting goes on regardless.
        let _ = bound_tx.send(());
        let start = Instant::now();
        let mut received = 0u64;
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) && start.elapsed() < deadline {
            match socket.recv(&mut buf) {
                Ok(_) => received += 1,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(received)
    });
    match bound_rx.recv() {
        Ok(()) => Ok(handle),
        // The thread ended before binding: its result says why.
        Err(_) => Err(match handle.join() {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => anyhow!("receiver ended before binding {at}"),
            Err(_) => anyhow!("receiver thread panicked"),
        }),
    }
}
