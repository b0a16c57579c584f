//! §7: a flow of a remote site. Next hop and egress by `bpf_fib_lookup`, then the outer
//! header (IPv4 or IPv6, optionally GUE) in front of the untouched inner packet.

use anycast_common::{
    Encap, Exception, Family, LocalConfig, SiteInfo,
    config::{CONFIG_TUNNEL_V4, CONFIG_TUNNEL_V6},
    flow::{flow_label, gue_source_port},
    wire::{IP_DF_BYTE, TTL, word, words},
};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

use crate::{
    affinity, counters,
    counters::Verdict,
    csum,
    frame::{Frame, L2, Macs, adjust_head},
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
    /// This host's tunnel address as the 32-bit words of its bytes (an IPv4 address in the
    /// first): copied and summed as words, never as bytes.
    src: [u32; 4],
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
        (true, words(&cfg.tunnel_v6), IPV6_HLEN)
    } else {
        if cfg.flags & CONFIG_TUNNEL_V4 == 0 {
            return Err(Exception::EncapFailed);
        }
        (false, [u32::from_ne_bytes(cfg.tunnel_v4), 0, 0, 0], IPV4_HLEN)
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

/// The outer IPv4 header towards `dst` (its first 4 bytes), as the five 32-bit words of its
/// bytes (on this little-endian target: byte 0 in the low bits), written with five 4-byte
/// stores.
#[inline(always)]
fn ipv4_header(o: &Outer, dst: &[u8; 16], tos: u8, len: u16) -> [u32; 5] {
    let w = [
        u32::from_ne_bytes([0x45, tos, 0, 0]) | (len.to_be() as u32) << 16,
        u32::from_ne_bytes([0, 0, IP_DF_BYTE, 0]),
        u32::from_ne_bytes([TTL, o.proto, 0, 0]),
        o.src[0],
        word(dst, 0),
    ];
    // The checksum of the header's 16-bit words in memory order, summed as 32-bit words
    // (the same one's-complement sum, RFC 1071) and stored in that order (csum.rs).
    let sum = w[0] as u64 + w[1] as u64 + w[2] as u64 + w[3] as u64 + w[4] as u64;
    let c = csum::fold(sum) as u32;
    [w[0], w[1], w[2] | c << 16, w[3], w[4]]
}

/// The outer IPv6 header towards `dst`, as the ten 32-bit words of its bytes.
#[inline(always)]
fn ipv6_header(o: &Outer, dst: &[u8; 16], tclass: u8, payload: u16, hash: u64) -> [u32; 10] {
    let first = 6 << 28 | (tclass as u32) << 20 | flow_label(hash);
    let (s, d) = (&o.src, words(dst));
    [
        first.to_be(),
        (payload.to_be() as u32) | u32::from_ne_bytes([0, 0, o.proto, TTL]),
        s[0],
        s[1],
        s[2],
        s[3],
        d[0],
        d[1],
        d[2],
        d[3],
    ]
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
    l2.set_macs(hop);
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

/// The outer headers, the next hop and the XDP action, decided before the frame is touched.
#[inline(always)]
fn prepare(
    ctx: &XdpContext,
    cfg: &LocalConfig,
    pkt: &Packet,
    t: &Target,
) -> Result<(Outer, Macs, u32), Unsent> {
    let o = outer(cfg, pkt, t.info).map_err(Unsent::Failed)?;
    let outer_len = pkt.ip_len + o.overhead;
    if outer_len > u16::MAX as usize {
        return Err(Unsent::Failed(Exception::EncapFailed));
    }
    let q = Query { v6: o.v6, proto: o.proto, tos: pkt.tos, src: &o.src, tot_len: outer_len as u16 };
    let (egress, macs) = match next_hop(ctx, t.site, &t.info.tunnel_addr, &q).map_err(Unsent::Failed)? {
        Route::Via { egress, macs } => (egress, macs),
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
    Ok((o, macs, action))
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
        frame.put_words::<IPV6_HLEN, 10>(off, ipv6_header(o, dst, pkt.tos, payload as u16, hash))?;
    } else {
        l2.write(frame, ETH_P_IP)?;
        frame.put_words::<IPV4_HLEN, 5>(off, ipv4_header(o, dst, pkt.tos, (IPV4_HLEN + payload) as u16))?;
    }
    if o.gue {
        let ports = gue_source_port(hash).to_be() as u32 | (gue_port.to_be() as u32) << 16;
        let ip_hlen = if o.v6 { IPV6_HLEN } else { IPV4_HLEN };
        frame.put_words::<UDP_HLEN, 2>(off + ip_hlen, [ports, (payload as u16).to_be() as u32])?;
    }
    Some(())
}
