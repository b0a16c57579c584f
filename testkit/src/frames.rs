//! Whole Ethernet frames sent out of an interface of a namespace through a packet socket:
//! one crafted frame ([`PacketSocket::send`]), or a flood of them at the highest rate the
//! machine reaches ([`PacketSocket::flood`]), bounded in frames and in time.
//!
//! The socket is an `AF_PACKET` / `SOCK_RAW` socket of protocol 0 (it receives nothing),
//! bound to the interface, so that sends need no address; made inside the namespace, it can
//! be used from any thread. A flood hands the kernel [`BATCH`] frames per `sendmmsg(2)`:
//! for a small frame the system call is most of the sender's cost.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use crate::netns::{Netns, NetnsError, Result};

/// Frames per `sendmmsg(2)`.
pub const BATCH: usize = 64;

/// A packet socket bound to one interface.
pub struct PacketSocket {
    socket: OwnedFd,
}

/// What a flood sent.
#[derive(Clone, Copy, Debug)]
pub struct Flooded {
    /// Frames the kernel took (the first `sent` of those given).
    pub sent: usize,
    pub elapsed: Duration,
    /// Calls the kernel refused for want of buffer space (ENOBUFS / EAGAIN), retried.
    pub busy: u64,
}

impl Flooded {
    /// Frames per second.
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl PacketSocket {
    /// A packet socket on `ifname` of `ns`.
    pub fn open(ns: &Netns, ifname: &str) -> Result<PacketSocket> {
        let ifindex = ns.ifindex(ifname)?;
        let err = |what: &str, source| NetnsError::Io {
            ns: ns.name().to_owned(),
            what: format!("{what} on {ifname}"),
            source,
        };
        ns.run(|| {
            // SAFETY: socket(2) has no memory-safety preconditions.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            if fd < 0 {
                return Err(err("a packet socket", io::Error::last_os_error()));
            }
            // SAFETY: a descriptor the kernel just gave us, owned (and closed) from here on.
            let socket = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_ll is plain data, valid zeroed.
            let mut at: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            at.sll_family = libc::AF_PACKET as u16;
            at.sll_ifindex = ifindex as i32;
            // SAFETY: `at` is a valid sockaddr_ll of the length given, for the call.
            let rc = unsafe {
                libc::bind(
                    socket.as_raw_fd(),
                    (&at as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(err("binding a packet socket", io::Error::last_os_error()));
            }
            Ok(PacketSocket { socket })
        })
    }

    /// Sends one frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for its length, for the call.
        let sent = unsafe { libc::send(self.socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        match usize::try_from(sent) {
            Ok(n) if n == frame.len() => Ok(()),
            Ok(n) => Err(io::Error::other(format!("sent {n} of {} bytes", frame.len()))),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }

    /// Sends `frames`, in order, each once, as fast as the kernel takes them, for at most
    /// `max`.
    pub fn flood(&self, frames: &[impl AsRef<[u8]>], max: Duration) -> io::Result<Flooded> {
        let start = Instant::now();
        let (mut sent, mut busy) = (0, 0);
        // SAFETY (both): plain data, valid zeroed (no address, no control data).
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        while sent < frames.len() && start.elapsed() < max {
            let batch = &frames[sent..frames.len().min(sent + BATCH)];
            for (i, frame) in batch.iter().enumerate() {
                let frame = frame.as_ref();
                iov[i] = libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: frame.len() };
                headers[i].msg_hdr.msg_iov = &mut iov[i];
                headers[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: the first `batch.len()` headers point at iovecs that point at frames
            // of `batch`, all alive and unmoved for the call.
            let rc = unsafe {
                libc::sendmmsg(self.socket.as_raw_fd(), headers.as_mut_ptr(), batch.len() as u32, 0)
            };
            match rc {
                n if n > 0 => sent += n as usize,
                _ => {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::ENOBUFS | libc::EAGAIN) => {
                            busy += 1;
                            std::thread::yield_now();
                        }
                        _ => return Err(e),
                    }
                }
            }
        }
        Ok(Flooded { sent, elapsed: start.elapsed(), busy })
    }
}
