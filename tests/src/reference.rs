//! The data path's flow hash and the values derived from it, written again from their
//! specification in docs/datapath.md §6–§7 with an independent SipHash implementation (the
//! `siphasher` crate), so that every prediction a test makes of where a flow goes, of its
//! GUE source port or its IPv6 flow label, is not computed by the code under test.

use std::hash::Hasher;

use anycast_common::FlowKey;
use siphasher::sip::SipHasher13;

/// The flow hash key of every test world and test daemon config (`[datapath] hash_key`).
pub const KEY: [u8; 16] = testkit::daemon::HASH_KEY;

/// SipHash-1-3 under `key` of `src ‖ dst ‖ sport ‖ dport ‖ proto ‖ 0 0 0` (4-byte
/// addresses for IPv4, 16 for IPv6; ports little-endian).
pub fn flow_hash(k: &FlowKey, key: &[u8; 16]) -> u64 {
    let n = if k.family == anycast_common::Family::V4 as u8 { 4 } else { 16 };
    let mut h = SipHasher13::new_with_key(key);
    h.write(&k.src[..n]);
    h.write(&k.dst[..n]);
    h.write(&k.sport.to_le_bytes());
    h.write(&k.dport.to_le_bytes());
    h.write(&[k.proto, 0, 0, 0]);
    h.finish()
}

/// The bucket of a table of `m` entries: the low 32 bits of the hash times `m`, high word.
pub fn maglev_slot(hash: u64, m: usize) -> usize {
    (((hash & 0xffff_ffff) * m as u64) >> 32) as usize
}

/// The entry a flow's hash picks from `table`.
pub fn bucket<T: Copy>(table: &[T], k: &FlowKey) -> T {
    table[maglev_slot(flow_hash(k, &KEY), table.len())]
}

/// GUE source port: 0xC000 | bits 32..46 of the hash.
pub fn gue_source_port(hash: u64) -> u16 {
    0xc000 | ((hash >> 32) & 0x3fff) as u16
}

/// IPv6 outer flow label: bits 32..52 of the hash.
pub fn flow_label(hash: u64) -> u32 {
    ((hash >> 32) & 0xf_ffff) as u32
}

/// Release 0.1.0's flow hash (unkeyed), written from its definition, to predict where that
/// release steers a flow before an upgrade: murmur3's 32-bit block mix over the ports word
/// (sport << 16 | dport) seeded with `0x5bd1e995 ^ proto`, then each address word of src
/// and dst in turn (one each for IPv4, four each, interleaved, for IPv6; words in memory
/// order), murmur3's finaliser; the bucket was `hash % m`.
pub fn v1_bucket<T: Copy>(table: &[T], k: &FlowKey) -> T {
    fn mix(h: u32, k: u32) -> u32 {
        let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
        (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
    }
    let word = |a: &[u8; 16], i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    let mut h = mix(0x5bd1_e995 ^ u32::from(k.proto), (u32::from(k.sport) << 16) | u32::from(k.dport));
    let words = if k.family == anycast_common::Family::V4 as u8 { 1 } else { 4 };
    for i in 0..words {
        h = mix(h, word(&k.src, 4 * i));
        h = mix(h, word(&k.dst, 4 * i));
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    table[h as usize % table.len()]
}
