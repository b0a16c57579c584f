//! Test frames, built with etherparse: Ethernet with up to two VLAN tags, IPv4 (options,
//! fragments) or IPv6 (extension headers, fragments), TCP / UDP / ICMP / ICMPv6, tunnel
//! packets (IP-in-IP, GUE), Ethernet padding.
//!
//! A [`Packet`] keeps its layers as values, so that a test can both send its bytes
//! ([`Packet::frame`]) and derive what the data path must make of it (its L3 bytes, its
//! L2 header, the flow key the document defines for it: [`Packet::key`]). Malformed frames
//! are made by editing the bytes of a well-formed one ([`Packet::frame`] + [`set`] etc.).
//!
//! Addresses are given as text (`"10.0.0.1"`, `"fd00::1"`) to keep fixture tables short;
//! a typo panics at once with the address in the message.

use std::net::IpAddr;

use anycast_common::{Family, FlowKey};
use etherparse::{
    IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpFragOffset, IpNumber, Ipv4Dscp,
    Ipv4Ecn, Ipv4Header, Ipv6FlowLabel, Ipv6Header, TcpHeader, UdpHeader,
};

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_ICMPV6: u8 = 58;

/// TCP flag sets for [`tcp`].
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const PSH_ACK: u8 = 0x18;

/// The MAC of the host under test (the anchor frames' destination).
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The MAC of the router that delivers client traffic (the anchor frames' source).
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Parses an address literal; panics with the text on a typo (test input).
pub fn addr(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s:?} in a test: {e}"))
}

/// The 16-byte map form of an address (IPv4 in the first four bytes) and its family.
/// A TCP/UDP checksum with the pseudo-header of `src` → `dst` (etherparse computes it; the
/// family picks which of its two calculations applies).
fn l4_checksum<E: std::fmt::Debug>(
    src: IpAddr,
    dst: IpAddr,
    v4: impl FnOnce([u8; 4], [u8; 4]) -> Result<u16, E>,
    v6: impl FnOnce([u8; 16], [u8; 16]) -> Result<u16, E>,
) -> u16 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => v4(s.octets(), d.octets()),
        (s, d) => v6(addr16(s).0, addr16(d).0),
    }
    .unwrap_or_else(|e| panic!("checksum: {e:?}"))
}

pub fn addr16(a: IpAddr) -> ([u8; 16], Family) {
    match a {
        IpAddr::V4(v4) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&v4.octets());
            (out, Family::V4)
        }
        IpAddr::V6(v6) => (v6.octets(), Family::V6),
    }
}

/// A [`FlowKey`] as docs/datapath.md §6 defines it (host-order ports, zero padding).
pub fn flow_key(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> FlowKey {
    let (s, family) = addr16(src);
    let (d, _) = addr16(dst);
    FlowKey { src: s, dst: d, sport, dport, proto, family: family as u8, pad: [0; 2] }
}

/// Ethernet header with its VLAN tags, outermost first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L2 {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// (TPID, TCI) of each tag, outermost first.
    pub tags: Vec<(u16, u16)>,
}

impl L2 {
    /// The header's bytes with `ethertype` as the last (innermost) type field.
    pub fn bytes(&self, ethertype: u16) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header_len());
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&self.src);
        for (tpid, tci) in &self.tags {
            out.extend_from_slice(&tpid.to_be_bytes());
            out.extend_from_slice(&tci.to_be_bytes());
        }
        out.extend_from_slice(&ethertype.to_be_bytes());
        out
    }

    /// Bytes of the header: 14 + 4 per tag.
    pub fn header_len(&self) -> usize {
        14 + 4 * self.tags.len()
    }
}

impl Default for L2 {
    fn default() -> Self {
        L2 { dst: HOST_MAC, src: ROUTER_MAC, tags: Vec::new() }
    }
}

/// An IPv6 extension header for [`Packet::ext`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options (0) of (n + 1) × 8 bytes, filled with a PadN option.
    HopByHop(u8),
    /// Routing header (43) of (n + 1) × 8 bytes, segments left 0 (ignored by receivers).
    Routing(u8),
    /// Destination options (60) of (n + 1) × 8 bytes, filled with a PadN option.
    DstOpts(u8),
    /// Fragment header (44): offset in 8-byte units, M flag, identification.
    Fragment { offset: u16, more: bool, id: u32 },
}

impl Ext {
    pub fn number(self) -> u8 {
        match self {
            Ext::HopByHop(_) => 0,
            Ext::Routing(_) => 43,
            Ext::DstOpts(_) => 60,
            Ext::Fragment { .. } => 44,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop(n) | Ext::DstOpts(n) => {
                let len = (usize::from(n) + 1) * 8;
                // PadN (type 1) covering the rest of the header: a valid options area.
                let mut out = vec![next, n, 1, (len - 4) as u8];
                out.resize(len, 0);
                out
            }
            Ext::Routing(n) => {
                let len = (usize::from(n) + 1) * 8;
                // Routing type 253 (RFC 4727 experimental), segments left 0.
                let mut out = vec![next, n, 253, 0];
                out.resize(len, 0);
                out
            }
            Ext::Fragment { offset, more, id } => {
                let off = (offset << 3) | u16::from(more);
                let mut out = vec![next, 0];
                out.extend_from_slice(&off.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
                out
            }
        }
    }
}

/// The network layer.
#[derive(Clone, Debug)]
pub enum L3 {
    V4(Ipv4Header),
    V6 { header: Ipv6Header, exts: Vec<Ext> },
}

/// The transport layer (or whatever follows the IP header).
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    /// ICMP or ICMPv6 (by the packet's family): type, code, bytes 4..8, body. `about` is
    /// the flow an error message is about, already in the client → VIP direction.
    Icmp {
        typ: u8,
        code: u8,
        rest: [u8; 4],
        body: Vec<u8>,
        about: Option<FlowKey>,
    },
    /// Opaque bytes after the IP header(s): a non-first fragment, a tunnelled packet.
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

/// A frame under construction. See the module documentation.
#[derive(Clone, Debug)]
pub struct Packet {
    pub l2: L2,
    pub l3: L3,
    pub l4: L4,
    /// Whether the packet is an IP fragment (its flow key then has ports 0).
    pub fragment: bool,
    /// Ethernet padding: the frame is zero-filled up to this length.
    pub pad_to: usize,
}

fn l3_for(src: IpAddr, dst: IpAddr) -> L3 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = Ipv4Header::new(0, 64, IpNumber::TCP, s.octets(), d.octets()).expect("ipv4 header");
            h.identification = 0x1234;
            h.dont_fragment = true;
            L3::V4(h)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => L3::V6 {
            header: Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: 0,
                next_header: IpNumber::TCP,
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
            },
            exts: Vec::new(),
        },
        _ => panic!("a packet from {src} to {dst} mixes address families"),
    }
}

fn packet(src: &str, dst: &str, l4: L4) -> Packet {
    Packet { l2: L2::default(), l3: l3_for(addr(src), addr(dst)), l4, fragment: false, pad_to: 0 }
}

/// `n` bytes of recognisable payload.
pub fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A TCP segment with `flags` ([`SYN`], [`ACK`], ...) and 16 bytes of payload.
pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Packet {
    packet(src, dst, L4::Tcp { sport, dport, flags, seq: 1000, payload: payload(16) })
}

/// A UDP datagram with 18 bytes of payload.
pub fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Packet {
    packet(src, dst, L4::Udp { sport, dport, payload: payload(18) })
}

/// An ICMP echo request (ICMPv6 for IPv6 addresses).
pub fn echo(src: &str, dst: &str) -> Packet {
    let typ = if addr(src).is_ipv4() { 8 } else { 128 };
    packet(src, dst, L4::Icmp { typ, code: 0, rest: [0, 7, 0, 1], body: payload(16), about: None })
}

/// An ICMP "fragmentation needed" (IPv4, type 3 code 4) or ICMPv6 "packet too big" (type 2)
/// from `router` to `vip`, about `quoted`: a packet the VIP sent (VIP → client). It quotes
/// the IP header(s) and the first 8 bytes after them, as RFC 792 requires at least.
pub fn too_big_error(router: &str, vip: &str, mtu: u32, quoted: &Packet) -> Packet {
    let ip = quoted.ip_bytes();
    let body = ip[..quoted.l3_header_len() + 8].to_vec();
    let q = quoted.key();
    // The flow the error is about, in the client → VIP direction (§3: reversed tuple).
    let about = FlowKey { src: q.dst, dst: q.src, sport: q.dport, dport: q.sport, ..q };
    let (typ, code, rest) = if addr(router).is_ipv4() {
        (3, 4, [0, 0, (mtu >> 8) as u8, mtu as u8])
    } else {
        (2, 0, mtu.to_be_bytes())
    };
    packet(router, vip, L4::Icmp { typ, code, rest, body, about: Some(about) })
}

/// `inner` inside an outer IP header (protocol 4 for an IPv4 inner packet, 41 for IPv6),
/// the way a sibling site encapsulates (no padding of the inner packet carried over).
pub fn ip_in_ip(outer_src: &str, outer_dst: &str, inner: &Packet) -> Packet {
    let proto = if inner.is_v4() { PROTO_IPIP } else { PROTO_IPV6 };
    let mut p = packet(outer_src, outer_dst, L4::Raw { proto, bytes: inner.ip_bytes() });
    p.l2 = inner.l2.clone();
    p
}

/// `inner` as the payload of a UDP datagram (GUE variant 1).
pub fn gue(outer_src: &str, outer_dst: &str, sport: u16, dport: u16, inner: &Packet) -> Packet {
    let mut p = packet(outer_src, outer_dst, L4::Udp { sport, dport, payload: inner.ip_bytes() });
    p.l2 = inner.l2.clone();
    p
}

impl Packet {
    pub fn is_v4(&self) -> bool {
        matches!(self.l3, L3::V4(_))
    }

    /// A single 802.1Q tag with VLAN id `vid`.
    pub fn vlan(mut self, vid: u16) -> Self {
        self.l2.tags = vec![(TPID_8021Q, vid)];
        self
    }

    /// Two tags: 802.1ad `outer`, then 802.1Q `inner`.
    pub fn qinq(mut self, outer: u16, inner: u16) -> Self {
        self.l2.tags = vec![(TPID_8021AD, outer), (TPID_8021Q, inner)];
        self
    }

    /// Any stack of (TPID, TCI) tags.
    pub fn tags(mut self, tags: &[(u16, u16)]) -> Self {
        self.l2.tags = tags.to_vec();
        self
    }

    pub fn macs(mut self, dst: [u8; 6], src: [u8; 6]) -> Self {
        self.l2.dst = dst;
        self.l2.src = src;
        self
    }

    /// IPv4 options (a multiple of 4 bytes, up to 40).
    pub fn options(mut self, options: &[u8]) -> Self {
        match &mut self.l3 {
            L3::V4(h) => {
                h.options = options.try_into().expect("IPv4 options: a multiple of 4, at most 40 bytes")
            }
            L3::V6 { .. } => panic!("IPv4 options on an IPv6 packet"),
        }
        self
    }

    /// Appends an IPv6 extension header (they appear in the order added).
    pub fn ext(mut self, ext: Ext) -> Self {
        match &mut self.l3 {
            L3::V6 { exts, .. } => exts.push(ext),
            L3::V4(_) => panic!("IPv6 extension header on an IPv4 packet"),
        }
        self
    }

    /// IPv4 DF flag.
    pub fn df(mut self, df: bool) -> Self {
        if let L3::V4(h) = &mut self.l3 {
            h.dont_fragment = df;
        }
        self
    }

    /// IPv4 TOS byte / IPv6 traffic class.
    pub fn tos(mut self, tos: u8) -> Self {
        match &mut self.l3 {
            L3::V4(h) => {
                h.dscp = Ipv4Dscp::try_new(tos >> 2).expect("dscp");
                h.ecn = Ipv4Ecn::try_new(tos & 3).expect("ecn");
            }
            L3::V6 { header, .. } => header.traffic_class = tos,
        }
        self
    }

    /// Replaces the payload after the TCP/UDP/ICMP header with `n` bytes.
    pub fn payload_len(mut self, n: usize) -> Self {
        match &mut self.l4 {
            L4::Tcp { payload: p, .. } | L4::Udp { payload: p, .. } => *p = payload(n),
            L4::Icmp { body, .. } => *body = payload(n),
            L4::Raw { bytes, .. } => *bytes = payload(n),
        }
        self
    }

    /// Makes the L3 packet exactly `total` bytes long (header(s) included) by sizing the
    /// payload.
    pub fn ip_len(self, total: usize) -> Self {
        let fixed = self.ip_bytes().len() - self.payload_bytes();
        assert!(total >= fixed, "an L3 length of {total} is below the headers' {fixed}");
        self.payload_len(total - fixed)
    }

    fn payload_bytes(&self) -> usize {
        match &self.l4 {
            L4::Tcp { payload, .. } | L4::Udp { payload, .. } => payload.len(),
            L4::Icmp { body, .. } => body.len(),
            L4::Raw { bytes, .. } => bytes.len(),
        }
    }

    /// Zero-fills the frame up to `len` bytes (Ethernet padding after the IP packet).
    pub fn pad_to(mut self, len: usize) -> Self {
        self.pad_to = len;
        self
    }

    /// Keeps only the first `n` bytes of an ICMP error's body (the quoted packet).
    pub fn quote_len(mut self, n: usize) -> Self {
        if let L4::Icmp { body, .. } = &mut self.l4 {
            body.truncate(n);
        }
        self
    }

    /// Keeps only the first `n` bytes after the IP header(s) (an L4 header cut short);
    /// the IP length fields then describe the cut packet, so the frame is consistent and
    /// only the L4 header is incomplete.
    pub fn cut_l4(mut self, n: usize) -> Self {
        let mut bytes = self.l4_bytes();
        bytes.truncate(n);
        let proto = self.proto();
        self.l4 = L4::Raw { proto, bytes };
        self
    }

    /// The first fragment of this datagram: its first `units` × 8 bytes after the IP header
    /// (L4 header included), more-fragments set.
    pub fn first_fragment(self, units: u16) -> Self {
        let l4 = self.l4_bytes();
        let cut = l4[..usize::from(units) * 8].to_vec();
        self.fragment_of(0, true, cut)
    }

    /// The last fragment: everything from byte `units` × 8 after the IP header.
    pub fn last_fragment(self, units: u16) -> Self {
        let l4 = self.l4_bytes();
        let rest = l4[usize::from(units) * 8..].to_vec();
        self.fragment_of(units, false, rest)
    }

    fn fragment_of(mut self, offset: u16, more: bool, bytes: Vec<u8>) -> Self {
        let proto = self.proto();
        match &mut self.l3 {
            L3::V4(h) => {
                h.more_fragments = more;
                h.fragment_offset = IpFragOffset::try_new(offset).expect("fragment offset");
                h.dont_fragment = false;
            }
            L3::V6 { exts, .. } => exts.push(Ext::Fragment { offset, more, id: 0xcafe }),
        }
        self.l4 = L4::Raw { proto, bytes };
        self.fragment = true;
        self
    }

    /// The IP protocol after the IP header(s).
    pub fn proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => PROTO_TCP,
            L4::Udp { .. } => PROTO_UDP,
            L4::Icmp { .. } => {
                if self.is_v4() {
                    PROTO_ICMP
                } else {
                    PROTO_ICMPV6
                }
            }
            L4::Raw { proto, .. } => *proto,
        }
    }

    pub fn src(&self) -> IpAddr {
        match &self.l3 {
            L3::V4(h) => IpAddr::from(h.source),
            L3::V6 { header, .. } => IpAddr::from(header.source),
        }
    }

    pub fn dst(&self) -> IpAddr {
        match &self.l3 {
            L3::V4(h) => IpAddr::from(h.destination),
            L3::V6 { header, .. } => IpAddr::from(header.destination),
        }
    }

    /// IPv4 TOS / IPv6 traffic class.
    pub fn tos_byte(&self) -> u8 {
        match &self.l3 {
            L3::V4(h) => (h.dscp.value() << 2) | h.ecn.value(),
            L3::V6 { header, .. } => header.traffic_class,
        }
    }

    /// The flow key docs/datapath.md §6 defines for this packet: host-order ports for
    /// TCP/UDP, 0 for fragments and other protocols; an ICMP error is keyed as the flow it
    /// is about (§3).
    pub fn key(&self) -> FlowKey {
        let (sport, dport) = match &self.l4 {
            _ if self.fragment => (0, 0),
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => (*sport, *dport),
            L4::Icmp { about: Some(k), .. } => return *k,
            // Parsed frames ([`Packet::parse`]) keep TCP/UDP as bytes: ports come first.
            L4::Raw { proto: PROTO_TCP | PROTO_UDP, bytes } if bytes.len() >= 4 => {
                (u16::from_be_bytes([bytes[0], bytes[1]]), u16::from_be_bytes([bytes[2], bytes[3]]))
            }
            _ => (0, 0),
        };
        flow_key(self.src(), self.dst(), sport, dport, self.proto())
    }

    /// Length of the IP header(s): IPv4 with options, IPv6 with extension headers.
    pub fn l3_header_len(&self) -> usize {
        match &self.l3 {
            L3::V4(h) => h.header_len(),
            L3::V6 { exts, .. } => 40 + exts.iter().map(|e| e.bytes(0).len()).sum::<usize>(),
        }
    }

    /// Everything after the IP header(s), checksums computed with etherparse.
    pub fn l4_bytes(&self) -> Vec<u8> {
        let (src, dst) = (self.src(), self.dst());
        match &self.l4 {
            L4::Tcp { sport, dport, flags, seq, payload } => {
                let mut h = TcpHeader::new(*sport, *dport, *seq, 64240);
                h.syn = flags & SYN != 0;
                h.ack = flags & ACK != 0;
                h.psh = flags & 0x08 != 0;
                h.fin = flags & 0x01 != 0;
                h.rst = flags & 0x04 != 0;
                if h.ack {
                    h.acknowledgment_number = 5000;
                }
                h.checksum = l4_checksum(
                    src,
                    dst,
                    |s, d| h.calc_checksum_ipv4_raw(s, d, payload),
                    |s, d| h.calc_checksum_ipv6_raw(s, d, payload),
                );
                [h.to_bytes().as_slice(), payload].concat()
            }
            L4::Udp { sport, dport, payload } => {
                let mut h =
                    UdpHeader { source_port: *sport, destination_port: *dport, length: 0, checksum: 0 };
                h.length = (8 + payload.len()) as u16;
                h.checksum = l4_checksum(
                    src,
                    dst,
                    |s, d| h.calc_checksum_ipv4_raw(s, d, payload),
                    |s, d| h.calc_checksum_ipv6_raw(s, d, payload),
                );
                [h.to_bytes().as_slice(), payload].concat()
            }
            L4::Icmp { typ, code, rest, body, .. } => {
                let mut out = if self.is_v4() {
                    let t = match (typ, code) {
                        (8, 0) => Icmpv4Type::EchoRequest(IcmpEchoHeader::from_bytes(*rest)),
                        _ => Icmpv4Type::Unknown { type_u8: *typ, code_u8: *code, bytes5to8: *rest },
                    };
                    Icmpv4Header::with_checksum(t, body).to_bytes().to_vec()
                } else {
                    let t = Icmpv6Type::Unknown { type_u8: *typ, code_u8: *code, bytes5to8: *rest };
                    Icmpv6Header::with_checksum(t, addr16(src).0, addr16(dst).0, body)
                        .unwrap_or_else(|e| panic!("icmpv6: {e:?}"))
                        .to_bytes()
                        .to_vec()
                };
                out.extend_from_slice(body);
                out
            }
            L4::Raw { bytes, .. } => bytes.clone(),
        }
    }

    /// The IP packet: header(s) with lengths and IPv4 checksum filled in, then
    /// [`Self::l4_bytes`].
    pub fn ip_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let proto = self.proto();
        match &self.l3 {
            L3::V4(h) => {
                let mut h = h.clone();
                h.protocol = IpNumber(proto);
                h.set_payload_len(l4.len()).expect("IPv4 length");
                h.header_checksum = h.calc_header_checksum();
                let mut out = h.to_bytes().to_vec();
                out.extend_from_slice(&l4);
                out
            }
            L3::V6 { header, exts } => {
                let mut chain = Vec::new();
                for (i, e) in exts.iter().enumerate() {
                    let next = exts.get(i + 1).map_or(proto, |n| n.number());
                    chain.extend_from_slice(&e.bytes(next));
                }
                let mut h = header.clone();
                h.next_header = IpNumber(exts.first().map_or(proto, |e| e.number()));
                h.set_payload_length(chain.len() + l4.len()).expect("IPv6 length");
                let mut out = h.to_bytes().to_vec();
                out.extend_from_slice(&chain);
                out.extend_from_slice(&l4);
                out
            }
        }
    }

    pub fn ethertype(&self) -> u16 {
        if self.is_v4() { ETH_IPV4 } else { ETH_IPV6 }
    }

    /// The Ethernet header (with tags).
    pub fn l2_bytes(&self) -> Vec<u8> {
        self.l2.bytes(self.ethertype())
    }

    /// Number of padding bytes after the IP packet in [`Self::frame`].
    pub fn padding(&self) -> usize {
        self.pad_to.saturating_sub(self.l2.header_len() + self.ip_bytes().len())
    }

    /// The whole frame: Ethernet, IP packet, padding.
    pub fn frame(&self) -> Vec<u8> {
        let mut out = self.l2_bytes();
        out.extend_from_slice(&self.ip_bytes());
        out.resize(out.len().max(self.pad_to), 0);
        out
    }
}

impl Packet {
    /// A packet from the bytes of an untagged Ethernet frame carrying IPv4 (without
    /// fragmentation) or IPv6 (without extension headers), e.g. the anchor frames. What
    /// follows the IP header is kept as bytes; [`Packet::frame`] gives the input back.
    pub fn parse(frame: &[u8]) -> Packet {
        let (eth, rest) = etherparse::Ethernet2Header::from_slice(frame).expect("Ethernet header");
        let l2 = L2 { dst: eth.destination, src: eth.source, tags: Vec::new() };
        let (l3, proto, l4) = match eth.ether_type.0 {
            ETH_IPV4 => {
                let (h, rest) = Ipv4Header::from_slice(rest).expect("IPv4 header");
                assert!(!h.is_fragmenting_payload(), "Packet::parse takes no fragments");
                let len = usize::from(h.total_len) - h.header_len();
                (L3::V4(h.clone()), h.protocol.0, rest[..len].to_vec())
            }
            ETH_IPV6 => {
                let (h, rest) = Ipv6Header::from_slice(rest).expect("IPv6 header");
                let len = usize::from(h.payload_length);
                (L3::V6 { header: h.clone(), exts: Vec::new() }, h.next_header.0, rest[..len].to_vec())
            }
            t => panic!("Packet::parse: ethertype {t:#06x}"),
        };
        Packet { l2, l3, l4: L4::Raw { proto, bytes: l4 }, fragment: false, pad_to: frame.len() }
    }
}

/// An ARP request (who-has `target` tell `sender`), broadcast.
pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut out = L2 { dst: [0xff; 6], ..L2::default() }.bytes(ETH_ARP);
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    out.extend_from_slice(&ROUTER_MAC);
    out.extend_from_slice(&sender);
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&target);
    out
}

/// Overwrites `bytes.len()` bytes of `frame` at `offset`.
pub fn set(mut frame: Vec<u8>, offset: usize, bytes: &[u8]) -> Vec<u8> {
    frame[offset..offset + bytes.len()].copy_from_slice(bytes);
    frame
}

/// Cuts `frame` to its first `len` bytes.
pub fn cut(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

/// Parses a hex string (whitespace ignored), e.g. the anchor frames.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex digit"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    #[test]
    fn tcp4_parses_back() {
        let p = tcp("192.168.1.42", "10.200.1.1", 31337, 80, SYN).vlan(7).options(&[1, 1, 1, 1]);
        let f = p.frame();
        let s = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv4(ip)) = s.net else { panic!("not ipv4") };
        assert_eq!(ip.header().ihl(), 6);
        assert!(checksum::ipv4_header_ok(ip.header().slice()));
        let Some(TransportSlice::Tcp(t)) = s.transport else { panic!("not tcp") };
        assert!(t.syn());
        assert_eq!(t.destination_port(), 80);
        assert_eq!(p.key().sport, 31337);
    }

    #[test]
    fn ipv6_exts_chain() {
        let p = udp("2001:db8::1", "fd00:200::1", 1000, 53)
            .ext(Ext::HopByHop(0))
            .ext(Ext::Routing(1))
            .ext(Ext::DstOpts(0));
        let ip = p.ip_bytes();
        assert_eq!(ip[6], 0);
        assert_eq!(p.l3_header_len(), 40 + 8 + 16 + 8);
        let s = SlicedPacket::from_ip(&ip).unwrap();
        let Some(TransportSlice::Udp(u)) = s.transport else { panic!("not udp") };
        assert_eq!(u.destination_port(), 53);
    }

    #[test]
    fn fragments_split_the_datagram() {
        let d = udp("192.168.1.42", "10.200.1.1", 1000, 53).payload_len(40);
        let (a, b) = (d.clone().first_fragment(2), d.clone().last_fragment(2));
        assert_eq!(a.l4_bytes().len() + b.l4_bytes().len(), d.l4_bytes().len());
        assert_eq!(a.key(), b.key());
        assert_eq!((a.key().sport, a.key().dport), (0, 0));
        let ip = b.ip_bytes();
        assert_eq!(u16::from_be_bytes([ip[6], ip[7]]), 2); // offset 2, MF clear
    }

    #[test]
    fn too_big_keys_the_reversed_flow() {
        let sent = tcp("10.200.1.1", "192.168.1.42", 80, 31337, ACK);
        let e = too_big_error("192.168.1.254", "10.200.1.1", 1400, &sent);
        let k = e.key();
        assert_eq!((k.sport, k.dport, k.proto), (31337, 80, PROTO_TCP));
        assert_eq!(&k.src[..4], &[192, 168, 1, 42]);
        assert_eq!(e.l4_bytes().len(), 8 + 20 + 8);
    }

    #[test]
    fn parse_round_trip() {
        let f = udp("2001:db8::1", "fd00:200::1", 1000, 53).frame();
        let p = Packet::parse(&f);
        assert_eq!(p.frame(), f);
        assert_eq!(p.key(), udp("2001:db8::1", "fd00:200::1", 1000, 53).key());
    }

    #[test]
    fn padding() {
        let p = tcp("192.168.1.42", "10.200.1.1", 1, 80, ACK).payload_len(0).pad_to(60);
        assert_eq!(p.frame().len(), 60);
        assert_eq!(p.padding(), 6);
    }
}
