//! The second chance for local TCP flows (docs/datapath.md §6): a mid-flow TCP packet whose
//! Maglev bucket now names another site is kept local when the host's own stack has its
//! connection. The socket table already knows every local connection, so local flows need
//! no flow-table entry and survive any number of weight changes (GLB, Beamer and Unimog do
//! this at the receiving server; here it is done at the ingress host).
//!
//! Kernel facts: `bpf_skc_lookup_tcp` (XDP since 5.2) returns the full, request (SYN_RECV)
//! or time-wait socket of the 4-tuple, else a listener on the port; `bpf_tcp_check_syncookie`
//! says whether an ACK that only a listener matched carries a SYN cookie the listener sent
//! (it only answers while the listener is in SYN-cookie mode). Every socket returned must be
//! released with `bpf_sk_release`.

use anycast_common::{Family, FlowKey, wire::word};
use aya_ebpf::{
    EbpfContext,
    bindings::{bpf_sock, bpf_sock_tuple},
    helpers::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie},
    programs::XdpContext,
};

use crate::{
    frame::Frame,
    parse::{IPV4_HLEN, IPV6_HLEN, Packet, TCP_HLEN},
    stack::Aligned,
};

// Socket states (`BPF_TCP_*`, linux/bpf.h).
const TCP_SYN_SENT: u32 = 2;
const TCP_SYN_RECV: u32 = 3;
const TCP_TIME_WAIT: u32 = 6;
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;
const TCP_NEW_SYN_RECV: u32 = 12;

/// What a socket of the 4-tuple must be to keep a packet here.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Any socket of the host's for it: a connection, one mid-handshake (a request socket),
    /// one that ended here (time-wait: its last segments are still the host's to answer),
    /// or a SYN cookie the host sent. For a flow with no pin, whose bucket moved: nothing
    /// else claims it.
    AnySocket,
    /// A connection that completed its handshake with this host: a full socket past
    /// SYN_RECV, or an ACK carrying a SYN cookie the host sent. Against a pin: a request
    /// socket is what any SYN makes — a forged SYN of the pinned 4-tuple too, whose SYN-ACK
    /// the real client answers with an ACK of its own connection, which would then unpin it
    /// and meet the local stack's reset. Only the host's ISN, which no one off the path
    /// sees, completes a handshake.
    Handshake,
}

/// Whether the local stack has the connection of `pkt`'s flow, as `proof` says.
/// `netns` is `CONFIG.socket_netns` (`u32::MAX`: the ingress device's namespace).
#[inline(always)]
pub fn is_local(ctx: &XdpContext, frame: &Frame, pkt: &Packet, netns: u32, proof: Proof) -> bool {
    let k: &FlowKey = &pkt.key;
    // The tuple as the 8-byte words it is made of (`bpf_sock_tuple`: saddr, daddr, sport,
    // dport; IPv4 4-byte addresses, IPv6 16-byte ones, ports in network order), stored as
    // such: see `stack` for why not field by field.
    let ports = k.sport.to_be() as u64 | (k.dport.to_be() as u64) << 16;
    let (t, size) = if k.family == Family::V6 as u8 {
        let (s, d) = (words(&k.src), words(&k.dst));
        (Aligned([s[0], s[1], d[0], d[1], ports]), 36)
    } else {
        let addrs = word(&k.src, 0) as u64 | (word(&k.dst, 0) as u64) << 32;
        (Aligned([addrs, ports, 0, 0, 0]), 12)
    };
    const { assert!(core::mem::size_of::<bpf_sock_tuple>() == 36) };
    // A negative (as s32) namespace id means the ingress device's own namespace.
    let netns = if netns == u32::MAX { u64::MAX } else { netns as u64 };
    // SAFETY: `t` is a valid tuple of `size` bytes; the socket, if any, is released below
    // on every path.
    let sk: *mut bpf_sock =
        unsafe { bpf_skc_lookup_tcp(ctx.as_ptr(), t.0.as_ptr().cast_mut().cast(), size, netns, 0) };
    if sk.is_null() {
        return false;
    }
    // SAFETY: `sk` is a live sock_common the verifier lets us read `state` from.
    let local = match unsafe { (*sk).state } {
        TCP_LISTEN => !pkt.icmp_error && syncookie(sk, frame, pkt),
        TCP_TIME_WAIT | TCP_NEW_SYN_RECV | TCP_SYN_RECV | TCP_SYN_SENT | TCP_CLOSE => {
            proof == Proof::AnySocket
        }
        _ => true,
    };
    // SAFETY: releases the reference taken by the lookup.
    unsafe { bpf_sk_release(sk.cast()) };
    local
}

/// Whether the ACK in the frame carries a valid SYN cookie of listener `sk`.
#[inline(always)]
fn syncookie(sk: *mut bpf_sock, frame: &Frame, pkt: &Packet) -> bool {
    let th = match frame.at::<TCP_HLEN>(pkt.l4) {
        Some(p) => p,
        None => return false,
    };
    // SAFETY (both arms): pointers into the packet, checked against data_end for the sizes
    // passed; the helper only reads them.
    let rc = if pkt.v6 {
        match frame.at::<IPV6_HLEN>(pkt.l2_len) {
            Some(ip) => unsafe {
                bpf_tcp_check_syncookie(sk.cast(), ip.cast(), IPV6_HLEN as u32, th.cast(), TCP_HLEN as u32)
            },
            None => return false,
        }
    } else {
        match frame.at::<IPV4_HLEN>(pkt.l2_len) {
            Some(ip) => unsafe {
                bpf_tcp_check_syncookie(sk.cast(), ip.cast(), IPV4_HLEN as u32, th.cast(), TCP_HLEN as u32)
            },
            None => return false,
        }
    };
    rc == 0
}

/// A FlowKey address (at an 8-byte boundary) as its two 8-byte words, in memory order.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u64; 2] {
    let p = a.as_ptr().cast::<u64>();
    // SAFETY: 16 readable bytes (aligned: a FlowKey's fields, but read unaligned anyway).
    unsafe { [p.read_unaligned(), p.add(1).read_unaligned()] }
}
