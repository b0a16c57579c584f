//! Expected output frames, built from the rules of docs/datapath.md (cited per function)
//! and the input [`Packet`], never from the program's output. Checksums come from
//! [`crate::checksum`], independent of the code under test.

use std::net::IpAddr;

use crate::{
    checksum,
    packet::{
        ETH_IPV4, ETH_IPV6, L2, L4, PROTO_ICMP, PROTO_ICMPV6, PROTO_IPIP, PROTO_IPV6, PROTO_UDP, Packet,
        addr16,
    },
    reference::{self, KEY},
};

/// What `bpf_fib_lookup` and the site entry give the encapsulation: the egress MACs, our
/// tunnel address, the site's endpoint and, for GUE, its port.
#[derive(Clone, Copy, Debug)]
pub struct Tunnel {
    /// Source MAC: the egress interface's.
    pub smac: [u8; 6],
    /// Destination MAC: the next hop's (neighbour entry).
    pub dmac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `Some(port)` for GUE.
    pub gue_port: Option<u16>,
}

impl Tunnel {
    /// Bytes the encapsulation adds (§7): 20 (IPv4) or 40 (IPv6), + 8 for GUE.
    pub fn overhead(&self) -> usize {
        let ip = if self.dst.is_ipv4() { 20 } else { 40 };
        ip + if self.gue_port.is_some() { 8 } else { 0 }
    }
}

/// §7 "Encapsulation": `p` as the data path forwards it through `t`.
pub fn encapsulated(p: &Packet, t: &Tunnel) -> Vec<u8> {
    let inner = p.ip_bytes();
    let hash = reference::flow_hash(&p.key(), &KEY);
    let (proto, body) = match t.gue_port {
        Some(port) => {
            // GUE: UDP source port from the hash, length 8 + inner, checksum 0.
            let sport = reference::gue_source_port(hash);
            let mut b = Vec::with_capacity(8 + inner.len());
            b.extend_from_slice(&sport.to_be_bytes());
            b.extend_from_slice(&port.to_be_bytes());
            b.extend_from_slice(&((8 + inner.len()) as u16).to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&inner);
            (PROTO_UDP, b)
        }
        None => (if p.is_v4() { PROTO_IPIP } else { PROTO_IPV6 }, inner),
    };
    let tos = p.tos_byte();
    let (src, _) = addr16(t.src);
    let (dst, _) = addr16(t.dst);
    let (ethertype, outer) = if t.dst.is_ipv4() {
        // 0x45, TOS, total length, id 0, DF, TTL 64, protocol, checksum, src, dst.
        let total = (20 + body.len()) as u16;
        let mut h = vec![0x45, tos];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0x40, 0x00, 64, proto, 0, 0]);
        h.extend_from_slice(&src[..4]);
        h.extend_from_slice(&dst[..4]);
        let c = checksum::ipv4_header(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        (ETH_IPV4, h)
    } else {
        // Version 6, traffic class, flow label from the hash, payload length, next header,
        // hop limit 64.
        let label = reference::flow_label(hash);
        let word = (6u32 << 28) | (u32::from(tos) << 20) | label;
        let mut h = word.to_be_bytes().to_vec();
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(&[proto, 64]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        (ETH_IPV6, h)
    };
    let l2 = L2 { dst: t.dmac, src: t.smac, tags: p.l2.tags.clone() };
    let mut out = l2.bytes(ethertype);
    out.extend_from_slice(&outer);
    out.extend_from_slice(&body);
    // The original frame's Ethernet padding stays behind the packet.
    out.resize(out.len() + p.padding(), 0);
    out
}

/// §5 "Strip": the tunnel packet `outer` after decapsulation: its L2 header with the last
/// ethertype set to the inner family, then everything after the outer IP header(s) (and
/// the UDP header for GUE) — the inner packet and any padding.
pub fn decapsulated(outer: &Packet) -> Vec<u8> {
    let frame = outer.frame();
    let udp = if matches!(outer.l4, L4::Udp { .. }) { 8 } else { 0 };
    let start = outer.l2.header_len() + outer.l3_header_len() + udp;
    let ethertype = match frame[start] >> 4 {
        4 => ETH_IPV4,
        _ => ETH_IPV6,
    };
    let mut out = outer.l2.bytes(ethertype);
    out.extend_from_slice(&frame[start..]);
    out
}

/// §8: the ICMP frag-needed (IPv4) / packet-too-big (IPv6) reply to `p` with next-hop
/// MTU `mtu`, sent back out of the ingress interface.
pub fn too_big_reply(p: &Packet, mtu: u32) -> Vec<u8> {
    let ip = p.ip_bytes();
    let l2 = L2 { dst: p.l2.src, src: p.l2.dst, tags: p.l2.tags.clone() };
    let (src, _) = addr16(p.dst());
    let (dst, _) = addr16(p.src());
    if p.is_v4() {
        // Quote: the original IP header with options + its first 8 payload bytes.
        let quote = &ip[..p.l3_header_len() + 8];
        let mut icmp = vec![3, 4, 0, 0, 0, 0];
        icmp.extend_from_slice(&(mtu as u16).to_be_bytes());
        icmp.extend_from_slice(quote);
        let c = checksum::icmpv4(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0, 64, PROTO_ICMP, 0, 0]);
        h.extend_from_slice(&src[..4]);
        h.extend_from_slice(&dst[..4]);
        let c = checksum::ipv4_header(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        let mut out = l2.bytes(ETH_IPV4);
        out.extend_from_slice(&h);
        out.extend_from_slice(&icmp);
        out
    } else {
        // Quote: the original IPv6 header + its first 8 payload bytes.
        let quote = &ip[..48];
        let mut icmp = vec![2, 0, 0, 0];
        icmp.extend_from_slice(&mtu.to_be_bytes());
        icmp.extend_from_slice(quote);
        let c = checksum::icmpv6(src, dst, &icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        h.extend_from_slice(&[PROTO_ICMPV6, 64]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        let mut out = l2.bytes(ETH_IPV6);
        out.extend_from_slice(&h);
        out.extend_from_slice(&icmp);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{ACK, addr, ip_in_ip, tcp, udp};

    fn tunnel(dst: &str, gue: Option<u16>) -> Tunnel {
        let src = if dst.contains(':') { "fd00::1" } else { "10.0.0.1" };
        Tunnel {
            smac: [2, 0, 0, 0, 0, 1],
            dmac: [2, 0, 0, 0, 0, 0xa2],
            src: addr(src),
            dst: addr(dst),
            gue_port: gue,
        }
    }

    #[test]
    fn ipip_outer_header() {
        let p = tcp("192.168.1.42", "10.200.1.1", 31337, 80, ACK).tos(0x10).pad_to(80);
        let t = tunnel("10.0.0.2", None);
        let f = encapsulated(&p, &t);
        let inner = p.ip_bytes();
        assert_eq!(f.len(), 14 + 20 + inner.len() + p.padding());
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        let outer = &f[14..34];
        assert!(checksum::ipv4_header_ok(outer));
        assert_eq!(outer[1], 0x10);
        assert_eq!(u16::from_be_bytes([outer[2], outer[3]]) as usize, 20 + inner.len());
        assert_eq!((outer[6], outer[8], outer[9]), (0x40, 64, 4));
        assert_eq!(&f[34..34 + inner.len()], inner.as_slice());
        assert_eq!(t.overhead(), 20);
    }

    #[test]
    fn gue6_header() {
        let p = udp("2001:db8::5", "fd00:200::1", 5000, 53);
        let t = tunnel("fd00::3", Some(7080));
        let f = encapsulated(&p, &t);
        let inner = p.ip_bytes();
        let h = reference::flow_hash(&p.key(), &KEY);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]) as usize, 8 + inner.len());
        assert_eq!(f[20], PROTO_UDP);
        let label = u32::from_be_bytes([0, f[15] & 0xf, f[16], f[17]]);
        assert_eq!(label, reference::flow_label(h));
        let udp_hdr = &f[54..62];
        assert_eq!(u16::from_be_bytes([udp_hdr[0], udp_hdr[1]]), reference::gue_source_port(h));
        assert_eq!(u16::from_be_bytes([udp_hdr[2], udp_hdr[3]]), 7080);
        assert_eq!(t.overhead(), 48);
    }

    #[test]
    fn decap_restores_inner() {
        let inner = udp("192.168.1.42", "10.200.1.1", 1, 53).vlan(5);
        let outer = ip_in_ip("10.0.0.2", "10.0.0.1", &inner);
        assert_eq!(decapsulated(&outer), inner.frame());
    }

    #[test]
    fn reply_v4_checksums() {
        let p = tcp("192.168.1.42", "10.200.1.1", 31337, 80, ACK).options(&[1, 1, 1, 1]);
        let r = too_big_reply(&p, 1380);
        assert!(checksum::ipv4_header_ok(&r[14..34]));
        assert_eq!(checksum::internet(&[&r[34..]]), 0);
        assert_eq!(r.len(), 14 + 20 + 8 + 24 + 8);
    }
}
