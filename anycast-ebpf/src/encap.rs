//! §7: a flow of a remote site. Next hop and egress by `bpf_fib_lookup`, then the outer
//! header (IPv4 or IPv6, optionally GUE) in front of the untouched inner packet.

use anycast_common::{
    Encap, Exception, Family,
    config::{CONFIG_TUNNEL_V4, CONFIG_TUNNEL_V6},
    flow_hash,
};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

use crate::{
    counters, csum,
    frame::{Frame, L2, adjust_head},
    icmp,
    maps::{DEVMAP, config},
    parse::{
        ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, Packet, UDP_HLEN,
    },
    route::{Query, Route, next_hop},
    steer::Site,
};

const TTL: u8 = 64;
const IP_DF: u8 = 0x40;
/// GUE source ports: the flow hash in 0xC000..=0xFFFF (RFC 6335 dynamic range).
const GUE_SPORT_BASE: u16 = 0xC000;
const GUE_SPORT_MASK: u32 = 0x3FFF;
const FLOW_LABEL_MASK: u32 = 0xF_FFFF;

/// What the outer headers will be.
struct Outer {
    v6: bool,
    gue: bool,
    /// Outer IP protocol / next header: 4, 41 or 17.
    proto: u8,
    /// Outer IP header + UDP header bytes.
    overhead: usize,
    src: [u8; 16],
}

#[inline(always)]
fn outer(pkt: &Packet, site: &Site) -> Result<Outer, Exception> {
    let cfg = config().ok_or(Exception::EncapFailed)?;
    let gue = match Encap::from_u8(site.info.encap) {
        Some(Encap::Ip) => false,
        Some(Encap::Gue) => true,
        None => return Err(Exception::EncapFailed),
    };
    let (v6, src, ip_hlen) = if site.info.tunnel_family == Family::V6 as u8 {
        if cfg.flags & CONFIG_TUNNEL_V6 == 0 {
            return Err(Exception::EncapFailed);
        }
        (true, cfg.tunnel_v6, IPV6_HLEN)
    } else {
        if cfg.flags & CONFIG_TUNNEL_V4 == 0 {
            return Err(Exception::EncapFailed);
        }
        let a = cfg.tunnel_v4;
        (false, [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], IPV4_HLEN)
    };
    let proto = if gue {
        IPPROTO_UDP
    } else if pkt.v6 {
        IPPROTO_IPV6
    } else {
        IPPROTO_IPIP
    };
    Ok(Outer { v6, gue, proto, overhead: ip_hlen + if gue { UDP_HLEN } else { 0 }, src })
}

/// Outer IPv4 header, written in place.
#[inline(always)]
fn ipv4_header(h: &mut [u8; IPV4_HLEN], o: &Outer, dst: &[u8; 16], tos: u8, len: u16) {
    let l = len.to_be_bytes();
    let s = &o.src;
    // Checksum from the field values (big-endian 16-bit words), not by reading the bytes
    // back from the packet.
    let be = |a: u8, b: u8| u16::from_be_bytes([a, b]) as u64;
    let sum = 0x4500
        + tos as u64
        + len as u64
        + ((IP_DF as u64) << 8)
        + be(TTL, o.proto)
        + be(s[0], s[1])
        + be(s[2], s[3])
        + be(dst[0], dst[1])
        + be(dst[2], dst[3]);
    let c = csum::fold(sum).to_be_bytes();
    *h = [
        0x45, tos, l[0], l[1], 0, 0, IP_DF, 0, TTL, o.proto, c[0], c[1], s[0], s[1], s[2], s[3], dst[0],
        dst[1], dst[2], dst[3],
    ];
}

/// Outer IPv6 header, written in place.
#[inline(always)]
fn ipv6_header(h: &mut [u8; IPV6_HLEN], o: &Outer, dst: &[u8; 16], tclass: u8, payload: u16, hash: u32) {
    let fl = hash & FLOW_LABEL_MASK;
    let l = payload.to_be_bytes();
    h[0] = 0x60 | (tclass >> 4);
    h[1] = (tclass << 4) | (fl >> 16) as u8;
    h[2] = (fl >> 8) as u8;
    h[3] = fl as u8;
    h[4] = l[0];
    h[5] = l[1];
    h[6] = o.proto;
    h[7] = TTL;
    let mut i = 0;
    while i < 16 {
        h[8 + i] = o.src[i];
        h[24 + i] = dst[i];
        i += 1;
    }
}

/// §7. Returns XDP_TX / XDP_REDIRECT, or XDP_TX of an ICMP error for a packet too big for
/// the tunnel.
#[inline(always)]
pub fn forward(ctx: &XdpContext, frame: Frame, pkt: &Packet, site: &Site) -> Result<u32, Exception> {
    let o = outer(pkt, site)?;
    let outer_len = pkt.ip_len + o.overhead;
    if outer_len > u16::MAX as usize {
        return Err(Exception::EncapFailed);
    }
    let q = Query { v6: o.v6, proto: o.proto, tos: pkt.tos, src: &o.src, tot_len: outer_len as u16 };
    let (egress, dmac, smac) = match next_hop(ctx, site, &q)? {
        Route::Via { egress, dmac, smac } => (egress, dmac, smac),
        Route::TooBig { mtu } => {
            counters::exception(ctx, Exception::TooBig);
            // XDP cannot fragment; without DF the stack may.
            if !pkt.v6 && !pkt.df {
                return Ok(xdp_action::XDP_PASS);
            }
            return icmp::too_big(ctx, frame, pkt, (mtu as usize).saturating_sub(o.overhead));
        }
    };

    // Pick the egress before touching the frame: a device missing from DEVMAP must leave
    // the packet intact for the local stack. bpf_redirect_map only records the target;
    // the redirect happens if we return XDP_REDIRECT.
    let action = if egress == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        DEVMAP.redirect(egress, 0).map_err(|_| Exception::FibFailed)?
    };

    let hash = if o.v6 || o.gue { site.hash.unwrap_or_else(|| flow_hash(&pkt.key)) } else { 0 };
    let original = frame.len();
    let mut l2 = L2::read(&frame, pkt.l2_len).ok_or(Exception::EncapFailed)?;
    l2.set_macs(dmac, smac);
    let frame = adjust_head(ctx, -(o.overhead as i32)).ok_or(Exception::EncapFailed)?;
    write(&frame, &l2, &o, pkt, site, hash).ok_or(Exception::EncapFailed)?;
    counters::site(site.index, |c| {
        c.forwarded_packets += 1;
        c.forwarded_bytes += original as u64;
    });
    Ok(action)
}

/// The L2 header and the outer headers, in the `overhead` bytes just gained at the head.
#[inline(always)]
fn write(frame: &Frame, l2: &L2, o: &Outer, pkt: &Packet, site: &Site, hash: u32) -> Option<()> {
    let dst = &site.info.tunnel_addr;
    let payload = if o.gue { UDP_HLEN } else { 0 } + pkt.ip_len;
    let off = l2.len();
    if o.v6 {
        l2.write(frame, ETH_P_IPV6)?;
        ipv6_header(frame.view_mut(off)?, o, dst, pkt.tos, payload as u16, hash);
    } else {
        l2.write(frame, ETH_P_IP)?;
        ipv4_header(frame.view_mut(off)?, o, dst, pkt.tos, (IPV4_HLEN + payload) as u16);
    }
    if o.gue {
        let sport = (GUE_SPORT_BASE | (hash & GUE_SPORT_MASK) as u16).to_be_bytes();
        let dport = site.info.gue_port.to_be_bytes();
        let len = (payload as u16).to_be_bytes();
        let ip_hlen = if o.v6 { IPV6_HLEN } else { IPV4_HLEN };
        frame.put(off + ip_hlen, [sport[0], sport[1], dport[0], dport[1], len[0], len[1], 0, 0])?;
    }
    Some(())
}
