//! Which addresses are this host's own: its VIP addresses (the `ADDR_FILTER` slot, then its
//! `ADDRS` entry, or `VIP_ADDRS` for an overflowing slot) and its tunnel addresses
//! (`CONFIG`). Decapsulation accepts only inner packets for them (§5), and the ICMP
//! responder never answers them (§8).

use anycast_common::{
    AddrEntry, AddrKey, AddrSlot, Family, LocalConfig,
    addr::{filter, filter_index_v4, filter_index_v6},
    config::{CONFIG_TUNNEL_V4, CONFIG_TUNNEL_V6},
};

use crate::{
    maps::{ADDR_FILTER, ADDRS, VIP_ADDRS},
    stack::Aligned,
};

/// The `ADDR_FILTER` slot at `index` (an empty one if out of range).
#[inline(always)]
pub fn slot(index: u32) -> AddrSlot {
    ADDR_FILTER.get(index).copied().unwrap_or_default()
}

/// The `ADDRS` entry of a VIP slot without `OVERFLOW`, if `addr` (of `family`) is its
/// address: another address on the same slot is none of our VIPs.
#[inline(always)]
pub fn entry(slot: AddrSlot, addr: &[u8; 16], family: u8) -> Option<&'static AddrEntry> {
    ADDRS.get(slot.id as u32).filter(|e| e.family == family && e.addr == *addr)
}

/// An address as the maps key it: 16 bytes (IPv4 in the first four) and its family (on the
/// stack: [`Aligned`]).
#[inline(always)]
pub fn key(addr: &[u8; 16], v6: bool) -> Aligned<AddrKey> {
    let family = if v6 { Family::V6 as u8 } else { Family::V4 as u8 };
    let mut k = core::mem::MaybeUninit::<Aligned<AddrKey>>::uninit();
    let p = k.as_mut_ptr().cast::<u64>();
    let a = addr.as_ptr().cast::<u64>();
    // SAFETY: the key written whole as two 8-byte words (the address) and one 4-byte word
    // (family, zero padding) at aligned offsets of an 8-byte aligned value: field by field,
    // LLVM would copy it at misaligned offsets (see `stack`). `addr` has 16 readable bytes.
    unsafe {
        p.write(a.read_unaligned());
        p.add(1).write(a.add(1).read_unaligned());
        p.add(2).cast::<u32>().write(family as u32);
        k.assume_init()
    }
}

/// Whether `addr` is the address of one of our VIPs (any port, any protocol).
#[inline(always)]
pub fn is_vip(addr: &AddrKey) -> bool {
    let index = if addr.family == Family::V6 as u8 {
        filter_index_v6(addr.addr)
    } else {
        filter_index_v4([addr.addr[0], addr.addr[1], addr.addr[2], addr.addr[3]])
    };
    let slot = slot(index);
    if slot.bits & filter::VIP == 0 {
        return false;
    }
    if slot.bits & filter::OVERFLOW != 0 {
        // SAFETY: only the presence of the entry is used.
        return unsafe { VIP_ADDRS.get(addr) }.is_some();
    }
    entry(slot, &addr.addr, addr.family).is_some()
}

/// Whether `addr` is our tunnel address of its family.
#[inline(always)]
pub fn is_tunnel(cfg: &LocalConfig, addr: &AddrKey) -> bool {
    if addr.family == Family::V6 as u8 {
        cfg.flags & CONFIG_TUNNEL_V6 != 0 && addr.addr == cfg.tunnel_v6
    } else {
        let a = &addr.addr;
        cfg.flags & CONFIG_TUNNEL_V4 != 0 && [a[0], a[1], a[2], a[3]] == cfg.tunnel_v4
    }
}
