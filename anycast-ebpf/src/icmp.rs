//! §8: the client's packet does not fit the tunnel, and XDP cannot fragment. Answer it with
//! ICMP frag-needed / ICMPv6 packet-too-big carrying the MTU that does fit, from the VIP,
//! out of the interface it came in on, so that the client's PMTU discovery shrinks the flow.

use anycast_common::Exception;
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

use crate::{
    csum,
    frame::{Frame, L2, adjust_head, adjust_tail},
    parse::{ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPV4_HLEN, IPV6_HLEN, Packet},
};

const ICMP_HLEN: usize = 8;
/// Payload bytes quoted after the original IP header: enough for the ports (RFC 792).
const QUOTE_PAYLOAD: usize = 8;
/// Largest IPv4 quote: a 60-byte header + 8.
const QUOTE_V4_MAX: usize = 60 + QUOTE_PAYLOAD;
const QUOTE_V6: usize = IPV6_HLEN + QUOTE_PAYLOAD;
const TTL: u8 = 64;

#[inline(always)]
pub fn too_big(ctx: &XdpContext, frame: Frame, pkt: &Packet, mtu: usize) -> Result<u32, Exception> {
    let mut l2 = L2::read(&frame, pkt.l2_len).ok_or(Exception::EncapFailed)?;
    l2.swap_macs();
    if pkt.v6 { reply_v6(ctx, pkt, &l2, mtu) } else { reply_v4(ctx, pkt, &l2, mtu) }
}

/// Cuts the frame to `len` bytes (drops the rest of the original packet and its padding).
#[inline(always)]
fn trim(ctx: &XdpContext, frame: &Frame, len: usize) -> Result<(), Exception> {
    let delta = len as i64 - frame.len() as i64;
    adjust_tail(ctx, delta as i32).map(|_| ()).ok_or(Exception::EncapFailed)
}

#[inline(always)]
fn reply_v4(ctx: &XdpContext, pkt: &Packet, l2: &L2, mtu: usize) -> Result<u32, Exception> {
    let quote = pkt.l3_hdr_len + QUOTE_PAYLOAD;
    // The checksum helper is verified against its largest size, so the frame must hold the
    // largest quote; any packet too big for a tunnel does (IPv4 MTUs are at least 68).
    if quote > QUOTE_V4_MAX || pkt.ip_len < QUOTE_V4_MAX {
        return Ok(xdp_action::XDP_PASS);
    }
    let grow = IPV4_HLEN + ICMP_HLEN;
    let frame = adjust_head(ctx, -(grow as i32)).ok_or(Exception::EncapFailed)?;
    let off = l2.len();
    // The original packet now starts `grow` bytes further in: it is the quote.
    let orig = frame.view::<IPV4_HLEN>(off + grow).ok_or(Exception::EncapFailed)?;
    let (src, dst) = ([orig[16], orig[17], orig[18], orig[19]], [orig[12], orig[13], orig[14], orig[15]]);
    l2.write(&frame, ETH_P_IP).ok_or(Exception::EncapFailed)?;

    let len = ((grow + quote) as u16).to_be_bytes();
    let ip = frame.view_mut::<IPV4_HLEN>(off).ok_or(Exception::EncapFailed)?;
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
    frame.put(icmp, [3, 4, 0, 0, 0, 0, m[0], m[1]]).ok_or(Exception::EncapFailed)?;
    let p = frame.at::<{ ICMP_HLEN + QUOTE_V4_MAX }>(icmp).ok_or(Exception::EncapFailed)?;
    let sum = csum::sum(p, ICMP_HLEN + quote, 0).ok_or(Exception::EncapFailed)?;
    frame.put(icmp + 2, csum::finish(sum)).ok_or(Exception::EncapFailed)?;

    trim(ctx, &frame, icmp + ICMP_HLEN + quote)?;
    Ok(xdp_action::XDP_TX)
}

#[inline(always)]
fn reply_v6(ctx: &XdpContext, pkt: &Packet, l2: &L2, mtu: usize) -> Result<u32, Exception> {
    if pkt.ip_len < QUOTE_V6 {
        return Ok(xdp_action::XDP_PASS);
    }
    let grow = IPV6_HLEN + ICMP_HLEN;
    let frame = adjust_head(ctx, -(grow as i32)).ok_or(Exception::EncapFailed)?;
    let off = l2.len();
    let orig = frame.view::<IPV6_HLEN>(off + grow).ok_or(Exception::EncapFailed)?;
    let ip = frame.view_mut::<IPV6_HLEN>(off).ok_or(Exception::EncapFailed)?;
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
    *ip.first_chunk_mut::<8>().ok_or(Exception::EncapFailed)? =
        [0x60, 0, 0, 0, len[0], len[1], IPPROTO_ICMPV6, TTL];
    l2.write(&frame, ETH_P_IPV6).ok_or(Exception::EncapFailed)?;

    let m = (mtu as u32).to_be_bytes();
    let icmp = off + IPV6_HLEN;
    frame.put(icmp, [2, 0, 0, 0, m[0], m[1], m[2], m[3]]).ok_or(Exception::EncapFailed)?;
    // Addresses and message are contiguous (IPv6 header bytes 8..40, then the ICMPv6
    // message); the rest of the pseudo-header (RFC 8200 §8.1: upper-layer length and next
    // header, as 32-bit big-endian words) goes in as the seed.
    const SPAN: usize = 32 + ICMP_HLEN + QUOTE_V6;
    let p = frame.at::<SPAN>(off + 8).ok_or(Exception::EncapFailed)?;
    let seed = u32::from_ne_bytes((payload as u32 + IPPROTO_ICMPV6 as u32).to_be_bytes());
    let sum = csum::sum(p, SPAN, seed).ok_or(Exception::EncapFailed)?;
    frame.put(icmp + 2, csum::finish(sum)).ok_or(Exception::EncapFailed)?;

    trim(ctx, &frame, icmp + payload)?;
    Ok(xdp_action::XDP_TX)
}
