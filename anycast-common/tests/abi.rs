//! The ABI the XDP program and the controller share: the flow hash against an independent
//! SipHash implementation (the `siphasher` crate), the values derived from it, and the size
//! and offset of every field the data path reads from a map key or value.

use std::{
    collections::HashSet,
    hash::Hasher,
    mem::{align_of, offset_of, size_of},
};

use anycast_common::{
    AddrEntry, AddrKey, AddrPort, AddrSlot, Exception, FlowKey, FlowValue, HashKey, LocalConfig, NextHop,
    SiteCounters, SiteInfo, VipCounters, VipInfo, VipKey,
    addr::ADDR_PORTS,
    config::{Bucket, Limit},
    counters::{Action, EXCEPTION_SLOTS, Event, exception_index},
    flow::{
        EMBRYO_SLOTS, FLOW_CLOSING, closing_age, closing_since, embryo_entry, embryo_generation, embryo_site,
        embryo_slot, embryo_tag, flow_hash, flow_label, flow_state, gue_source_port, maglev_slot,
    },
    maps,
};
use siphasher::sip::SipHasher13;

/// A small deterministic generator (xorshift64*), so that every run checks the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
        b
    }
}

/// The message the flow hash is documented to hash (anycast_common::flow::flow_hash).
fn message(k: &FlowKey) -> Vec<u8> {
    let n = if k.family == 4 { 4 } else { 16 };
    let mut m = Vec::new();
    m.extend_from_slice(&k.src[..n]);
    m.extend_from_slice(&k.dst[..n]);
    m.extend_from_slice(&k.sport.to_le_bytes());
    m.extend_from_slice(&k.dport.to_le_bytes());
    m.extend_from_slice(&[k.proto, 0, 0, 0]);
    m
}

fn reference(k: &FlowKey, key: [u8; 16]) -> u64 {
    let mut h = SipHasher13::new_with_key(&key);
    h.write(&message(k));
    h.finish()
}

fn random_key(rng: &mut Rng, family: u8) -> FlowKey {
    let mut k = FlowKey {
        src: rng.bytes(),
        dst: rng.bytes(),
        sport: rng.next() as u16,
        dport: rng.next() as u16,
        proto: [6, 17, 1, 58][rng.next() as usize % 4],
        family,
        pad: [0; 2],
    };
    if family == 4 {
        k.src[4..].fill(0);
        k.dst[4..].fill(0);
    }
    k
}

#[test]
fn flow_hash_is_siphash_1_3_of_the_documented_message() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for family in [4u8, 6] {
        for _ in 0..2000 {
            let key_bytes: [u8; 16] = rng.bytes();
            let k = random_key(&mut rng, family);
            assert_eq!(
                flow_hash(&k, &HashKey::from_bytes(key_bytes)),
                reference(&k, key_bytes),
                "family {family}, key {key_bytes:02x?}, flow {k:?}"
            );
        }
    }
}

#[test]
fn hash_key_bytes_round_trip_as_siphasher_reads_them() {
    let b: [u8; 16] = *b"0123456789abcdef";
    let k = HashKey::from_bytes(b);
    assert_eq!(k.to_bytes(), b);
    assert_eq!(k.k0, u64::from_le_bytes(*b"01234567"));
    assert_eq!(k.k1, u64::from_le_bytes(*b"89abcdef"));
}

/// Every byte the hash is documented to cover changes it: each address word (all four of
/// an IPv6 address, both directions), both ports, the protocol and the key; and nothing
/// outside the documented message does (IPv4 bytes 4..16, the padding).
#[test]
fn flow_hash_covers_every_field_and_nothing_else() {
    let mut rng = Rng(42);
    let key = HashKey::from_bytes(rng.bytes());
    for family in [4u8, 6] {
        let base = random_key(&mut rng, family);
        let h = flow_hash(&base, &key);
        let words = if family == 4 { 1 } else { 4 };
        for w in 0..words {
            for field in [0, 1] {
                let mut k = base;
                let a = if field == 0 { &mut k.src } else { &mut k.dst };
                a[w * 4] ^= 1;
                assert_ne!(flow_hash(&k, &key), h, "family {family} field {field} word {w}");
            }
        }
        let mut k = base;
        k.sport ^= 1;
        assert_ne!(flow_hash(&k, &key), h);
        let mut k = base;
        k.dport ^= 0x8000;
        assert_ne!(flow_hash(&k, &key), h);
        let mut k = base;
        k.proto ^= 1;
        assert_ne!(flow_hash(&k, &key), h);
        let other = HashKey { k0: key.k0 ^ 1, k1: key.k1 };
        assert_ne!(flow_hash(&base, &other), h);
        let mut k = base;
        k.pad = [0xff, 0xff];
        assert_eq!(flow_hash(&k, &key), h, "padding is not hashed");
    }
    let mut k = random_key(&mut rng, 4);
    let h = flow_hash(&k, &key);
    k.src[7] = 9;
    k.dst[15] = 9;
    assert_eq!(flow_hash(&k, &key), h, "IPv4 hashes 4 address bytes only");
}

/// The Maglev slot is uniform over 0..m for the prime sizes the controller uses, and the
/// other derived values stay in their ranges and use other bits of the hash.
#[test]
fn derived_values_are_uniform_and_in_range() {
    let mut rng = Rng(7);
    let key = HashKey::from_bytes(rng.bytes());
    let m = 65_537u32;
    let n = 2_000_000usize;
    let buckets = 64usize;
    let mut slot_hist = vec![0u32; buckets];
    let mut embryo_hist = vec![0u32; buckets];
    for _ in 0..n {
        let h = flow_hash(&random_key(&mut rng, 4), &key);
        let s = maglev_slot(h, m);
        assert!(s < m);
        slot_hist[(s as u64 * buckets as u64 / m as u64) as usize] += 1;
        let e = embryo_slot(h);
        assert!(e < EMBRYO_SLOTS);
        embryo_hist[(e as u64 * buckets as u64 / EMBRYO_SLOTS as u64) as usize] += 1;
        assert!(gue_source_port(h) >= 0xC000);
        assert!(flow_label(h) < 1 << 20);
    }
    for hist in [&slot_hist, &embryo_hist] {
        let expect = n as f64 / buckets as f64;
        let chi2: f64 = hist.iter().map(|&c| (c as f64 - expect).powi(2) / expect).sum();
        // 63 degrees of freedom: the 99.99th percentile is about 117.
        assert!(chi2 < 117.0, "chi² {chi2:.1} over {buckets} buckets: {hist:?}");
    }
    for small in [1u32, 2, 3, 7] {
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let s = maglev_slot(rng.next(), small);
            assert!(s < small);
            seen.insert(s);
        }
        assert_eq!(seen.len(), small as usize);
    }
}

#[test]
fn embryo_entries_carry_site_generation_and_a_tag_independent_of_the_slot() {
    let h = 0x1234_5678_9abc_def0u64;
    let e = embryo_entry(h, 1023, 0x1_0005);
    assert_eq!(embryo_site(e), 1023);
    assert_eq!(embryo_generation(e), 5, "low 16 bits of the generation");
    assert_eq!(e & 0xffff_ffff_0000_0000, embryo_tag(h));
    // Two hashes in the same slot (same top 16 bits) with different middle bits differ in tag.
    let other = h ^ (1 << 20);
    assert_eq!(embryo_slot(other), embryo_slot(h));
    assert_ne!(embryo_tag(other), embryo_tag(h));
}

#[test]
fn token_bucket_allows_the_burst_then_the_rate() {
    let limit = Limit::per_second(1000, 10);
    let mut b = Bucket::default();
    let t0 = 5_000_000_000u64;
    let burst = (0..100).filter(|_| b.take(&limit, t0)).count();
    assert_eq!(burst, 10);
    // One second later: 1000 more (the credit is capped at the burst, so spread them out).
    let mut allowed = 0;
    for i in 1..=2000u64 {
        allowed += usize::from(b.take(&limit, t0 + i * 500_000));
    }
    assert!((999..=1001).contains(&allowed), "{allowed} in one second at 1000/s");
    let mut never = Bucket::default();
    assert!(!never.take(&Limit::per_second(0, 5), t0));
    assert!(Bucket::default().take(&Limit::default(), 0), "cost 0 is unlimited");
}

#[test]
fn exception_slots_cover_every_reason_and_action_once() {
    let mut seen = HashSet::new();
    for e in Exception::ALL {
        for a in Action::ALL {
            let i = exception_index(e, a);
            assert!(i < EXCEPTION_SLOTS);
            assert!(seen.insert(i));
        }
    }
    assert_eq!(seen.len(), EXCEPTION_SLOTS as usize);
    for (i, e) in Exception::ALL.iter().enumerate() {
        assert_eq!(*e as usize, i);
    }
    for (i, e) in Event::ALL.iter().enumerate() {
        assert_eq!(*e as usize, i);
    }
    let names: HashSet<_> = Exception::ALL.iter().map(|e| e.name()).collect();
    assert_eq!(names.len(), Exception::ALL.len());
    let names: HashSet<_> = Event::ALL.iter().map(|e| e.name()).collect();
    assert_eq!(names.len(), Event::ALL.len());
}

/// Sizes and offsets the data path and the kernel depend on: hash keys must have no
/// implicit padding (the kernel hashes every byte), 8-byte alignment for wide loads.
#[test]
fn map_keys_and_values_have_their_documented_layout() {
    assert_eq!((size_of::<FlowKey>(), align_of::<FlowKey>()), (40, 8));
    assert_eq!([offset_of!(FlowKey, src), offset_of!(FlowKey, dst), offset_of!(FlowKey, sport)], [0, 16, 32]);
    assert_eq!(
        [offset_of!(FlowKey, dport), offset_of!(FlowKey, proto), offset_of!(FlowKey, family)],
        [34, 36, 37]
    );
    assert_eq!(size_of::<FlowValue>(), 8);
    assert_eq!(
        [offset_of!(FlowValue, site), offset_of!(FlowValue, state), offset_of!(FlowValue, generation)],
        [0, 2, 4]
    );
    assert_eq!(size_of::<VipKey>(), 20);
    assert_eq!(
        [offset_of!(VipKey, port), offset_of!(VipKey, proto), offset_of!(VipKey, family)],
        [16, 18, 19]
    );
    assert_eq!(size_of::<VipInfo>(), 8);
    assert_eq!(size_of::<AddrKey>(), 20);
    assert_eq!((size_of::<AddrSlot>(), align_of::<AddrSlot>()), (4, 4));
    assert_eq!(size_of::<AddrPort>(), 12);
    assert_eq!((size_of::<AddrEntry>(), align_of::<AddrEntry>()), (24 + 12 * ADDR_PORTS, 8));
    assert_eq!(
        [offset_of!(AddrEntry, family), offset_of!(AddrEntry, count), offset_of!(AddrEntry, ports)],
        [16, 17, 24]
    );
    assert_eq!(offset_of!(AddrKey, family), 16);
    assert_eq!(size_of::<SiteInfo>(), 28);
    assert_eq!(size_of::<NextHop>(), 48);
    assert_eq!(size_of::<SiteCounters>(), 56);
    assert_eq!(size_of::<VipCounters>(), 16);
    assert_eq!(size_of::<Bucket>(), 16);
    assert_eq!((size_of::<LocalConfig>(), align_of::<LocalConfig>()), (88, 8));
    assert_eq!(offset_of!(LocalConfig, hash_key), 0);
    assert_eq!(offset_of!(LocalConfig, flags), 16);
    assert_eq!(offset_of!(LocalConfig, tunnel_v6), 24);
    assert_eq!(offset_of!(LocalConfig, socket_netns), 44);
    assert_eq!(offset_of!(LocalConfig, local_site), 48);
    assert_eq!(offset_of!(LocalConfig, icmp), 56);
    assert_eq!(offset_of!(LocalConfig, pin), 72);
    // Release 0.1.0's LocalConfig was 28 bytes: a size the old release refuses to adopt,
    // which is what makes a roll-back onto these maps stop before it touches anything.
    assert_ne!(size_of::<LocalConfig>(), 28);
    assert_eq!(maps::ALL.len(), std::collections::BTreeSet::from(maps::ALL).len());
}

/// A flow entry as release 0.1.0 wrote it (`{ site: u32, generation: u32 }`, little-endian)
/// reads as the same site and generation, not closing.
#[test]
fn a_flow_entry_of_release_0_1_0_reads_not_closing() {
    for (site, generation) in [(0u32, 0u32), (1, 7), (1023, u32::MAX)] {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&site.to_le_bytes());
        bytes[4..].copy_from_slice(&generation.to_le_bytes());
        // SAFETY: FlowValue is 8 bytes of plain integers, any pattern valid.
        let v: FlowValue = unsafe { std::mem::transmute(bytes) };
        assert_eq!((u32::from(v.site), v.state, v.generation), (site, 0, generation));
        assert_eq!(closing_since(v.state), None);
    }
}

/// A closing state is bit 15 ‖ the coarse time in units of 2^32 ns, modulo 2^15 (docs/
/// datapath.md §6); its age wraps towards younger.
#[test]
fn a_closing_state_is_the_closing_bit_and_the_time_in_4_s_units() {
    let unit = 1u64 << 32;
    assert_eq!(FLOW_CLOSING, 0x8000);
    assert_eq!(flow_state(0), 0x8000);
    assert_eq!(flow_state(3 * unit + unit - 1), 0x8003);
    assert_eq!(flow_state((32768 + 5) * unit), 0x8005);
    assert_eq!(closing_since(0x8005), Some(5));
    assert_eq!(closing_since(0x0005), None);
    assert_eq!(closing_age(5, 5), 0);
    assert_eq!(closing_age(5, 145), 140);
    // Written at unit 32766, read at 32768 + 1: three units, across the wrap.
    assert_eq!(closing_age(32766, 32768 + 1), 3);
    // Silent for 2^15 + 2 units: reads 2 (younger, never older).
    assert_eq!(closing_age(7, 7 + 32768 + 2), 2);
}
