//! §7: the next hop towards a site's tunnel endpoint, from `bpf_fib_lookup`, and a short
//! per-site cache of its successful answers.
//!
//! The lookup (route, nexthop, neighbour) costs ~190 ns on the reference VM, three times the
//! whole forwarding budget, while its answer for one site changes only with routes and
//! neighbours. A success is therefore reused for `FIB_CACHE_TTL_JIFFIES` (`bpf_jiffies64`
//! is nearly free, unlike the ns clocks): a route or neighbour change takes effect within
//! that time. Failures are never cached, so NO_NEIGH and friends are re-asked every packet.

use anycast_common::{
    Exception, NextHop,
    maps::FIB_CACHE_TTL_JIFFIES,
    wire::{word, words},
};
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams,
    },
    helpers::{bpf_fib_lookup, bpf_jiffies64},
    programs::XdpContext,
};

use crate::{frame::Macs, maps::FIB_CACHE, stack::Aligned};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What the FIB says about an encapsulated packet of `tot_len` bytes.
pub enum Route {
    /// Send it: MACs and egress.
    Via { egress: u32, macs: Macs },
    /// Above the route MTU (the kernel's FRAG_NEEDED).
    TooBig { mtu: u16 },
}

/// The lookup's input, all in the outer (tunnel) family.
pub struct Query<'a> {
    pub v6: bool,
    /// Outer protocol: 4, 41 or 17.
    pub proto: u8,
    pub tos: u8,
    /// The outer source address as the 32-bit words of its bytes (network order kept).
    pub src: &'a [u32; 4],
    /// Outer IP length.
    pub tot_len: u16,
}

#[inline(always)]
pub fn next_hop(ctx: &XdpContext, site: u32, dst: &[u8; 16], q: &Query) -> Result<Route, Exception> {
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: plain helper call, no arguments.
    let now = unsafe { bpf_jiffies64() };
    let cache = FIB_CACHE.get_ptr_mut(site);
    if let Some(c) = cache {
        // SAFETY: this CPU's slot; nothing else writes it while we run.
        let c = unsafe { &*c };
        if now < c.expires && c.ingress == ingress && c.dst == *dst {
            if q.tot_len > c.mtu {
                return Ok(Route::TooBig { mtu: c.mtu });
            }
            // SAFETY: `dmac` and `smac` are adjacent fields of the entry (checked below).
            return Ok(Route::Via { egress: c.egress, macs: unsafe { Macs::read(c.dmac.as_ptr()) } });
        }
    }

    // SAFETY: an all-zero bpf_fib_lookup is the documented "no input" state.
    let mut p: Aligned<FibParams> = Aligned(unsafe { core::mem::zeroed() });
    p.l4_protocol = q.proto;
    p.__bindgen_anon_1.tot_len = q.tot_len;
    p.ifindex = ingress;
    if q.v6 {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = *q.src;
        p.__bindgen_anon_4.ipv6_dst = words(dst);
    } else {
        p.family = AF_INET;
        p.__bindgen_anon_2.tos = q.tos;
        p.__bindgen_anon_3.ipv4_src = q.src[0];
        p.__bindgen_anon_4.ipv4_dst = word(dst, 0);
    }
    // SAFETY: `p` is a valid bpf_fib_lookup of the size passed.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut p.0, core::mem::size_of::<FibParams>() as i32, 0) };
    // SAFETY: SUCCESS and FRAG_NEEDED both store the route MTU in the tot_len union member.
    let mtu = unsafe { p.__bindgen_anon_1.mtu_result };
    let (smac, dmac) = macs(&p);
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            if let Some(c) = cache {
                // SAFETY: this CPU's slot.
                unsafe {
                    *c = NextHop {
                        dst: *dst,
                        ingress,
                        egress: p.ifindex,
                        expires: now + FIB_CACHE_TTL_JIFFIES,
                        mtu,
                        dmac,
                        smac,
                        pad: [0; 2],
                    };
                }
            }
            Ok(Route::Via { egress: p.ifindex, macs: Macs::new(dmac, smac) })
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Ok(Route::TooBig { mtu }),
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(Exception::FibNoNeigh),
        _ => Err(Exception::FibFailed),
    }
}

// A cached next hop's MACs are read as the 12 bytes of an Ethernet header.
const _: () = assert!(core::mem::offset_of!(NextHop, smac) == core::mem::offset_of!(NextHop, dmac) + 6);

/// `smac` and `dmac` of a lookup's answer, read as the two aligned 8-byte words that hold
/// them (bytes 48..64: VLAN proto and TCI, smac, dmac): read as fields, LLVM would load
/// them with 4-byte loads at offsets 52 and 58, which the verifier refuses on the stack.
#[inline(always)]
fn macs(p: &Aligned<FibParams>) -> ([u8; 6], [u8; 6]) {
    const _: () =
        assert!(core::mem::size_of::<FibParams>() == 64 && core::mem::offset_of!(FibParams, smac) == 52);
    // SAFETY: 64 bytes at an 8-byte boundary, read as plain integers.
    let w = unsafe { &*(&p.0 as *const FibParams as *const [u64; 8]) };
    let (a, b) = (w[6].to_le_bytes(), w[7].to_le_bytes());
    ([a[4], a[5], a[6], a[7], b[0], b[1]], [b[2], b[3], b[4], b[5], b[6], b[7]])
}
