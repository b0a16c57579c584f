//! Bounded UDP traffic for the lab: a client that opens many short flows (each a new
//! socket, so a new source port, so a new flow for the data path's flow table and a new
//! Maglev pick), and a service that counts the datagrams it is served. Both stop on a shared
//! flag and by themselves at a deadline; the client never sends more than
//! `flows/s × datagrams per flow × duration` datagrams.

use std::{
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};

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
}

pub struct Client {
    pub to: SocketAddr,
    pub flows_per_sec: u32,
    pub datagrams_per_flow: u32,
    pub duration: Duration,
}

impl Client {
    /// Sends from inside `netns` until `duration` passed or `stop` is set; counts in `sent`.
    pub fn spawn(self, netns: &Netns, sent: Arc<Sent>, stop: Arc<AtomicBool>) -> JoinHandle<Result<()>> {
        netns.spawn(move || {
            let limit = u64::from(self.flows_per_sec) * self.duration.as_secs().max(1);
            let start = Instant::now();
            let mut flows = 0u64;
            let mut payload = [0u8; PAYLOAD_LEN];
            while flows < limit && start.elapsed() < self.duration && !stop.load(Ordering::Relaxed) {
                // Catch up with the schedule (rate × elapsed), so sleeping longer than TICK
                // does not lower the rate.
                let due = (start.elapsed().as_secs_f64() * f64::from(self.flows_per_sec)) as u64;
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
