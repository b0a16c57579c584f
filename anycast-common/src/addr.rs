//! Addresses as the maps store them: 16 raw network-order bytes plus a family tag, with an
//! IPv4 address in the first four bytes and the rest zero.

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

/// An address as a hash-map key (tunnel peers).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AddrKey {
    pub addr: [u8; 16],
    /// [`Family`] as u8.
    pub family: u8,
    /// Always zero: hash keys are compared bytewise, padding included.
    pub pad: [u8; 3],
}

impl AddrKey {
    pub const fn v4(a: [u8; 4]) -> Self {
        AddrKey {
            addr: [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            family: Family::V4 as u8,
            pad: [0; 3],
        }
    }

    pub const fn v6(a: [u8; 16]) -> Self {
        AddrKey { addr: a, family: Family::V6 as u8, pad: [0; 3] }
    }
}

/// Index into [`crate::maps::ADDR_FILTER`] for an IPv4 address: the two 16-bit halves
/// folded together. Cheap enough to run on every packet, which is the point: the filter
/// keeps the host's other traffic off the hash lookups.
#[inline(always)]
pub const fn filter_index_v4(a: [u8; 4]) -> u32 {
    (u16::from_ne_bytes([a[0], a[1]]) ^ u16::from_ne_bytes([a[2], a[3]])) as u32
}

/// Index into [`crate::maps::ADDR_FILTER`] for an IPv6 address: its eight 16-bit words
/// folded together.
#[inline(always)]
pub const fn filter_index_v6(a: [u8; 16]) -> u32 {
    let mut h = 0u16;
    let mut i = 0;
    while i < 16 {
        h ^= u16::from_ne_bytes([a[i], a[i + 1]]);
        i += 2;
    }
    h as u32
}

/// Bits of an [`crate::maps::ADDR_FILTER`] entry.
pub mod filter {
    /// Some VIP may have this address.
    pub const VIP: u8 = 1;
    /// This may be one of the host's tunnel addresses (decapsulation candidate).
    pub const TUNNEL: u8 = 2;
}
