//! Health probes of remote sites through the data path (issue 5, "Health").
//!
//! A probe is an ICMP echo request (ICMPv6 for an IPv6 endpoint) from our tunnel address to
//! the remote site's tunnel endpoint, encapsulated the way our data path forwards to that
//! site: IPIP / IPv6-in-IPv6 for [`Encap::Ip`], a UDP datagram to the site's GUE port whose
//! payload is the inner IP packet for [`Encap::Gue`] (GUE variant 1, docs/datapath.md §5,
//! §7). The outer family is the endpoint's, and the inner family the same, so that both
//! headers carry our tunnel address of that family as source.
//!
//! The remote site's XDP program decapsulates it (only if it knows us as a tunnel peer) and
//! passes the inner echo request to its kernel, which answers with a plain echo reply to
//! our tunnel address; our XDP program passes that (no VIP, not encapsulated) and a raw
//! ICMP socket here receives it. So a reply proves the route to the site, its XDP program
//! attached and decapsulating, and its tunnel configuration knowing us. The remote data
//! path counts probes apart from data (`SiteCounters::probe_packets`): the inner
//! destination is its own tunnel address, never a VIP.
//!
//! Sending: the kernel adds the outer header. A raw socket of protocol 4 (IPIP) or 41
//! (IPv6) bound to our tunnel address sends the inner packet as the payload of an outer IP
//! header with that protocol; a UDP socket bound to it sends GUE. Receiving: one raw
//! ICMP and one raw ICMPv6 socket, read by one background thread that hands each echo
//! reply to the probe waiting for its (sequence, source); the identifier (from the pid and
//! an instance counter) tells our replies from those of other pingers on the host.

use std::{
    collections::HashMap,
    io,
    mem::{size_of, size_of_val},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use etherparse::{Icmpv4Slice, Icmpv4Type, Icmpv6Slice, Icmpv6Type, Ipv4Slice, PacketBuilder};
use tokio::sync::oneshot;

use crate::config::Encap;

/// IP protocol numbers of the outer header (IANA): IPv4-in-IP and IPv6-in-IP.
const IPPROTO_IPIP: libc::c_int = 4;
const IPPROTO_IPV6: libc::c_int = 41;
/// linux/icmp.h: `setsockopt(SOL_RAW, ICMP_FILTER, u32)`, a bit set per ICMP type to drop.
const SOL_RAW: libc::c_int = 255;
const ICMP_FILTER: libc::c_int = 1;
const ICMP_ECHOREPLY: u32 = 0;
/// linux/icmpv6.h: `setsockopt(IPPROTO_ICMPV6, ICMPV6_FILTER, [u32; 8])`, a bit set per
/// ICMPv6 type to block.
const ICMPV6_FILTER: libc::c_int = 1;
const ICMPV6_ECHO_REPLY: u32 = 129;
/// Hop limit of the inner packet: it crosses no router (the remote kernel answers it).
const INNER_TTL: u8 = 64;
/// Echo payload: says what the packet is to anyone capturing it.
const PAYLOAD: &[u8] = b"anycast health probe";
/// Largest echo reply read: ours are small, anything longer is not ours (and truncated).
const RECV_BUF: usize = 1500;

/// Makes the identifier of each Prober of a process different.
static INSTANCE: AtomicU16 = AtomicU16::new(0);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot probe {endpoint}: no IPv{family} tunnel address in [local]")]
    NoTunnelAddress { endpoint: IpAddr, family: u8 },
    #[error("cannot probe {endpoint}: GUE port 0")]
    GuePortZero { endpoint: IpAddr },
    #[error("{what}: {source}")]
    Socket { what: String, source: io::Error },
    #[error("sending a probe to {endpoint}: {source}")]
    Send { endpoint: IpAddr, source: io::Error },
    #[error("building the probe packet: {0}")]
    Build(String),
    #[error("no echo reply from {endpoint} within {timeout:?}")]
    Timeout { endpoint: IpAddr, timeout: Duration },
    #[error("the probe receiver has stopped")]
    ReceiverGone,
}

type Result<T, E = ProbeError> = std::result::Result<T, E>;

/// (sequence, reply source) → the probe waiting for it, told when its reply arrived.
type Waiting = Mutex<HashMap<(u16, IpAddr), oneshot::Sender<Instant>>>;

/// The sockets that send probes of one family.
struct Senders {
    /// Our tunnel address of this family: source of the outer and the inner header.
    tunnel: IpAddr,
    /// Raw socket of protocol IPIP (IPv4) or 41 (IPv6), bound to our tunnel address.
    ip: OwnedFd,
    /// UDP socket bound to our tunnel address, any port.
    gue: UdpSocket,
}

/// Sends probes and matches their replies; cheap to share (`Arc<Prober>`) between the
/// tasks that probe each remote site concurrently.
pub struct Prober {
    v4: Option<Senders>,
    v6: Option<Senders>,
    ident: u16,
    seq: AtomicU16,
    waiting: Arc<Waiting>,
    /// Written on drop to wake the receiver thread and let it end.
    stop: Arc<OwnedFd>,
    receiver: Option<JoinHandle<()>>,
}

impl Prober {
    /// Opens the sockets of each family that has a tunnel address and starts the receiver
    /// thread. Sockets belong to the network namespace of the calling thread.
    pub fn new(tunnel_v4: Option<Ipv4Addr>, tunnel_v6: Option<Ipv6Addr>) -> Result<Prober> {
        let mut icmp = Vec::new();
        let v4 = match tunnel_v4 {
            Some(a) => {
                icmp.push(echo_reply_socket(false)?);
                Some(Senders::new(IpAddr::V4(a))?)
            }
            None => None,
        };
        let v6 = match tunnel_v6 {
            Some(a) => {
                icmp.push(echo_reply_socket(true)?);
                Some(Senders::new(IpAddr::V6(a))?)
            }
            None => None,
        };
        // SAFETY: plain system call; the result is checked.
        let stop = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
            .map_err(sock_err("creating an eventfd"))?;
        // SAFETY: a new descriptor that nothing else owns.
        let stop = Arc::new(unsafe { OwnedFd::from_raw_fd(stop) });
        let ident = (std::process::id() as u16).wrapping_add(INSTANCE.fetch_add(1, Ordering::Relaxed) << 8);
        let waiting = Arc::new(Waiting::default());
        let receiver = {
            let (waiting, stop) = (waiting.clone(), stop.clone());
            std::thread::Builder::new()
                .name("health-probe-rx".into())
                .spawn(move || {
                    if let Err(e) = receive(&icmp, &stop, ident, &waiting) {
                        log::error!(
                            "health probes: receiving echo replies failed, probes will time out: {e}"
                        );
                    }
                })
                .map_err(sock_err("starting the probe receiver thread"))?
        };
        Ok(Prober { v4, v6, ident, seq: AtomicU16::new(0), waiting, stop, receiver: Some(receiver) })
    }

    /// Sends one probe to the site at `endpoint`, encapsulated as `encap`, and waits at
    /// most `timeout` for its echo reply. Returns the round-trip time.
    pub async fn probe(&self, endpoint: IpAddr, encap: Encap, timeout: Duration) -> Result<Duration> {
        let (senders, family) = match endpoint {
            IpAddr::V4(_) => (self.v4.as_ref(), 4),
            IpAddr::V6(_) => (self.v6.as_ref(), 6),
        };
        let senders = senders.ok_or(ProbeError::NoTunnelAddress { endpoint, family })?;
        if encap == (Encap::Gue { port: 0 }) {
            return Err(ProbeError::GuePortZero { endpoint });
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let inner = echo_request(senders.tunnel, endpoint, self.ident, seq)?;

        let (tx, rx) = oneshot::channel();
        let pending = Pending::register(&self.waiting, (seq, endpoint), tx);
        let sent = Instant::now();
        match encap {
            Encap::Ip => send_raw(&senders.ip, &inner, endpoint),
            Encap::Gue { port } => senders.gue.send_to(&inner, SocketAddr::new(endpoint, port)).map(drop),
        }
        .map_err(|source| ProbeError::Send { endpoint, source })?;
        let reply = tokio::time::timeout(timeout, rx).await;
        drop(pending);
        match reply {
            Ok(Ok(at)) => Ok(at.saturating_duration_since(sent)),
            Ok(Err(_)) => Err(ProbeError::ReceiverGone),
            Err(_) => Err(ProbeError::Timeout { endpoint, timeout }),
        }
    }
}

/// The inner packet: an echo request from `src` to `dst` (same family), checksummed.
fn echo_request(src: IpAddr, dst: IpAddr, ident: u16, seq: u16) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let written = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), INNER_TTL)
            .icmpv4_echo_request(ident, seq)
            .write(&mut buf, PAYLOAD),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), INNER_TTL)
            .icmpv6_echo_request(ident, seq)
            .write(&mut buf, PAYLOAD),
        _ => return Err(ProbeError::Build(format!("{src} and {dst} are of different families"))),
    };
    written.map_err(|e| ProbeError::Build(e.to_string()))?;
    Ok(buf)
}

impl Drop for Prober {
    fn drop(&mut self) {
        // SAFETY: writes 8 bytes to our own eventfd.
        unsafe { libc::eventfd_write(self.stop.as_raw_fd(), 1) };
        if let Some(r) = self.receiver.take() {
            let _ = r.join();
        }
    }
}

/// A probe's entry in the waiting table, removed when the probe ends whichever way (reply,
/// timeout, or its future dropped).
struct Pending<'a> {
    waiting: &'a Waiting,
    key: (u16, IpAddr),
}

impl<'a> Pending<'a> {
    fn register(waiting: &'a Waiting, key: (u16, IpAddr), tx: oneshot::Sender<Instant>) -> Pending<'a> {
        lock(waiting).insert(key, tx);
        Pending { waiting, key }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        lock(self.waiting).remove(&self.key);
    }
}

/// The table stays consistent whatever a panicking holder did (inserts and removes only).
fn lock(w: &Waiting) -> std::sync::MutexGuard<'_, HashMap<(u16, IpAddr), oneshot::Sender<Instant>>> {
    w.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Senders {
    fn new(tunnel: IpAddr) -> Result<Senders> {
        let (domain, proto) = match tunnel {
            IpAddr::V4(_) => (libc::AF_INET, IPPROTO_IPIP),
            IpAddr::V6(_) => (libc::AF_INET6, IPPROTO_IPV6),
        };
        let ip = raw_socket(domain, proto)
            .map_err(sock_err(format!("raw socket of protocol {proto} (needs CAP_NET_RAW)")))?;
        bind(&ip, tunnel)
            .map_err(sock_err(format!("binding the protocol {proto} raw socket to {tunnel}")))?;
        // Send-only: every IPIP/IPv6-in-IP packet the stack gets (our data path decapsulates
        // those of known peers before it does) would otherwise queue here unread.
        drop_all_input(&ip).map_err(sock_err("filtering the raw socket's input"))?;
        let gue = UdpSocket::bind(SocketAddr::new(tunnel, 0))
            .map_err(sock_err(format!("binding a UDP socket to {tunnel}")))?;
        gue.set_nonblocking(true).map_err(sock_err("setting the UDP socket non-blocking"))?;
        drop_all_input(&gue).map_err(sock_err("filtering the UDP socket's input"))?;
        Ok(Senders { tunnel, ip, gue })
    }
}

fn sock_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ProbeError {
    let what = what.into();
    move |source| ProbeError::Socket { what, source }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn raw_socket(domain: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain system call; the result is checked.
    let fd = cvt(unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt<T>(fd: &impl AsRawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is valid for size_of::<T>() bytes for the duration of the call.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A classic BPF filter that accepts nothing: the socket's receive queue stays empty.
fn drop_all_input(fd: &impl AsRawFd) -> io::Result<()> {
    let mut reject = [libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: 0 }];
    let prog = libc::sock_fprog { len: 1, filter: reject.as_mut_ptr() };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)
}

/// A raw ICMP (or ICMPv6) socket that receives echo replies only: the kernel filters out
/// every other type, so the host's other ICMP traffic does not wake the receiver.
fn echo_reply_socket(v6: bool) -> Result<(OwnedFd, bool)> {
    let (domain, proto, what) = if v6 {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6, "ICMPv6")
    } else {
        (libc::AF_INET, libc::IPPROTO_ICMP, "ICMP")
    };
    let fd = raw_socket(domain, proto).map_err(sock_err(format!("raw {what} socket (needs CAP_NET_RAW)")))?;
    let filtered = if v6 {
        let mut block = [u32::MAX; 8];
        block[(ICMPV6_ECHO_REPLY >> 5) as usize] &= !(1 << (ICMPV6_ECHO_REPLY & 31));
        setsockopt(&fd, libc::IPPROTO_ICMPV6, ICMPV6_FILTER, &block)
    } else {
        setsockopt(&fd, SOL_RAW, ICMP_FILTER, &!(1u32 << ICMP_ECHOREPLY))
    };
    filtered.map_err(sock_err(format!("filtering the raw {what} socket")))?;
    Ok((fd, v6))
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of_val(&sin)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of_val(&sin6)
        }
    };
    (storage, len as libc::socklen_t)
}

/// The address of a sockaddr the kernel filled in (recvfrom).
fn source_of(storage: &libc::sockaddr_storage) -> Option<IpAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in; storage is aligned for it.
            let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes())))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6; storage is aligned for it.
            let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

fn bind(fd: &OwnedFd, addr: IpAddr) -> io::Result<()> {
    let (sa, len) = sockaddr(SocketAddr::new(addr, 0));
    // SAFETY: `sa` is a valid sockaddr of `len` bytes.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_storage).cast(), len) }).map(drop)
}

/// Sends `packet` as the payload of an outer IP header to `to` (raw sockets: port 0).
fn send_raw(fd: &OwnedFd, packet: &[u8], to: IpAddr) -> io::Result<()> {
    let (sa, len) = sockaddr(SocketAddr::new(to, 0));
    // SAFETY: `packet` and `sa` are valid for the lengths given; MSG_DONTWAIT: a full
    // socket buffer is an error for this probe, never a blocked task.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            libc::MSG_DONTWAIT,
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The receiver thread: waits on the ICMP sockets and `stop`, and hands each echo reply
/// with our identifier to the probe waiting for its (sequence, source).
fn receive(icmp: &[(OwnedFd, bool)], stop: &OwnedFd, ident: u16, waiting: &Waiting) -> io::Result<()> {
    let mut fds: Vec<libc::pollfd> = icmp
        .iter()
        .map(|(fd, _)| fd.as_raw_fd())
        .chain([stop.as_raw_fd()])
        .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
        .collect();
    let mut buf = [0u8; RECV_BUF];
    loop {
        // SAFETY: `fds` is a valid array of fds.len() pollfd.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds.last().is_some_and(|p| p.revents != 0) {
            return Ok(());
        }
        for (p, (fd, v6)) in fds.iter().zip(icmp) {
            if p.revents != 0 {
                drain(fd.as_raw_fd(), *v6, &mut buf, ident, waiting)?;
            }
        }
    }
}

/// Reads every queued packet of one ICMP socket.
fn drain(fd: RawFd, v6: bool, buf: &mut [u8], ident: u16, waiting: &Waiting) -> io::Result<()> {
    loop {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = size_of_val(&from) as libc::socklen_t;
        // SAFETY: `buf` and `from` are valid for the lengths given.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut from as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(()),
                io::ErrorKind::Interrupted => continue,
                _ => Err(e),
            };
        }
        let at = Instant::now();
        let (Some(source), Some((id, seq))) = (source_of(&from), echo_reply(&buf[..n as usize], v6)) else {
            continue;
        };
        if id != ident {
            continue;
        }
        if let Some(tx) = lock(waiting).remove(&(seq, source)) {
            // The probe may have timed out in between: nobody to tell then.
            let _ = tx.send(at);
        }
    }
}

/// (identifier, sequence) of an echo reply: a raw ICMP socket reads the IPv4 header too, a
/// raw ICMPv6 socket only the ICMPv6 message (RFC 3542 §3).
fn echo_reply(packet: &[u8], v6: bool) -> Option<(u16, u16)> {
    if v6 {
        match Icmpv6Slice::from_slice(packet).ok()?.icmp_type() {
            Icmpv6Type::EchoReply(h) => Some((h.id, h.seq)),
            _ => None,
        }
    } else {
        let ip = Ipv4Slice::from_slice(packet).ok()?;
        match Icmpv4Slice::from_slice(ip.payload().payload).ok()?.icmp_type() {
            Icmpv4Type::EchoReply(h) => Some((h.id, h.seq)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_echo_reply_parsing() {
        let b = PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64).icmpv4_echo_reply(0x1234, 7);
        let mut v4 = Vec::new();
        b.write(&mut v4, PAYLOAD).unwrap();
        assert_eq!(echo_reply(&v4, false), Some((0x1234, 7)));
        let req = PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64).icmpv4_echo_request(0x1234, 7);
        let mut r = Vec::new();
        req.write(&mut r, PAYLOAD).unwrap();
        assert_eq!(echo_reply(&r, false), None, "an echo request is not a reply");
        // ICMPv6 as the raw socket hands it over: no IPv6 header.
        let src = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets();
        let dst = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets();
        let b6 = PacketBuilder::ipv6(src, dst, 64).icmpv6_echo_reply(0xbeef, 65535);
        let mut v6 = Vec::new();
        b6.write(&mut v6, PAYLOAD).unwrap();
        assert_eq!(echo_reply(&v6[40..], true), Some((0xbeef, 65535)));
        assert_eq!(echo_reply(&v6[40..44], true), None, "truncated");
    }

    #[test]
    fn probe_sockaddr_round_trip() {
        for a in ["10.1.2.3:0", "[fd00::7]:0"] {
            let addr: SocketAddr = a.parse().unwrap();
            let (sa, _) = sockaddr(addr);
            assert_eq!(source_of(&sa), Some(addr.ip()));
        }
    }
}
