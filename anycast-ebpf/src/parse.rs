//! Layers 2 to 4 (docs/datapath.md §1–§3): Ethernet and VLAN tags, the address pre-filter,
//! IPv4 (options skipped) and IPv6 (extension headers walked), fragments, TCP/UDP ports and
//! the inner packet of ICMP "too big" errors.
//!
//! Hand-rolled rather than network-types' header structs: each field is read at its offset
//! through [`Frame::at`], bounds-checked right where it is read (the only form the verifier
//! accepts at the variable offsets behind IPv4 options and IPv6 extension headers), and
//! only the fields the data path uses are read, which keeps the non-VIP path to one length
//! check, one address read and one filter lookup.

use anycast_common::{
    AddrSlot, Exception, Family, FlowKey,
    addr::{filter_index_v4, filter_index_v6},
};

use crate::{
    addrs,
    frame::Frame,
    stack::{put_v4, put_v6},
};

use anycast_common::wire::{
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ICMP_HLEN, IP_MF, IP_OFFSET, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS, IPPROTO_ROUTING, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, VLAN_HLEN,
};
pub use anycast_common::wire::{
    ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP,
    IPV4_HLEN, IPV6_HLEN, TCP_HLEN, UDP_HLEN,
};

/// Extension headers walked before giving up (§2).
const MAX_EXT_HEADERS: usize = 4;

/// Where layer 3 starts and which IP family it is.
#[derive(Clone, Copy)]
pub struct Ethernet {
    /// Length of Ethernet + VLAN tags: 14, 18 or 22.
    pub l2_len: usize,
    pub v6: bool,
}

/// A VIP or tunnel candidate, parsed and validated.
///
/// `repr(C)`, 8-byte aligned by its key: the program is built with misaligned accesses
/// allowed (for the packet, anycast-user/build.rs), and the verifier still wants every
/// stack access aligned to its size, so it is zeroed whole ([`Packet::zeroed`]: 8-byte
/// stores) rather than field by field (which LLVM merges into misaligned wider stores).
#[repr(C)]
pub struct Packet {
    /// The flow: for an ICMP too-big error, the reversed inner tuple (§3).
    pub key: FlowKey,
    pub l2_len: usize,
    /// IPv4 header length with options (IHL × 4), or 40.
    pub l3_hdr_len: usize,
    /// IP packet length: IPv4 total length, or 40 + IPv6 payload length.
    pub ip_len: usize,
    /// Offset of the L4 header (after options / extension headers).
    pub l4: usize,
    pub v6: bool,
    /// The protocol after the extension headers, of this packet (not of an ICMP error's
    /// inner packet).
    pub l4_proto: u8,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    pub fragment: bool,
    /// A TCP handshake opener: SYN without ACK (not a fragment, not an ICMP error).
    pub tcp_syn: bool,
    /// A TCP segment with FIN or RST (of this packet; not of an ICMP error's inner one).
    pub tcp_closing: bool,
    /// The key was taken from the packet quoted by an ICMP error (§3): the packet is about
    /// that flow, but it is not one of the flow's own packets (it never pins state).
    pub icmp_error: bool,
    /// The packet is itself an ICMP or ICMPv6 error message (answering it is forbidden,
    /// RFC 1122 §3.2.2, RFC 4443 §2.4(e)).
    pub is_icmp_error: bool,
}

impl Packet {
    #[inline(always)]
    pub fn zeroed() -> Packet {
        // SAFETY: every field is an integer, a bool or an array of bytes: all zeros is valid.
        unsafe { core::mem::zeroed() }
    }
}

/// The 16 bytes of `h` at `AT` (an address in a header).
#[inline(always)]
fn sub16<const AT: usize, const N: usize>(h: &[u8; N]) -> &[u8; 16] {
    const { assert!(AT + 16 <= N) };
    // SAFETY: AT + 16 <= N, checked at compile time.
    unsafe { &*h.as_ptr().add(AT).cast::<[u8; 16]>() }
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// §1: Ethernet and up to two VLAN tags. `None`: not IP (or a third tag), PASS uncounted.
#[inline(always)]
pub fn ethernet(frame: &Frame) -> Result<Option<Ethernet>, Exception> {
    let mut ethertype = frame.be16(12).ok_or(Exception::Truncated)?;
    let mut l2_len = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = frame.be16(16).ok_or(Exception::Truncated)?;
        l2_len += VLAN_HLEN;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = frame.be16(20).ok_or(Exception::Truncated)?;
            l2_len += VLAN_HLEN;
        }
    }
    Ok(match ethertype {
        ETH_P_IP => Some(Ethernet { l2_len, v6: false }),
        ETH_P_IPV6 => Some(Ethernet { l2_len, v6: true }),
        _ => None,
    })
}

/// §2: the `ADDR_FILTER` slot of the destination address (its bits, and for a VIP address
/// where its `ADDRS` entry is). This is all the host's other traffic pays: one inlined
/// array lookup.
#[inline(always)]
pub fn prefilter(frame: &Frame, eth: Ethernet) -> Result<AddrSlot, Exception> {
    let index = if eth.v6 {
        frame.at::<IPV6_HLEN>(eth.l2_len).ok_or(Exception::Truncated)?;
        filter_index_v6(frame.bytes::<16>(eth.l2_len + 24).ok_or(Exception::Truncated)?)
    } else {
        frame.at::<IPV4_HLEN>(eth.l2_len).ok_or(Exception::Truncated)?;
        filter_index_v4(frame.bytes::<4>(eth.l2_len + 16).ok_or(Exception::Truncated)?)
    };
    Ok(addrs::slot(index))
}

/// §2–§3 for a candidate: validates the IP header, finds L4 and builds the flow key.
/// Fills `pkt` in place (a Packet moved through Results costs stack copies).
#[inline(always)]
pub fn packet(frame: &Frame, eth: Ethernet, pkt: &mut Packet) -> Result<(), Exception> {
    pkt.l2_len = eth.l2_len;
    pkt.v6 = eth.v6;
    if eth.v6 { ipv6(frame, pkt) } else { ipv4(frame, pkt) }
}

#[inline(always)]
fn ipv4(frame: &Frame, pkt: &mut Packet) -> Result<(), Exception> {
    let l3 = pkt.l2_len;
    let h = frame.view::<IPV4_HLEN>(l3).ok_or(Exception::Truncated)?;
    if h[0] >> 4 != 4 {
        return Err(Exception::BadHeader);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN {
        return Err(Exception::BadHeader);
    }
    if !frame.holds(l3 + ihl) {
        return Err(Exception::Truncated);
    }
    let ip_len = be16([h[2], h[3]]) as usize;
    if ip_len < ihl || !frame.holds(l3 + ip_len) {
        return Err(Exception::BadHeader);
    }
    let frag = be16([h[6], h[7]]);
    put_v4(&mut pkt.key.src, [h[12], h[13], h[14], h[15]]);
    put_v4(&mut pkt.key.dst, [h[16], h[17], h[18], h[19]]);
    pkt.key.proto = h[9];
    pkt.key.family = Family::V4 as u8;
    pkt.l3_hdr_len = ihl;
    pkt.ip_len = ip_len;
    pkt.l4 = l3 + ihl;
    pkt.l4_proto = h[9];
    pkt.tos = h[1];
    pkt.fragment = frag & (IP_MF | IP_OFFSET) != 0;
    transport(frame, pkt)
}

#[inline(always)]
fn ipv6(frame: &Frame, pkt: &mut Packet) -> Result<(), Exception> {
    let l3 = pkt.l2_len;
    let h = frame.view::<IPV6_HLEN>(l3).ok_or(Exception::Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(Exception::BadHeader);
    }
    let ip_len = IPV6_HLEN + be16([h[4], h[5]]) as usize;
    if !frame.holds(l3 + ip_len) {
        return Err(Exception::BadHeader);
    }
    let end = l3 + ip_len;
    let mut next = h[6];
    let mut l4 = l3 + IPV6_HLEN;
    let mut fragment = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let e = frame.view::<4>(l4).ok_or(Exception::Truncated)?;
                let len = (e[1] as usize + 1) * 8;
                if l4 + len > end {
                    return Err(Exception::Truncated);
                }
                // A routing header with segments left: the VIP is not the final destination
                // (the kernel would process or drop it, RFC 8200 §4.4); not ours to steer.
                if next == IPPROTO_ROUTING && e[3] != 0 {
                    return Err(Exception::ExtHeaderLimit);
                }
                next = e[0];
                l4 += len;
            }
            IPPROTO_FRAGMENT => {
                let e = frame.view::<8>(l4).ok_or(Exception::Truncated)?;
                if l4 + 8 > end {
                    return Err(Exception::Truncated);
                }
                next = e[0];
                l4 += 8;
                // Offset in the upper 13 bits, M in bit 0. Offset 0 with M 0 is an atomic
                // fragment (RFC 6946): a whole datagram, treated as such. A real fragment
                // ends the walk: what follows is the fragmentable part, which only the first
                // fragment starts with a header, so every fragment is keyed by this Next
                // Header and none reads payload as headers.
                if be16([e[2], e[3]]) & 0xfff9 != 0 {
                    fragment = true;
                    break;
                }
            }
            _ => break,
        }
    }
    if !fragment && matches!(next, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT) {
        return Err(Exception::ExtHeaderLimit);
    }
    put_v6(&mut pkt.key.src, sub16::<8, _>(h));
    put_v6(&mut pkt.key.dst, sub16::<24, _>(h));
    pkt.key.proto = next;
    pkt.key.family = Family::V6 as u8;
    pkt.l3_hdr_len = IPV6_HLEN;
    pkt.ip_len = ip_len;
    pkt.l4 = l4;
    pkt.l4_proto = next;
    pkt.tos = (h[0] << 4) | (h[1] >> 4);
    pkt.fragment = fragment;
    transport(frame, pkt)
}

/// Checks that `len` bytes of L4 are inside the IP packet (not just the frame: Ethernet
/// padding is no header).
#[inline(always)]
fn l4_bytes<'a, const N: usize>(frame: &'a Frame, pkt: &Packet) -> Result<&'a [u8; N], Exception> {
    // Frame check first: after the IP-length check LLVM would drop it as implied, and the
    // verifier cannot follow that implication.
    let b = frame.view::<N>(pkt.l4).ok_or(Exception::Truncated)?;
    if pkt.l4 + N > pkt.l2_len + pkt.ip_len {
        return Err(Exception::Truncated);
    }
    Ok(b)
}

/// §3. A fragment is steered by its addresses alone (§2): no L4 header is read, so the
/// first fragment and the later ones (which carry none) are keyed and checked alike.
#[inline(always)]
fn transport(frame: &Frame, pkt: &mut Packet) -> Result<(), Exception> {
    if pkt.fragment {
        return Ok(());
    }
    match (pkt.l4_proto, pkt.v6) {
        (IPPROTO_TCP, _) => {
            let t = l4_bytes::<TCP_HLEN>(frame, pkt)?;
            pkt.key.sport = be16([t[0], t[1]]);
            pkt.key.dport = be16([t[2], t[3]]);
            pkt.tcp_syn = t[13] & (TCP_SYN | TCP_ACK) == TCP_SYN;
            pkt.tcp_closing = t[13] & (TCP_FIN | TCP_RST) != 0;
        }
        (IPPROTO_UDP, _) => {
            let u = l4_bytes::<UDP_HLEN>(frame, pkt)?;
            pkt.key.sport = be16([u[0], u[1]]);
            pkt.key.dport = be16([u[2], u[3]]);
        }
        (IPPROTO_ICMP, false) => {
            let i = l4_bytes::<ICMP_HLEN>(frame, pkt)?;
            // Error types: destination unreachable, source quench, redirect, time exceeded,
            // parameter problem (RFC 1122 §3.2.2).
            pkt.is_icmp_error = matches!(i[0], 3 | 4 | 5 | 11 | 12);
            // Type 3 code 4: fragmentation needed.
            if i[0] == 3 && i[1] == 4 {
                icmp_inner_v4(frame, pkt)?;
            }
        }
        (IPPROTO_ICMPV6, true) => {
            let i = l4_bytes::<ICMP_HLEN>(frame, pkt)?;
            // Types below 128 are errors (RFC 4443 §2.1).
            pkt.is_icmp_error = i[0] < 128;
            // Type 2: packet too big.
            if i[0] == 2 {
                icmp_inner_v6(frame, pkt)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The inner IPv4 header (with options) and 4 bytes of ports quoted by frag-needed. A TCP
/// or UDP inner packet re-keys `pkt` as the flow it belongs to, reversed (we sent it).
#[inline(always)]
fn icmp_inner_v4(frame: &Frame, pkt: &mut Packet) -> Result<(), Exception> {
    let inner = pkt.l4 + ICMP_HLEN;
    let end = pkt.l2_len + pkt.ip_len;
    let h = frame.view::<IPV4_HLEN>(inner).ok_or(Exception::Truncated)?;
    if inner + IPV4_HLEN > end {
        return Err(Exception::Truncated);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || ihl < IPV4_HLEN {
        return Err(Exception::BadHeader);
    }
    let ports = frame.view::<4>(inner + ihl).ok_or(Exception::Truncated)?;
    if inner + ihl + 4 > end {
        return Err(Exception::Truncated);
    }
    // A quoted non-first fragment has no ports (its "ports" are payload): ordinary ICMP.
    let quoted_later_fragment = be16([h[6], h[7]]) & IP_OFFSET != 0;
    if matches!(h[9], IPPROTO_TCP | IPPROTO_UDP) && !quoted_later_fragment {
        pkt.icmp_error = true;
        put_v4(&mut pkt.key.src, [h[16], h[17], h[18], h[19]]);
        put_v4(&mut pkt.key.dst, [h[12], h[13], h[14], h[15]]);
        pkt.key.sport = be16([ports[2], ports[3]]);
        pkt.key.dport = be16([ports[0], ports[1]]);
        pkt.key.proto = h[9];
    }
    Ok(())
}

/// Same for ICMPv6 packet-too-big: the inner IPv6 header (extension headers not walked)
/// and 4 bytes of ports.
#[inline(always)]
fn icmp_inner_v6(frame: &Frame, pkt: &mut Packet) -> Result<(), Exception> {
    let inner = pkt.l4 + ICMP_HLEN;
    let h = frame.view::<{ IPV6_HLEN + 4 }>(inner).ok_or(Exception::Truncated)?;
    if inner + IPV6_HLEN + 4 > pkt.l2_len + pkt.ip_len {
        return Err(Exception::Truncated);
    }
    if h[0] >> 4 != 6 {
        return Err(Exception::BadHeader);
    }
    if matches!(h[6], IPPROTO_TCP | IPPROTO_UDP) {
        pkt.icmp_error = true;
        put_v6(&mut pkt.key.src, sub16::<24, _>(h));
        put_v6(&mut pkt.key.dst, sub16::<8, _>(h));
        pkt.key.sport = be16([h[42], h[43]]);
        pkt.key.dport = be16([h[40], h[41]]);
        pkt.key.proto = h[6];
    }
    Ok(())
}
