//! §5: packets a remote site tunnelled to one of our tunnel addresses. The outer headers are
//! stripped here (the kernel has no IPIP/FOU modules to do it), and the inner packet goes
//! to the local stack, never steered again: no loops between sites.

use anycast_common::{
    AddrKey, Exception, LocalConfig,
    config::{CONFIG_TUNNEL_V4, CONFIG_TUNNEL_V6},
};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

use crate::{
    counters,
    frame::{Frame, L2, adjust_head},
    maps::{TUNNEL_PEERS, config},
    parse::{
        ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, Packet, UDP_HLEN,
    },
};

/// Whether the outer destination is this host's tunnel address of that family.
#[inline(always)]
fn for_us(cfg: &LocalConfig, pkt: &Packet) -> bool {
    if pkt.v6 {
        cfg.flags & CONFIG_TUNNEL_V6 != 0 && pkt.key.dst == cfg.tunnel_v6
    } else {
        let d = pkt.key.dst;
        cfg.flags & CONFIG_TUNNEL_V4 != 0 && [d[0], d[1], d[2], d[3]] == cfg.tunnel_v4
    }
}

/// Whether the inner packet is addressed to this host's tunnel address of its family: a
/// sibling controller's health probe (anycast-user/src/probe.rs), since data traffic's
/// inner destination is always a VIP. Reads only the inner destination, bounds-checked by
/// [`Frame::bytes`] (IPv4: bytes 16..20, IPv6: 24..40, both inside the header length the
/// caller checked).
#[inline(always)]
fn is_probe(cfg: &LocalConfig, frame: &Frame, inner: usize, inner_v6: bool) -> bool {
    if inner_v6 {
        cfg.flags & CONFIG_TUNNEL_V6 != 0
            && matches!(frame.bytes::<16>(inner + 24), Some(d) if d == cfg.tunnel_v6)
    } else {
        cfg.flags & CONFIG_TUNNEL_V4 != 0
            && matches!(frame.bytes::<4>(inner + 16), Some(d) if d == cfg.tunnel_v4)
    }
}

/// `Ok(None)`: not a tunnel packet for us, carry on with the VIP match.
#[inline(always)]
pub fn decap(ctx: &XdpContext, frame: Frame, pkt: &Packet) -> Result<Option<u32>, Exception> {
    // A fragment of a tunnel packet holds part of an inner packet: nothing to strip.
    if pkt.fragment {
        return Ok(None);
    }
    let Some(cfg) = config() else { return Ok(None) };
    if !for_us(cfg, pkt) {
        return Ok(None);
    }
    // The inner packet's offset and, for IPIP/IPv6-in-IP, the family the protocol implies.
    let (inner, implied_v6) = match pkt.l4_proto {
        IPPROTO_IPIP => (pkt.l4, Some(false)),
        IPPROTO_IPV6 => (pkt.l4, Some(true)),
        IPPROTO_UDP if cfg.gue_port != 0 && pkt.key.dport == cfg.gue_port => (pkt.l4 + UDP_HLEN, None),
        _ => return Ok(None),
    };

    let peer_key = if pkt.v6 {
        AddrKey::v6(pkt.key.src)
    } else {
        AddrKey::v4([pkt.key.src[0], pkt.key.src[1], pkt.key.src[2], pkt.key.src[3]])
    };
    // SAFETY: the u32 is copied out at once.
    let peer = unsafe { TUNNEL_PEERS.get(&peer_key) }.copied().ok_or(Exception::DecapUnknownPeer)?;

    // §5: the version nibble must agree with the protocol (GUE: it decides) and the inner
    // header must fit in the outer packet.
    let avail = (pkt.l2_len + pkt.ip_len).saturating_sub(inner);
    let version = frame.u8(inner).ok_or(Exception::DecapBadInner)? >> 4;
    let inner_v6 = match (version, implied_v6) {
        (4, None | Some(false)) if avail >= IPV4_HLEN => false,
        (6, None | Some(true)) if avail >= IPV6_HLEN => true,
        _ => return Err(Exception::DecapBadInner),
    };

    let received = frame.len();
    let probe = is_probe(cfg, &frame, inner, inner_v6);
    let l2 = L2::read(&frame, pkt.l2_len).ok_or(Exception::EncapFailed)?;
    // inner - l2_len is the outer IP (+ extension headers, + UDP): well within i32.
    let frame = adjust_head(ctx, (inner - pkt.l2_len) as i32).ok_or(Exception::EncapFailed)?;
    l2.write(&frame, if inner_v6 { ETH_P_IPV6 } else { ETH_P_IP }).ok_or(Exception::EncapFailed)?;
    // Probes are counted apart: the per-site received counters must add up to what the
    // services got (issue 5), and the probe's echo reply goes to the kernel, not a service.
    counters::site(peer, |c| {
        if probe {
            c.probe_packets += 1;
        } else {
            c.received_packets += 1;
            c.received_bytes += received as u64;
        }
    });
    Ok(Some(xdp_action::XDP_PASS))
}
