//! Addresses as the maps store them: 16 raw network-order bytes plus a family tag, with an
//! IPv4 address in the first four bytes and the rest zero.

use crate::wire::word;

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
}
