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
/// site slot reused for another site does not inherit the old one's flows; and, for a TCP
/// flow forwarded to another site, whether its client closed and when it was last seen
/// since ([`flow_state`]).
///
/// Byte-compatible with release 0.1.0's `{ site: u32, generation: u32 }`: `site` is the
/// low (little-endian) half of that u32 (a site index is below `MAX_SITES`, 1024), `state`
/// its high half, always 0 there. Every entry an older build wrote therefore reads "not
/// closing", i.e. alive, and the flow table is shared across an upgrade as it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub site: u16,
    /// 0, or [`FLOW_CLOSING`] ‖ the coarse time last seen ([`flow_state`]).
    pub state: u16,
    pub generation: u32,
}

/// Set in [`FlowValue::state`] once the client of a pinned TCP flow sent a FIN or a RST
/// (sticky: the ACKs of a half-closed connection keep it).
pub const FLOW_CLOSING: u16 = 1 << 15;

/// Units of a closing flow's time: 2^32 ns (~4.29 s) of `CLOCK_MONOTONIC_COARSE`
/// (`bpf_ktime_get_coarse_ns`).
pub const STATE_UNIT_SHIFT: u32 = 32;

/// Bits of a closing flow's time: it wraps every 2^15 units (~39 h).
pub const STATE_TIME_BITS: u32 = 15;

/// Mask of a closing flow's time.
pub const STATE_TIME_MASK: u16 = (1 << STATE_TIME_BITS) - 1;

/// The state of a closing flow last seen at `now_ns`: [`FLOW_CLOSING`] ‖ the time in units
/// of 2^32 ns, modulo 2^15. A reader can only tell its age modulo 2^15 units, so a flow
/// silent for longer than ~39 h may look lately seen: the wrap only ever makes a pin look
/// younger, i.e. alive, never older.
#[inline(always)]
pub const fn flow_state(now_ns: u64) -> u16 {
    FLOW_CLOSING | ((now_ns >> STATE_UNIT_SHIFT) as u16 & STATE_TIME_MASK)
}

/// The time (in units, modulo 2^15) a closing flow was last seen; `None` for a flow whose
/// client has not closed.
#[inline(always)]
pub const fn closing_since(state: u16) -> Option<u16> {
    if state & FLOW_CLOSING != 0 { Some(state & STATE_TIME_MASK) } else { None }
}

/// How many units ago a closing flow was last seen, for a reader at `now_units`
/// (`CLOCK_MONOTONIC_COARSE` >> [`STATE_UNIT_SHIFT`], not wrapped). Modulo 2^15: the wrap
/// only ever makes it smaller than the true age. Counted in whole units: it may be one
/// more than the true age in units (seen at the end of a unit, read at the start of the
/// next), so a reader that must not take a pin for over too early adds a unit to its grace.
#[inline(always)]
pub const fn closing_age(since: u16, now_units: u64) -> u64 {
    ((now_units as u16).wrapping_sub(since) & STATE_TIME_MASK) as u64
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
