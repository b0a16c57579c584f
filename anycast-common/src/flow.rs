//! Flow identity: the key of the flow table, the keyed flow hash, and every value the data
//! path derives from that hash (Maglev slot, embryonic-table slot and tag, GUE source port,
//! IPv6 flow label). The controller and the tests use the same functions to predict where
//! a flow goes; the tests check them against an independent SipHash implementation.

use crate::addr::Family;

/// A flow as the data path sees it, client → VIP direction.
///
/// Ports are in host byte order. For IP fragments the ports are zero (the later fragments
/// carry none), so every fragment of a datagram maps to the same flow and therefore the same
/// site; an ICMP error about a VIP flow is keyed by the reversed inner tuple, i.e. as the
/// flow it belongs to.
///
/// 8-byte aligned so that the BPF backend may read it with wide loads (the hash reads the
/// addresses as u32/u64 words) and the kernel's jhash2 walks it in 4-byte words.
#[repr(C, align(8))]
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

/// The secret key of the flow hash (SipHash's 128-bit key as two little-endian words).
///
/// Every host of a site must use the same key (all hosts of a site must build the same
/// Maglev choice for the same flow, or an ECMP change moves flows); it is secret so that
/// nobody outside can compute which source ports land on which site, GUE source port or
/// receive queue, and aim a flood at one of them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct HashKey {
    pub k0: u64,
    pub k1: u64,
}

impl HashKey {
    /// The key from its 16 bytes (as `siphasher::sip::SipHasher13::new_with_key` reads them).
    pub const fn from_bytes(b: [u8; 16]) -> HashKey {
        HashKey {
            k0: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            k1: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }

    pub const fn to_bytes(self) -> [u8; 16] {
        let a = self.k0.to_le_bytes();
        let b = self.k1.to_le_bytes();
        [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
    }
}

/// SipHash's four state words.
#[derive(Clone, Copy)]
struct Sip {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
}

impl Sip {
    #[inline(always)]
    const fn new(k: &HashKey) -> Sip {
        Sip {
            v0: k.k0 ^ 0x736f_6d65_7073_6575,
            v1: k.k1 ^ 0x646f_7261_6e64_6f6d,
            v2: k.k0 ^ 0x6c79_6765_6e65_7261,
            v3: k.k1 ^ 0x7465_6462_7974_6573,
        }
    }

    #[inline(always)]
    const fn round(mut self) -> Sip {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13);
        self.v1 ^= self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16);
        self.v3 ^= self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21);
        self.v3 ^= self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17);
        self.v1 ^= self.v2;
        self.v2 = self.v2.rotate_left(32);
        self
    }

    /// One message word, SipHash-1-3: one compression round per word.
    #[inline(always)]
    const fn word(mut self, m: u64) -> Sip {
        self.v3 ^= m;
        self = self.round();
        self.v0 ^= m;
        self
    }

    /// The final block of a message of `len` bytes, `len` a multiple of 8 (no tail bytes),
    /// and the three finalisation rounds.
    #[inline(always)]
    const fn finish(self, len: u64) -> u64 {
        let mut s = self.word(len << 56);
        s.v2 ^= 0xff;
        s = s.round().round().round();
        s.v0 ^ s.v1 ^ s.v2 ^ s.v3
    }
}

// The address words, taken as whole chunks of the arrays rather than assembled byte by
// byte: the BPF backend then reads each with one load (from bytes it assembled four or
// eight loads, shifts and ors for some of them).

/// Bytes 0..4 of an address, little-endian.
#[inline(always)]
const fn first32(b: &[u8; 16]) -> u64 {
    u32::from_le_bytes(*b.first_chunk::<4>().unwrap()) as u64
}

/// Bytes 0..8 (`high` false) or 8..16 of an address, little-endian.
#[inline(always)]
const fn half64(b: &[u8; 16], high: bool) -> u64 {
    let c = if high { b.last_chunk::<8>() } else { b.first_chunk::<8>() };
    u64::from_le_bytes(*c.unwrap())
}

/// The flow hash: SipHash-1-3 under `key` of the flow's bytes
///
/// - IPv4: `src[0..4] ‖ dst[0..4] ‖ sport ‖ dport ‖ proto ‖ 0 0 0` (16 bytes),
/// - IPv6: `src ‖ dst ‖ sport ‖ dport ‖ proto ‖ 0 0 0` (40 bytes),
///
/// ports as 2 little-endian bytes each. SipHash because the hash must be a keyed
/// pseudo-random function (the kernel keys its own flow hash, `__skb_get_hash`, with SipHash
/// for the same reason); the reduced-round 1-3 variant (the one Rust's standard HashMap
/// uses) because it runs on every new flow. Written here rather than taken from a crate
/// because it must compile for the BPF target, with fixed-size messages the verifier can
/// follow.
#[inline(always)]
pub const fn flow_hash(k: &FlowKey, key: &HashKey) -> u64 {
    let ports = k.sport as u64 | (k.dport as u64) << 16 | (k.proto as u64) << 32;
    let s = Sip::new(key);
    if k.family == Family::V4 as u8 {
        s.word(first32(&k.src) | first32(&k.dst) << 32).word(ports).finish(16)
    } else {
        s.word(half64(&k.src, false))
            .word(half64(&k.src, true))
            .word(half64(&k.dst, false))
            .word(half64(&k.dst, true))
            .word(ports)
            .finish(40)
    }
}

/// Slot of a Maglev table of `m` entries for flow hash `h`: Lemire's multiply-shift of the
/// hash's low 32 bits (uniform over `0..m`, no division on the packet path).
#[inline(always)]
pub const fn maglev_slot(h: u64, m: u32) -> u32 {
    ((h as u32 as u64 * m as u64) >> 32) as u32
}

/// Number of slots of the embryonic-flow table ([`crate::maps::EMBRYOS`]).
pub const EMBRYO_SLOTS: u32 = 1 << 16;

/// Slot of the embryonic-flow table: the hash's top 16 bits.
#[inline(always)]
pub const fn embryo_slot(h: u64) -> u32 {
    (h >> 48) as u32
}

/// An embryonic entry: which site the flow's SYN went to, tagged with 32 other bits of the
/// hash so that another flow landing on the same slot is not taken for it. One 64-bit word,
/// written and read with single 8-byte accesses (so never torn across CPUs).
#[inline(always)]
pub const fn embryo_entry(h: u64, site: u32, generation: u32) -> u64 {
    embryo_tag(h) | ((site as u64 & 0xffff) << 16) | (generation as u64 & 0xffff)
}

/// The tag bits of an embryonic entry for hash `h` (its upper 32 bits).
#[inline(always)]
pub const fn embryo_tag(h: u64) -> u64 {
    (h << 16) & 0xffff_ffff_0000_0000
}

/// Site index of an embryonic entry.
#[inline(always)]
pub const fn embryo_site(e: u64) -> u32 {
    ((e >> 16) & 0xffff) as u32
}

/// Low 16 bits of the site generation recorded in an embryonic entry.
#[inline(always)]
pub const fn embryo_generation(e: u64) -> u32 {
    (e & 0xffff) as u32
}

/// GUE (UDP) source port of a flow: the hash in 0xC000..=0xFFFF (RFC 6335 dynamic range),
/// so the receiver's RSS spreads flows over its queues.
#[inline(always)]
pub const fn gue_source_port(h: u64) -> u16 {
    0xC000 | ((h >> 32) as u16 & 0x3FFF)
}

/// IPv6 outer flow label of a flow (RFC 6438: the tunnel's ECMP/RSS entropy).
#[inline(always)]
pub const fn flow_label(h: u64) -> u32 {
    (h >> 32) as u32 & 0xF_FFFF
}

/// Number of slots of the liveness table of pinned TCP flows ([`crate::maps::FLOW_SEEN`]).
pub const SEEN_SLOTS: u32 = 1 << 18;

/// Slot of the liveness table: hash bits 32..50.
#[inline(always)]
pub const fn seen_slot(h: u64) -> u32 {
    (h >> 32) as u32 & (SEEN_SLOTS - 1)
}

/// The tag bits of a liveness entry for hash `h`: its low 32 bits, in the entry's upper half.
#[inline(always)]
pub const fn seen_tag(h: u64) -> u64 {
    h << 32
}

/// Set in a liveness entry once the client sent a FIN or a RST (sticky: the ACKs of a
/// half-closed connection keep it).
pub const SEEN_CLOSING: u64 = 1 << 31;

/// Units of a liveness entry's time: 2^30 ns (~1.07 s) of `CLOCK_MONOTONIC_COARSE`
/// (`bpf_ktime_get_coarse_ns`).
pub const SEEN_UNIT_SHIFT: u32 = 30;

/// A monotonic time in ns as a liveness entry's time (31 bits: wraps after 73 years).
#[inline(always)]
pub const fn seen_time(ns: u64) -> u64 {
    (ns >> SEEN_UNIT_SHIFT) & (SEEN_CLOSING - 1)
}

/// A liveness entry: which flow (tag), whether it is closing, when it was last seen. One
/// 64-bit word, read and written with single 8-byte accesses.
///
/// `update`: what a packet of the flow with hash `h` at time `now_ns` (`closing`: it carries
/// FIN or RST) makes of entry `old`; `None` when `old` says it already (same flow, same
/// closing bit, same time unit), so that the data path stores at most about once a second
/// per flow. Another flow's entry in the slot is overwritten: the flow whose entry it was
/// is then of unknown liveness (the controller takes it as live).
#[inline(always)]
pub const fn seen_update(old: u64, h: u64, now_ns: u64, closing: bool) -> Option<u64> {
    let tag = seen_tag(h);
    let same = old & 0xffff_ffff_0000_0000 == tag;
    let new = seen_entry(h, now_ns, closing || (same && old & SEEN_CLOSING != 0));
    if same && new == old { None } else { Some(new) }
}

/// The liveness entry of the flow with hash `h` seen at `now_ns`.
#[inline(always)]
pub const fn seen_entry(h: u64, now_ns: u64, closing: bool) -> u64 {
    seen_tag(h) | if closing { SEEN_CLOSING } else { 0 } | seen_time(now_ns)
}

/// What a liveness entry says about the flow with hash `h`: `Some((closing, time))` when
/// the entry is that flow's.
#[inline(always)]
pub const fn seen_of(e: u64, h: u64) -> Option<(bool, u64)> {
    if e == 0 || e & 0xffff_ffff_0000_0000 != seen_tag(h) {
        return None;
    }
    Some((e & SEEN_CLOSING != 0, e & (SEEN_CLOSING - 1)))
}
