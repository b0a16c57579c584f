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
//! header with that protocol; a UDP socket bound to it sends GUE (socket2 for all of them).
//! Receiving: one raw ICMP and one raw ICMPv6 socket, registered with the runtime
//! (`AsyncFd`) and read by one task that hands each echo reply to the probe waiting for its
//! (sequence, source). The identifier and the first sequence number are random, so that
//! neither our replies can be mistaken for those of other pingers on the host nor a reply
//! be forged by someone who cannot see the requests.

use std::{
    collections::HashMap,
    io,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::{Duration, Instant},
};

use etherparse::{Icmpv4Slice, Icmpv4Type, Icmpv6Slice, Icmpv6Type, Ipv4Slice, PacketBuilder};
use socket2::{Domain, Protocol, SockAddr, SockFilter, Socket, Type};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::oneshot,
    task::JoinHandle,
};

use crate::config::Encap;

/// IP protocol numbers of the outer header (IANA): IPv4-in-IP and IPv6-in-IP.
const IPPROTO_IPIP: i32 = 4;
const IPPROTO_IPV6: i32 = 41;
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
    /// Source of the inner header, where the reply goes: our tunnel address of this family
    /// (the outer source, the sockets are bound to it), or this host's own address.
    reply_to: IpAddr,
    /// Raw socket of protocol IPIP (IPv4) or 41 (IPv6), bound to our tunnel address.
    ip: Socket,
    /// UDP socket bound to our tunnel address, any port.
    gue: Socket,
}

/// Sends probes and matches their replies; cheap to share (`Arc<Prober>`) between the
/// tasks that probe each remote site concurrently.
pub struct Prober {
    v4: Option<Senders>,
    v6: Option<Senders>,
    ident: u16,
    seq: AtomicU16,
    waiting: Arc<Waiting>,
    /// The receiving task, aborted on drop.
    receiver: JoinHandle<()>,
}

/// Two random bytes (the identifier, the first sequence number).
fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    // Without entropy the probes still work; only their guessability suffers.
    if getrandom::fill(&mut b).is_err() {
        b = (std::process::id() as u16).to_ne_bytes();
    }
    u16::from_ne_bytes(b)
}

impl Prober {
    /// Opens the sockets of each family that has a tunnel address and starts the receiving
    /// task. Sockets belong to the network namespace of the calling thread; call it within
    /// a tokio runtime (the replies are read by a task of it).
    ///
    /// `reply_to`: in a site of several hosts, this host's own address (its `peer` there),
    /// the inner source of the probes of its family: the site's tunnel address is shared by
    /// its hosts, and a reply to it would reach whichever host the routers pick.
    pub fn new(
        tunnel_v4: Option<Ipv4Addr>,
        tunnel_v6: Option<Ipv6Addr>,
        reply_to: Option<IpAddr>,
    ) -> Result<Prober> {
        let reply = |tunnel: IpAddr| reply_to.filter(|r| r.is_ipv4() == tunnel.is_ipv4()).unwrap_or(tunnel);
        let mut icmp = Vec::new();
        let v4 = match tunnel_v4 {
            Some(a) => {
                icmp.push(echo_reply_socket(false)?);
                Some(Senders::new(IpAddr::V4(a), reply(IpAddr::V4(a)))?)
            }
            None => None,
        };
        let v6 = match tunnel_v6 {
            Some(a) => {
                icmp.push(echo_reply_socket(true)?);
                Some(Senders::new(IpAddr::V6(a), reply(IpAddr::V6(a)))?)
            }
            None => None,
        };
        let ident = random_u16();
        let waiting = Arc::new(Waiting::default());
        let w = waiting.clone();
        let receiver = tokio::spawn(async move {
            if let Err(e) = receive(icmp, ident, &w).await {
                log::error!("health probes: receiving echo replies failed, probes will time out: {e}");
            }
        });
        Ok(Prober { v4, v6, ident, seq: AtomicU16::new(random_u16()), waiting, receiver })
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
        let inner = echo_request(senders.reply_to, endpoint, self.ident, seq)?;

        let (tx, rx) = oneshot::channel();
        let pending = Pending::register(&self.waiting, (seq, endpoint), tx);
        let sent = Instant::now();
        // Non-blocking sockets: a full socket buffer is an error for this probe, never a
        // blocked task. Raw sockets take port 0.
        match encap {
            Encap::Ip => senders.ip.send_to(&inner, &SockAddr::from(SocketAddr::new(endpoint, 0))),
            Encap::Gue { port } => {
                senders.gue.send_to(&inner, &SockAddr::from(SocketAddr::new(endpoint, port)))
            }
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
        self.receiver.abort();
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
    fn new(tunnel: IpAddr, reply_to: IpAddr) -> Result<Senders> {
        let (domain, proto) = match tunnel {
            IpAddr::V4(_) => (Domain::IPV4, IPPROTO_IPIP),
            IpAddr::V6(_) => (Domain::IPV6, IPPROTO_IPV6),
        };
        let bound = SockAddr::from(SocketAddr::new(tunnel, 0));
        let ip = Socket::new(domain, Type::RAW, Some(Protocol::from(proto)))
            .map_err(sock_err(format!("raw socket of protocol {proto} (needs CAP_NET_RAW)")))?;
        ip.bind(&bound).map_err(sock_err(format!("binding the protocol {proto} raw socket to {tunnel}")))?;
        // Send-only: every IPIP/IPv6-in-IP packet the stack gets (our data path decapsulates
        // those of known peers before it does) would otherwise queue here unread.
        ip.attach_filter(&DROP_ALL).map_err(sock_err("filtering the raw socket's input"))?;
        let gue = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
            .map_err(sock_err(format!("a UDP socket for {tunnel}")))?;
        gue.bind(&bound).map_err(sock_err(format!("binding a UDP socket to {tunnel}")))?;
        gue.attach_filter(&DROP_ALL).map_err(sock_err("filtering the UDP socket's input"))?;
        for s in [&ip, &gue] {
            s.set_nonblocking(true).map_err(sock_err("setting a probe socket non-blocking"))?;
        }
        Ok(Senders { reply_to, ip, gue })
    }
}

/// A classic BPF filter that accepts nothing (`ret #0`): the socket's receive queue stays
/// empty.
const DROP_ALL: [SockFilter; 1] = [SockFilter::new((libc::BPF_RET | libc::BPF_K) as u16, 0, 0, 0)];

fn sock_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ProbeError {
    let what = what.into();
    move |source| ProbeError::Socket { what, source }
}

/// `setsockopt` for the ICMP type filters, which socket2 does not offer.
fn setsockopt<T>(s: &Socket, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is valid for size_of::<T>() bytes for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// A raw ICMP (or ICMPv6) socket that receives echo replies only: the kernel filters out
/// every other type, so the host's other ICMP traffic does not wake the receiver.
fn echo_reply_socket(v6: bool) -> Result<(Socket, bool)> {
    let (domain, proto, what) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6, "ICMPv6")
    } else {
        (Domain::IPV4, Protocol::ICMPV4, "ICMP")
    };
    let s = Socket::new(domain, Type::RAW, Some(proto))
        .map_err(sock_err(format!("raw {what} socket (needs CAP_NET_RAW)")))?;
    let filtered = if v6 {
        let mut block = [u32::MAX; 8];
        block[(ICMPV6_ECHO_REPLY >> 5) as usize] &= !(1 << (ICMPV6_ECHO_REPLY & 31));
        setsockopt(&s, libc::IPPROTO_ICMPV6, ICMPV6_FILTER, &block)
    } else {
        setsockopt(&s, SOL_RAW, ICMP_FILTER, &!(1u32 << ICMP_ECHOREPLY))
    };
    filtered.map_err(sock_err(format!("filtering the raw {what} socket")))?;
    s.set_nonblocking(true).map_err(sock_err(format!("setting the raw {what} socket non-blocking")))?;
    Ok((s, v6))
}

/// The receiving task: waits until one of the ICMP sockets is readable and hands each echo
/// reply with our identifier to the probe waiting for its (sequence, source).
async fn receive(icmp: Vec<(Socket, bool)>, ident: u16, waiting: &Waiting) -> io::Result<()> {
    let fds = icmp
        .into_iter()
        .map(|(s, v6)| {
            // SAFETY: a Socket owns its descriptor for its whole life and always returns
            // that one; the AsyncFd owns the Socket.
            let fd =
                unsafe { AsyncFd::register_with_interest(s, Interest::READABLE) }.map_err(io::Error::from)?;
            Ok((fd, v6))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut buf = [MaybeUninit::<u8>::uninit(); RECV_BUF];
    loop {
        // The first socket to become readable (at most two: one per family).
        let ready = match fds.as_slice() {
            [] => return Ok(()),
            [(a, v6)] => (a.readable().await?, *v6),
            [(a, av6), (b, bv6), ..] => tokio::select! {
                r = a.readable() => (r?, *av6),
                r = b.readable() => (r?, *bv6),
            },
        };
        let (mut guard, v6) = ready;
        loop {
            match guard.try_io(|fd| fd.get_ref().recv_from(&mut buf)) {
                Ok(Ok((n, from))) => {
                    let at = Instant::now();
                    // SAFETY: recv_from initialised the first `n` bytes.
                    let packet = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
                    let (Some(source), Some((id, seq))) =
                        (from.as_socket().map(|a| a.ip()), echo_reply(packet, v6))
                    else {
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
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                // Drained: wait for the next readiness.
                Err(_would_block) => break,
            }
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
}
