//! §7: a flow of a remote site. Next hop and egress by `bpf_fib_lookup`, then the outer
//! header (IPv4 or IPv6, optionally GUE) in front of the untouched inner packet.

use anycast_common::{
    Encap, Exception, Family, LocalConfig, SiteInfo,
    config::{CONFIG_TUNNEL_V4, CONFIG_TUNNEL_V6},
    flow::{flow_label, gue_source_port},
    wire::{IP_DF_BYTE, TTL, v4_in_16},
};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

use crate::{
    affinity, counters,
    counters::Verdict,
    csum,
    frame::{Frame, L2, adjust_head},
    icmp,
    maps::DEVMAP,
    parse::{
        ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, Packet, UDP_HLEN,
    },
    route::{Query, Route, next_hop},
    steer::Record,
};

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
fn outer(cfg: &LocalConfig, pkt: &Packet, info: &SiteInfo) -> Result<Outer, Exception> {
    let gue = match Encap::from_u8(info.encap) {
        Some(Encap::Ip) => false,
        Some(Encap::Gue) => true,
        None => return Err(Exception::EncapFailed),
    };
    let (v6, src, ip_hlen) = if info.tunnel_family == Family::V6 as u8 {
        if cfg.flags & CONFIG_TUNNEL_V6 == 0 {
            return Err(Exception::EncapFailed);
        }
        (true, cfg.tunnel_v6, IPV6_HLEN)
    } else {
        if cfg.flags & CONFIG_TUNNEL_V4 == 0 {
            return Err(Exception::EncapFailed);
        }
        (false, v4_in_16(cfg.tunnel_v4), IPV4_HLEN)
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
        + ((IP_DF_BYTE as u64) << 8)
        + be(TTL, o.proto)
        + be(s[0], s[1])
        + be(s[2], s[3])
        + be(dst[0], dst[1])
        + be(dst[2], dst[3]);
    let c = csum::fold(sum).to_be_bytes();
    *h = [
        0x45, tos, l[0], l[1], 0, 0, IP_DF_BYTE, 0, TTL, o.proto, c[0], c[1], s[0], s[1], s[2], s[3], dst[0],
        dst[1], dst[2], dst[3],
    ];
}

/// Outer IPv6 header, written in place.
#[inline(always)]
fn ipv6_header(h: &mut [u8; IPV6_HLEN], o: &Outer, dst: &[u8; 16], tclass: u8, payload: u16, hash: u64) {
    let fl = flow_label(hash);
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

/// A remote site and what the flow needs recorded once the packet is on its way.
pub struct Target<'a> {
    pub site: u32,
    pub info: &'a SiteInfo,
    pub hash: u64,
    pub record: Record,
    /// The packet starts a flow: when forwarding fails it may be served locally.
    pub new_flow: bool,
}

/// §7. Returns XDP_TX / XDP_REDIRECT, or the verdict of a packet that could not go: a too-big
/// packet is answered (§8) or dropped; when the FIB, the egress or the frame fails, a packet
/// that starts a flow is served by the local stack, any other packet of a remote flow is
/// dropped (handed to the local stack it would be reset).
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    frame: Frame,
    cfg: &LocalConfig,
    pkt: &Packet,
    t: &Target,
) -> Result<u32, Verdict> {
    let len = frame.len();
    let (o, hop, action) = match prepare(ctx, cfg, pkt, t) {
        Ok(p) => p,
        Err(Unsent::TooBig { mtu }) => return Err(icmp::too_big(ctx, frame, cfg, pkt, mtu)),
        Err(Unsent::Failed(reason)) => return Err(unsent(cfg, pkt, t, len, reason)),
    };
    let Some(mut l2) = L2::read(&frame, pkt.l2_len) else {
        return Err(unsent(cfg, pkt, t, len, Exception::EncapFailed));
    };
    l2.set_macs(hop.dmac, hop.smac);
    let Some(frame) = adjust_head(ctx, -(o.overhead as i32)) else {
        return Err(unsent(cfg, pkt, t, len, Exception::EncapFailed));
    };
    // From here the frame is rewritten: a failure can only drop it.
    write(&frame, &l2, &o, pkt, &t.info.tunnel_addr, t.info.gue_port, t.hash)
        .ok_or(Verdict::drop(Exception::EncapFailed))?;
    match t.record {
        Record::Nothing => {}
        Record::Embryo => affinity::embryo_write(t.hash, t.site, t.info),
        Record::Pin { replace, event } => affinity::pin(cfg, pkt, t.site, t.info, replace, event),
    }
    counters::site(t.site, |c| {
        c.forwarded_packets += 1;
        c.forwarded_bytes += len as u64;
    });
    Ok(action)
}

/// Why a packet cannot be forwarded, found before its frame is touched.
enum Unsent {
    /// Above the path MTU less the tunnel overhead (`mtu`).
    TooBig {
        mtu: usize,
    },
    Failed(Exception),
}

struct Hop {
    dmac: [u8; 6],
    smac: [u8; 6],
}

/// The outer headers, the next hop and the XDP action, decided before the frame is touched.
#[inline(always)]
fn prepare(
    ctx: &XdpContext,
    cfg: &LocalConfig,
    pkt: &Packet,
    t: &Target,
) -> Result<(Outer, Hop, u32), Unsent> {
    let o = outer(cfg, pkt, t.info).map_err(Unsent::Failed)?;
    let outer_len = pkt.ip_len + o.overhead;
    if outer_len > u16::MAX as usize {
        return Err(Unsent::Failed(Exception::EncapFailed));
    }
    let q = Query { v6: o.v6, proto: o.proto, tos: pkt.tos, src: &o.src, tot_len: outer_len as u16 };
    let (egress, dmac, smac) = match next_hop(ctx, t.site, &t.info.tunnel_addr, &q).map_err(Unsent::Failed)? {
        Route::Via { egress, dmac, smac } => (egress, dmac, smac),
        Route::TooBig { mtu } => {
            return Err(Unsent::TooBig { mtu: (mtu as usize).saturating_sub(o.overhead) });
        }
    };
    // bpf_redirect_map only records the target; the redirect happens if we return
    // XDP_REDIRECT.
    let action = if egress == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        DEVMAP.redirect(egress, 0).map_err(|_| Unsent::Failed(Exception::NoEgress))?
    };
    Ok((o, Hop { dmac, smac }, action))
}

/// The verdict of a packet that could not be forwarded, the frame untouched. A new flow is
/// served here instead: counted as local traffic and, for a flow that is pinned on its
/// first packet, pinned here so that the rest of it stays where its first packet went. Any
/// other packet of a remote flow is dropped.
#[inline(always)]
fn unsent(cfg: &LocalConfig, pkt: &Packet, t: &Target, bytes: usize, reason: Exception) -> Verdict {
    if !t.new_flow {
        return Verdict::drop(reason);
    }
    counters::local(cfg.local_site, bytes);
    if let Record::Pin { replace, event } = t.record {
        if let Some(info) = affinity::usable(cfg.local_site) {
            affinity::pin(cfg, pkt, cfg.local_site, info, replace, event);
        }
    }
    Verdict::pass(reason)
}

/// The L2 header and the outer headers, in the `overhead` bytes just gained at the head.
#[inline(always)]
fn write(
    frame: &Frame,
    l2: &L2,
    o: &Outer,
    pkt: &Packet,
    dst: &[u8; 16],
    gue_port: u16,
    hash: u64,
) -> Option<()> {
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
        let sport = gue_source_port(hash).to_be_bytes();
        let dport = gue_port.to_be_bytes();
        let len = (payload as u16).to_be_bytes();
        let ip_hlen = if o.v6 { IPV6_HLEN } else { IPV4_HLEN };
        frame.put(off + ip_hlen, [sport[0], sport[1], dport[0], dport[1], len[0], len[1], 0, 0])?;
    }
    Some(())
}
