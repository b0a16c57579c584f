//! Flow identity: the key of the flow table and the input of the Maglev lookup.

use crate::addr::Family;

/// A flow as the data path sees it, client → VIP direction.
///
/// Ports are in host byte order. For IP fragments the ports are zero (the later fragments
/// carry none), so every fragment of a datagram maps to the same flow and therefore the same
/// site; an ICMP error about a VIP flow is keyed by the reversed inner tuple, i.e. as the
/// flow it belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// [`Family`] as u8.
    pub family: u8,
    /// Always zero: the kernel hashes the whole key, padding included.
    pub pad: [u8; 2],
}

/// Where a flow went: the site index and that site's generation at the time, so that a
/// site slot reused for another site does not inherit the old one's flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub site: u32,
    pub generation: u32,
}

#[inline(always)]
const fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// murmur3's 32-bit block mix.
#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

/// murmur3's finaliser: every input bit reaches every output bit, which the Maglev modulo
/// and the GUE source port (receiver RSS) both rely on.
#[inline(always)]
const fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The flow hash shared by the data path (Maglev slot, GUE source port) and the controller
/// and tests (to predict where a flow goes). Hand-rolled rather than a crate because it must
/// compile for the BPF target and stay within the verifier's instruction budget; an IPv4 key
/// mixes 3 words instead of 9.
#[inline(always)]
pub const fn flow_hash(k: &FlowKey) -> u32 {
    let ports = ((k.sport as u32) << 16) | k.dport as u32;
    let mut h = mix(0x5bd1_e995 ^ k.proto as u32, ports);
    if k.family == Family::V4 as u8 {
        h = mix(h, word(&k.src, 0));
        h = mix(h, word(&k.dst, 0));
    } else {
        let mut i = 0;
        while i < 16 {
            h = mix(h, word(&k.src, i));
            h = mix(h, word(&k.dst, i));
            i += 4;
        }
    }
    fmix(h)
}
