//! §8: the client's packet does not fit the tunnel, and XDP cannot fragment. Answer it with
//! ICMP frag-needed / ICMPv6 packet-too-big carrying the MTU that does fit, from the VIP,
//! out of the interface it came in on, so that the client's PMTU discovery shrinks the flow.
//!
//! Every reply is limited: per CPU by a token bucket (`CONFIG.icmp`, RFC 4443 §2.4(f) MUST;
//! the kernel's `icmp_ratelimit` never sees what XDP sends), never to a source that must not
//! be answered (unspecified, loopback, multicast, broadcast, one of our own addresses:
//! RFC 1122 §3.2.2, RFC 4443 §2.4(e)) and never about an ICMP error. A packet too big for the
//! tunnel is never handed to the local stack (its flow lives at another site): answered, or
//! dropped.

use anycast_common::{
    Event, Exception, LocalConfig,
    config::RATE_ICMP,
    wire::{ICMP_HLEN, TTL, word},
};

use crate::{
    addrs, counters,
    counters::Verdict,
    csum,
    frame::{Frame, L2, adjust_head, adjust_tail},
    limit,
    parse::{ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPV4_HLEN, IPV6_HLEN, Packet},
};
use aya_ebpf::programs::XdpContext;

/// Payload bytes quoted after the original IP header: enough for the ports (RFC 792).
const QUOTE_PAYLOAD: usize = 8;
/// Largest IPv4 quote: a 60-byte header + 8.
const QUOTE_V4_MAX: usize = 60 + QUOTE_PAYLOAD;
const QUOTE_V6: usize = IPV6_HLEN + QUOTE_PAYLOAD;
/// The smallest MTU IPv6 hosts accept (RFC 8200 §5, RFC 8201 §4): a smaller route MTU is
/// advertised as this (the path cannot carry such packets; the operator must see to it).
const IPV6_MIN_MTU: usize = 1280;
/// The smallest MTU an IPv4 host must accept (RFC 791).
const IPV4_MIN_MTU: usize = 68;

/// §8: the verdict of a packet too big for the tunnel towards its site, whose route MTU
/// less the tunnel overhead is `mtu`.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, frame: Frame, cfg: &LocalConfig, pkt: &Packet, mtu: usize) -> Verdict {
    if pkt.is_icmp_error || !answerable(cfg, pkt) {
        counters::event(Event::IcmpNotAnswered);
        return Verdict::drop(Exception::TooBig);
    }
    if !limit::allow(RATE_ICMP, &cfg.icmp) {
        counters::event(Event::IcmpRateLimited);
        return Verdict::drop(Exception::TooBig);
    }
    let Some(mut l2) = L2::read(&frame, pkt.l2_len) else { return Verdict::drop(Exception::TooBig) };
    l2.swap_macs();
    let sent = if pkt.v6 {
        reply_v6(ctx, pkt, &l2, mtu.max(IPV6_MIN_MTU))
    } else {
        reply_v4(ctx, pkt, &l2, mtu.max(IPV4_MIN_MTU))
    };
    match sent {
        Some(()) => Verdict::tx(Exception::TooBig),
        None => Verdict::drop(Exception::TooBig),
    }
}

/// Whether the packet's source may be sent an ICMP error: a unicast address that is not
/// ours (the key's `src` is the client: too-big packets are never re-keyed ICMP errors).
#[inline(always)]
fn answerable(cfg: &LocalConfig, pkt: &Packet) -> bool {
    let src = &pkt.key.src;
    let special = if pkt.v6 {
        // ::, ::1, ff00::/8.
        let low = word(src, 0) | word(src, 4) | word(src, 8) == 0 && src[12] | src[13] | src[14] == 0;
        (low && src[15] <= 1) || src[0] == 0xff
    } else {
        // 0/8 (this network), 127/8 (loopback), 224/4 (multicast), 240/4 (reserved and the
        // limited broadcast).
        src[0] == 0 || src[0] == 127 || src[0] >= 224
    };
    if special {
        return false;
    }
    let key = addrs::key(src, pkt.v6);
    !addrs::is_vip(&key) && !addrs::is_tunnel(cfg, &key)
}

/// Cuts the frame to `len` bytes (drops the rest of the original packet and its padding).
#[inline(always)]
fn trim(ctx: &XdpContext, frame: &Frame, len: usize) -> Option<()> {
    let delta = len as i64 - frame.len() as i64;
    adjust_tail(ctx, delta as i32).map(|_| ())
}

#[inline(always)]
fn reply_v4(ctx: &XdpContext, pkt: &Packet, l2: &L2, mtu: usize) -> Option<()> {
    let quote = pkt.l3_hdr_len + QUOTE_PAYLOAD;
    // The checksum helper is verified against its largest size, so the frame must hold the
    // largest quote; any packet too big for a tunnel does (IPv4 MTUs are at least 68).
    if quote > QUOTE_V4_MAX || pkt.ip_len < QUOTE_V4_MAX {
        return None;
    }
    let grow = IPV4_HLEN + ICMP_HLEN;
    let frame = adjust_head(ctx, -(grow as i32))?;
    let off = l2.len();
    // The original packet now starts `grow` bytes further in: it is the quote.
    let orig = frame.view::<IPV4_HLEN>(off + grow)?;
    let (src, dst) = ([orig[16], orig[17], orig[18], orig[19]], [orig[12], orig[13], orig[14], orig[15]]);
    l2.write(&frame, ETH_P_IP)?;

    let len = ((grow + quote) as u16).to_be_bytes();
    let ip = frame.view_mut::<IPV4_HLEN>(off)?;
    *ip = [
        0x45,
        0,
        len[0],
        len[1],
        0,
        0,
        0,
        0,
        TTL,
        IPPROTO_ICMP,
        0,
        0,
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    let c = csum::ipv4_header(ip);
    ip[10] = c[0];
    ip[11] = c[1];

    // Type 3 code 4, checksum, 2 unused bytes, next-hop MTU (RFC 1191).
    let m = (mtu as u16).to_be_bytes();
    let icmp = off + IPV4_HLEN;
    frame.put(icmp, [3, 4, 0, 0, 0, 0, m[0], m[1]])?;
    let p = frame.at::<{ ICMP_HLEN + QUOTE_V4_MAX }>(icmp)?;
    let sum = csum::sum(p, ICMP_HLEN + quote, 0)?;
    frame.put(icmp + 2, csum::finish(sum))?;

    trim(ctx, &frame, icmp + ICMP_HLEN + quote)
}

#[inline(always)]
fn reply_v6(ctx: &XdpContext, pkt: &Packet, l2: &L2, mtu: usize) -> Option<()> {
    if pkt.ip_len < QUOTE_V6 {
        return None;
    }
    let grow = IPV6_HLEN + ICMP_HLEN;
    let frame = adjust_head(ctx, -(grow as i32))?;
    let off = l2.len();
    let orig = frame.view::<IPV6_HLEN>(off + grow)?;
    let ip = frame.view_mut::<IPV6_HLEN>(off)?;
    // src = the packet's destination (the VIP), dst = the client; the new header does not
    // overlap the original one.
    let mut i = 0;
    while i < 16 {
        ip[8 + i] = orig[24 + i];
        ip[24 + i] = orig[8 + i];
        i += 1;
    }
    let payload = ICMP_HLEN + QUOTE_V6;
    let len = (payload as u16).to_be_bytes();
    *ip.first_chunk_mut::<8>()? = [0x60, 0, 0, 0, len[0], len[1], IPPROTO_ICMPV6, TTL];
    l2.write(&frame, ETH_P_IPV6)?;

    let m = (mtu as u32).to_be_bytes();
    let icmp = off + IPV6_HLEN;
    frame.put(icmp, [2, 0, 0, 0, m[0], m[1], m[2], m[3]])?;
    // Addresses and message are contiguous (IPv6 header bytes 8..40, then the ICMPv6
    // message); the rest of the pseudo-header (RFC 8200 §8.1: upper-layer length and next
    // header, as 32-bit big-endian words) goes in as the seed.
    const SPAN: usize = 32 + ICMP_HLEN + QUOTE_V6;
    let p = frame.at::<SPAN>(off + 8)?;
    let seed = u32::from_ne_bytes((payload as u32 + IPPROTO_ICMPV6 as u32).to_be_bytes());
    let sum = csum::sum(p, SPAN, seed)?;
    frame.put(icmp + 2, csum::finish(sum))?;

    trim(ctx, &frame, icmp + payload)
}
