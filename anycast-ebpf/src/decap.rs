//! §5: packets a remote site tunnelled to one of our tunnel addresses. The outer headers are
//! stripped here (the kernel has no IPIP/FOU modules to do it), and the inner packet goes
//! to the local stack, never steered again: no loops between sites.
//!
//! Only what a sibling's data path really sends is accepted: an inner packet for one of our
//! VIP addresses, or a sibling controller's health probe (an ICMP / ICMPv6 echo request for
//! our own tunnel address). The outer source is no proof (anyone can spoof a sibling's
//! tunnel address), so anything else inside a well-formed tunnel packet is dropped: handed
//! to the stack it would be delivered to the host's own services, or routed on (the host
//! forwards, which `bpf_fib_lookup` requires) — an open relay with a chosen source.

use anycast_common::{
    Exception, LocalConfig,
    wire::{ECN_CE, ECN_MASK, ECN_NOT_ECT, ICMP_HLEN, IPPROTO_ICMP, IPPROTO_ICMPV6, v4_in_16},
};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

use crate::{
    addrs, counters,
    counters::Verdict,
    frame::{Frame, L2, adjust_head},
    maps::TUNNEL_PEERS,
    parse::{
        ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, Packet, UDP_HLEN,
    },
};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// What a validated inner packet is.
enum Inner {
    /// For one of our VIPs: data traffic.
    Data,
    /// An echo request for our tunnel address: a sibling's health probe.
    Probe,
}

/// `Ok(None)`: not a tunnel packet for us, carry on with the VIP match.
#[inline(always)]
pub fn decap(
    ctx: &XdpContext,
    frame: Frame,
    cfg: &LocalConfig,
    pkt: &Packet,
) -> Result<Option<u32>, Verdict> {
    // A fragment of a tunnel packet holds part of an inner packet: nothing to strip.
    if pkt.fragment || !addrs::is_tunnel(cfg, &addrs::key(&pkt.key.dst, pkt.v6)) {
        return Ok(None);
    }
    // The inner packet's offset and, for IPIP/IPv6-in-IP, the family the protocol implies.
    let (inner, implied_v6) = match pkt.l4_proto {
        IPPROTO_IPIP => (pkt.l4, Some(false)),
        IPPROTO_IPV6 => (pkt.l4, Some(true)),
        IPPROTO_UDP if cfg.gue_port != 0 && pkt.key.dport == cfg.gue_port => (pkt.l4 + UDP_HLEN, None),
        _ => return Ok(None),
    };

    // SAFETY: the u32 is copied out at once.
    let peer = unsafe { TUNNEL_PEERS.get(&*addrs::key(&pkt.key.src, pkt.v6)) }
        .copied()
        .ok_or(Verdict::drop(Exception::DecapUnknownPeer))?;

    // §5: the version nibble must agree with the protocol (GUE: it decides), and the inner
    // packet must fit in what the outer header carries (Ethernet padding is no payload).
    let bad = Verdict::drop(Exception::DecapBadInner);
    let avail = (pkt.l2_len + pkt.ip_len).saturating_sub(inner);
    let version = frame.u8(inner).ok_or(bad)? >> 4;
    let inner_v6 = match (version, implied_v6) {
        (4, None | Some(false)) => false,
        (6, None | Some(true)) => true,
        _ => return Err(bad),
    };
    let what = if inner_v6 {
        inner_v6_kind(&frame, cfg, inner, avail)
    } else {
        inner_v4_kind(&frame, cfg, inner, avail)
    }?;
    ecn(&frame, pkt, inner, inner_v6)?;

    let received = frame.len();
    let l2 = L2::read(&frame, pkt.l2_len).ok_or(Verdict::drop(Exception::EncapFailed))?;
    // inner - l2_len is the outer IP (+ extension headers, + UDP): well within i32.
    let frame = adjust_head(ctx, (inner - pkt.l2_len) as i32).ok_or(Verdict::drop(Exception::EncapFailed))?;
    l2.write(&frame, if inner_v6 { ETH_P_IPV6 } else { ETH_P_IP })
        .ok_or(Verdict::drop(Exception::EncapFailed))?;
    // Probes are counted apart: the per-site received counters must add up to what the
    // services got, and the probe's echo reply goes to the kernel, not a service.
    counters::site(peer, |c| match what {
        Inner::Probe => c.probe_packets += 1,
        Inner::Data => {
            c.received_packets += 1;
            c.received_bytes += received as u64;
        }
    });
    Ok(Some(xdp_action::XDP_PASS))
}

/// An inner IPv4 packet at `inner` with `avail` bytes of outer payload: IHL ≥ 5, total
/// length within `avail`, for a VIP address or an echo request for our tunnel address.
#[inline(always)]
fn inner_v4_kind(frame: &Frame, cfg: &LocalConfig, inner: usize, avail: usize) -> Result<Inner, Verdict> {
    let bad = Verdict::drop(Exception::DecapBadInner);
    let h = frame.view::<IPV4_HLEN>(inner).ok_or(bad)?;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let len = u16::from_be_bytes([h[2], h[3]]) as usize;
    if avail < IPV4_HLEN || ihl < IPV4_HLEN || len < ihl || len > avail {
        return Err(bad);
    }
    let dst = addrs::key(&v4_in_16([h[16], h[17], h[18], h[19]]), false);
    if addrs::is_vip(&dst) {
        return Ok(Inner::Data);
    }
    if h[9] == IPPROTO_ICMP && addrs::is_tunnel(cfg, &dst) && len >= ihl + ICMP_HLEN {
        if frame.u8(inner + ihl) == Some(ICMP_ECHO_REQUEST) {
            return Ok(Inner::Probe);
        }
    }
    Err(Verdict::drop(Exception::DecapForeign))
}

/// Same for an inner IPv6 packet (a probe's ICMPv6 follows the fixed header directly).
#[inline(always)]
fn inner_v6_kind(frame: &Frame, cfg: &LocalConfig, inner: usize, avail: usize) -> Result<Inner, Verdict> {
    let bad = Verdict::drop(Exception::DecapBadInner);
    let h = frame.view::<IPV6_HLEN>(inner).ok_or(bad)?;
    let len = IPV6_HLEN + u16::from_be_bytes([h[4], h[5]]) as usize;
    if avail < IPV6_HLEN || len > avail {
        return Err(bad);
    }
    let mut a = [0u8; 16];
    a.copy_from_slice(&h[24..40]);
    let dst = addrs::key(&a, true);
    if addrs::is_vip(&dst) {
        return Ok(Inner::Data);
    }
    if h[6] == IPPROTO_ICMPV6 && addrs::is_tunnel(cfg, &dst) && len >= IPV6_HLEN + ICMP_HLEN {
        if frame.u8(inner + IPV6_HLEN) == Some(ICMPV6_ECHO_REQUEST) {
            return Ok(Inner::Probe);
        }
    }
    Err(Verdict::drop(Exception::DecapForeign))
}

/// RFC 6040 §4.2 (normal mode) at decapsulation: an outer CE mark is carried into an
/// ECN-capable inner header (so the congestion the backbone signalled reaches the
/// endpoints); CE over a Not-ECT inner packet is dropped (the only signal it can carry).
/// IPv4's header checksum is updated incrementally (RFC 1624).
#[inline(always)]
fn ecn(frame: &Frame, pkt: &Packet, inner: usize, inner_v6: bool) -> Result<(), Verdict> {
    if pkt.tos & ECN_MASK != ECN_CE {
        return Ok(());
    }
    let bad = Verdict::drop(Exception::DecapBadInner);
    if inner_v6 {
        let h = frame.view_mut::<2>(inner).ok_or(bad)?;
        // Traffic class: the low 4 bits of byte 0 and the high 4 of byte 1; ECN is its low
        // two bits, i.e. bits 4..6 of byte 1.
        let inner_ecn = (h[1] >> 4) & ECN_MASK;
        if inner_ecn == ECN_NOT_ECT {
            return Err(Verdict::drop(Exception::DecapEcn));
        }
        h[1] |= ECN_CE << 4;
    } else {
        let h = frame.view_mut::<IPV4_HLEN>(inner).ok_or(bad)?;
        let inner_ecn = h[1] & ECN_MASK;
        if inner_ecn == ECN_NOT_ECT {
            return Err(Verdict::drop(Exception::DecapEcn));
        }
        if inner_ecn != ECN_CE {
            let old = u16::from_be_bytes([h[0], h[1]]);
            h[1] |= ECN_CE;
            let new = u16::from_be_bytes([h[0], h[1]]);
            // RFC 1624 eq. 3: HC' = ~(~HC + ~m + m').
            let hc = u16::from_be_bytes([h[10], h[11]]);
            let sum = (!hc) as u32 + (!old) as u32 + new as u32;
            let c = crate::csum::fold(sum as u64).to_be_bytes();
            h[10] = c[0];
            h[11] = c[1];
        }
    }
    Ok(())
}
