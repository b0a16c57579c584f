//! Addresses as the maps store them: 16 raw network-order bytes plus a family tag, with an
//! IPv4 address in the first four bytes and the rest zero.

use crate::{VipInfo, wire::word};

/// Address family tag used in every key. The values are the IP version numbers.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4 = 4,
    V6 = 6,
}

impl Family {
    pub const fn from_u8(v: u8) -> Option<Family> {
        match v {
            4 => Some(Family::V4),
            6 => Some(Family::V6),
            _ => None,
        }
    }
}

/// An address as a hash-map key (tunnel peers, VIP addresses).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AddrKey {
    pub addr: [u8; 16],
    /// [`Family`] as u8.
    pub family: u8,
    /// Always zero: hash keys are compared bytewise, padding included.
    pub pad: [u8; 3],
}

impl AddrKey {
    pub const fn v4(a: [u8; 4]) -> Self {
        AddrKey { addr: crate::wire::v4_in_16(a), family: Family::V4 as u8, pad: [0; 3] }
    }

    pub const fn v6(a: [u8; 16]) -> Self {
        AddrKey { addr: a, family: Family::V6 as u8, pad: [0; 3] }
    }
}

/// Fibonacci hashing's multiplier (2^32 / φ): spreads structured inputs (addresses that
/// differ in a few bits, byte permutations) over the whole index range.
const FILTER_MIX: u32 = 0x9E37_79B1;

/// Index into [`crate::maps::ADDR_FILTER`] for an IPv4 address: the top 16 bits of a
/// multiplicative hash. Cheap enough to run on every packet, which is the point: the filter
/// keeps the host's other traffic off the hash lookups. (An XOR fold would make it easy to
/// find host addresses that share a VIP's slot, such as a.b.c.d and c.d.a.b.)
#[inline(always)]
pub const fn filter_index_v4(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a).wrapping_mul(FILTER_MIX) >> 16
}

/// Index into [`crate::maps::ADDR_FILTER`] for an IPv6 address: its four 32-bit words,
/// rotated apart and folded, then hashed as for IPv4.
#[inline(always)]
pub const fn filter_index_v6(a: [u8; 16]) -> u32 {
    let h =
        word(&a, 0) ^ word(&a, 4).rotate_left(8) ^ word(&a, 8).rotate_left(16) ^ word(&a, 12).rotate_left(24);
    h.wrapping_mul(FILTER_MIX) >> 16
}

/// Bits of an [`crate::maps::ADDR_FILTER`] entry.
pub mod filter {
    /// Some VIP may have this address.
    pub const VIP: u8 = 1;
    /// This may be one of the host's tunnel addresses (decapsulation candidate).
    pub const TUNNEL: u8 = 2;
    /// The slot's VIP addresses are not in [`crate::maps::ADDRS`]: two VIP addresses share
    /// the slot, or one has more than [`super::ADDR_PORTS`] entries. The data path then
    /// looks them up in the hash maps (`VIPS`, `VIP_ADDRS`), which hold every VIP always.
    pub const OVERFLOW: u8 = 4;
}

/// An [`crate::maps::ADDR_FILTER`] slot: the bits of the addresses that land on it and,
/// for a slot with `VIP` and without `OVERFLOW`, the [`crate::maps::ADDRS`] entry of its one
/// VIP address. 4 bytes, written with one store (a packet never sees half an update).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AddrSlot {
    /// [`filter`] bits.
    pub bits: u8,
    pub pad: u8,
    /// Index into [`crate::maps::ADDRS`].
    pub id: u16,
}

/// Most (port, protocol) entries one address may have in [`AddrEntry`]; an address with
/// more is looked up in the hash maps ([`filter::OVERFLOW`]).
pub const ADDR_PORTS: usize = 8;

/// One (port, protocol) of a VIP address and the VIP it is (as [`crate::maps::VIPS`] has it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AddrPort {
    /// Host byte order; 0 = any port of this protocol.
    pub port: u16,
    /// IP protocol number; 0 marks an unused entry.
    pub proto: u8,
    pub pad: u8,
    pub vip: VipInfo,
}

/// A VIP address and all its (port, protocol) entries: the VIP match of §4 with one
/// array lookup (inlined by the verifier) instead of up to two hash lookups (~20 ns each).
/// Written whole into an unused [`crate::maps::ADDRS`] slot before its filter slot is pointed
/// at it, so a packet never reads an entry being written.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AddrEntry {
    pub addr: [u8; 16],
    /// [`Family`] as u8.
    pub family: u8,
    /// Entries of `ports` in use (the first `count`).
    pub count: u8,
    pub pad: [u8; 6],
    pub ports: [AddrPort; ADDR_PORTS],
}
