//! The rtnetlink requests the neighbour keeper needs, on `netlink-packet-route`: the next
//! hops of a route, one neighbour entry, and the two ways of keeping one resolved.
//!
//! Requests are synchronous (the kernel answers them inline, in microseconds); the keeper
//! runs a whole sweep on a blocking thread.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, RawFd},
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage,
        NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    #[error("{what}: {source}")]
    Kernel { what: String, source: io::Error },
    #[error("{what}: undecodable answer: {detail}")]
    Decode { what: String, detail: String },
    #[error("no route to {0}")]
    NoRoute(IpAddr),
}

/// One next hop of a route: the neighbour `bpf_fib_lookup` needs resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hop {
    pub ifindex: u32,
    /// The gateway, or the destination itself when it is on the link.
    pub addr: IpAddr,
}

/// A neighbour entry as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub state: NeighbourState,
    /// NTF_EXT_MANAGED: the kernel keeps it resolved by itself (Linux ≥ 5.16).
    pub managed: bool,
}

impl Entry {
    /// NUD_VALID (include/net/neighbour.h): the states in which `bpf_fib_lookup` uses the
    /// entry's address (net/core/filter.c, `bpf_ipv4_fib_lookup`); anything else answers
    /// BPF_FIB_LKUP_RET_NO_NEIGH.
    pub fn resolved(&self) -> bool {
        matches!(
            self.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        )
    }

    /// An operator's static entry (PERMANENT or NOARP): never touched.
    pub fn is_static(&self) -> bool {
        matches!(self.state, NeighbourState::Permanent | NeighbourState::Noarp)
    }
}

/// The kernel's name of a NUD state, as `ip neigh` prints it.
pub fn state_name(state: NeighbourState) -> String {
    match state {
        NeighbourState::Incomplete => "INCOMPLETE".into(),
        NeighbourState::Reachable => "REACHABLE".into(),
        NeighbourState::Stale => "STALE".into(),
        NeighbourState::Delay => "DELAY".into(),
        NeighbourState::Probe => "PROBE".into(),
        NeighbourState::Failed => "FAILED".into(),
        NeighbourState::Noarp => "NOARP".into(),
        NeighbourState::Permanent => "PERMANENT".into(),
        NeighbourState::None => "NONE".into(),
        other => format!("{other:?}").to_uppercase(),
    }
}

/// A request/answer rtnetlink socket.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> Result<Rtnl, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(NetlinkError::Socket)?;
        // Error answers carry the kernel's sentence (NLMSGERR_ATTR_MSG) where it has one.
        let _ = socket.set_ext_ack(true);
        Ok(Rtnl { socket, seq: 0 })
    }

    /// The next hops the kernel would use towards `dst` (`ip route get fibmatch`): every
    /// path of a multipath route, since `bpf_fib_lookup` may pick any of them per flow.
    /// A route through nexthop objects is answered by the plain lookup's one path.
    pub fn route_hops(&mut self, dst: IpAddr) -> Result<Vec<Hop>, NetlinkError> {
        let what = format!("route lookup of {dst}");
        let mut hops = Vec::new();
        for fib_match in [true, false] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family(dst);
            msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
            if fib_match {
                msg.header.flags = RouteFlags::FibMatch;
            }
            msg.attributes.push(RouteAttribute::Destination(RouteAddress::from(dst)));
            let answers = match self.request(RouteNetlinkMessage::GetRoute(msg), NLM_F_REQUEST, &what) {
                Ok(a) => a,
                // ENETUNREACH / EHOSTUNREACH: no route at all.
                Err(NetlinkError::Kernel { source, .. })
                    if matches!(source.raw_os_error(), Some(libc::ENETUNREACH | libc::EHOSTUNREACH)) =>
                {
                    return Err(NetlinkError::NoRoute(dst));
                }
                Err(e) => return Err(e),
            };
            for answer in answers {
                if let RouteNetlinkMessage::NewRoute(route) = answer {
                    hops.extend(hops_of(&route, dst));
                }
            }
            if !hops.is_empty() {
                break;
            }
        }
        if hops.is_empty() {
            return Err(NetlinkError::NoRoute(dst));
        }
        hops.sort();
        hops.dedup();
        Ok(hops)
    }

    /// The neighbour entry of `hop`, if the kernel has one.
    pub fn neighbour(&mut self, hop: Hop) -> Result<Option<Entry>, NetlinkError> {
        let what = format!("neighbour {} (ifindex {})", hop.addr, hop.ifindex);
        let answers =
            match self.request(RouteNetlinkMessage::GetNeighbour(neigh_msg(hop)), NLM_F_REQUEST, &what) {
                Ok(a) => a,
                Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
        Ok(answers.into_iter().find_map(|a| match a {
            RouteNetlinkMessage::NewNeighbour(n) => Some(Entry {
                state: n.header.state,
                managed: n.attributes.iter().any(
                    |a| matches!(a, NeighbourAttribute::ExtFlags(f) if f.contains(NeighbourExtFlags::Managed)),
                ),
            }),
            _ => None,
        }))
    }

    /// Makes `hop` a managed neighbour (NTF_EXT_MANAGED, Linux ≥ 5.16): the kernel resolves
    /// it and keeps it REACHABLE by itself, without traffic, and never garbage-collects it.
    /// An existing dynamic entry keeps its state and address (`__neigh_update` with
    /// NEIGH_UPDATE_F_MANAGED changes flags only), so a resolved hop never blinks. Older
    /// kernels ignore the attribute (their parser skips types above their NDA_MAX): the
    /// caller reads the entry back to know.
    pub fn manage(&mut self, hop: Hop) -> Result<(), NetlinkError> {
        let mut msg = neigh_msg(hop);
        msg.attributes.push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        self.new_neighbour(msg, &format!("managing neighbour {} (ifindex {})", hop.addr, hop.ifindex))
    }

    /// Asks the kernel to resolve `hop` now, or to re-confirm it (NTF_USE:
    /// `neigh_event_send`, as if the stack had a packet for it); creates the entry if
    /// needed. The fallback on kernels without managed neighbours, repeated every sweep.
    pub fn refresh(&mut self, hop: Hop) -> Result<(), NetlinkError> {
        let mut msg = neigh_msg(hop);
        msg.header.flags = NeighbourFlags::Use;
        self.new_neighbour(msg, &format!("resolving neighbour {} (ifindex {})", hop.addr, hop.ifindex))
    }

    /// RTM_NEWNEIGH of `msg` with no state of its own (the kernel keeps or resolves it),
    /// creating or replacing the entry.
    fn new_neighbour(&mut self, mut msg: NeighbourMessage, what: &str) -> Result<(), NetlinkError> {
        msg.header.state = NeighbourState::None;
        self.request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            what,
        )
        .map(drop)
    }

    /// Sends one request and collects its answers up to the ACK (or the only answer of a
    /// GET), turning an error answer into [`NetlinkError::Kernel`].
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0; req.header.length as usize];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(NetlinkError::Socket)?;
        let expects_ack = flags & NLM_F_ACK != 0;
        let mut answers = Vec::new();
        loop {
            let (bytes, _) = self.socket.recv_from_full().map_err(NetlinkError::Socket)?;
            let mut offset = 0;
            while offset < bytes.len() {
                let msg: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(&bytes[offset..])
                    .map_err(|e| NetlinkError::Decode { what: what.to_owned(), detail: e.to_string() })?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            return Err(NetlinkError::Kernel { what: what.to_owned(), source: e.to_io() });
                        }
                        NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(answers),
                        NetlinkPayload::InnerMessage(m) => {
                            answers.push(m);
                            if !expects_ack {
                                return Ok(answers);
                            }
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}

/// A socket that hears every neighbour and route change of this network namespace
/// (RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE): the keeper re-checks at once
/// when an entry it keeps is deleted or fails, or a route moves, instead of at its next
/// sweep.
pub struct Changes {
    socket: Socket,
}

impl Changes {
    pub fn open() -> Result<Changes, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        for group in [libc::RTNLGRP_NEIGH, libc::RTNLGRP_IPV4_ROUTE, libc::RTNLGRP_IPV6_ROUTE] {
            socket.add_membership(group).map_err(NetlinkError::Socket)?;
        }
        socket.set_non_blocking(true).map_err(NetlinkError::Socket)?;
        Ok(Changes { socket })
    }

    /// Reads what is queued (non-blocking); `Ok(n)` with the number of messages read,
    /// `WouldBlock` when there was nothing. Overruns (ENOBUFS) count as a change: the
    /// caller re-checks everything anyway.
    pub fn drain(&self) -> io::Result<usize> {
        let mut n = 0;
        loop {
            let mut buf = vec![0u8; 16 * 1024];
            match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(_) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if n > 0 { Ok(n) } else { Err(e) };
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => n += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsRawFd for Changes {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 }
}

fn neigh_msg(hop: Hop) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(hop.addr);
    msg.header.ifindex = hop.ifindex;
    msg.attributes.push(NeighbourAttribute::Destination(match hop.addr {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }));
    msg
}

/// The next hops in one route answer: its multipath entries, or its gateway (or `dst`
/// itself, on the link) through its output interface.
fn hops_of(route: &RouteMessage, dst: IpAddr) -> Vec<Hop> {
    let gateway = |attrs: &[RouteAttribute]| {
        attrs.iter().find_map(|a| match a {
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(IpAddr::V6(*g)),
            _ => None,
        })
    };
    let multipath = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::MultiPath(paths) => Some(paths),
        _ => None,
    });
    if let Some(paths) = multipath {
        return paths
            .iter()
            .map(|p| Hop { ifindex: p.interface_index, addr: gateway(&p.attributes).unwrap_or(dst) })
            .collect();
    }
    let oif = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    });
    oif.map(|ifindex| Hop { ifindex, addr: gateway(&route.attributes).unwrap_or(dst) }).into_iter().collect()
}
