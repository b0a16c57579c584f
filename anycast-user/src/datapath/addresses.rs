//! The address table: what `ADDR_FILTER` and `ADDRS` hold (docs/datapath.md §2, §4).
//!
//! Every address the data path must recognise lands on one filter slot (a multiplicative
//! hash of it); the slot carries the bits of the addresses on it and, when exactly one VIP
//! address with at most [`ADDR_PORTS`] (port, protocol) entries is there, the id of that
//! address's `ADDRS` entry: the VIP match is then two inlined array lookups. A slot shared
//! by two VIP addresses, or an address with more entries, is marked `OVERFLOW` and matched
//! through the hash maps (`VIPS`, `VIP_ADDRS`), which always hold every VIP.
//!
//! Updates never let a packet read an entry being written: a new or changed entry is
//! written into an `ADDRS` id that no slot points at (nor did at the start of this update),
//! and only then is the slot switched to it, in one 4-byte store.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anycast_common::{
    AddrEntry, AddrKey, AddrPort, AddrSlot, Family, VipInfo, VipKey,
    addr::{ADDR_PORTS, filter, filter_index_v4, filter_index_v6},
    maps::{ADDR_FILTER_SIZE, ADDR_IDS},
};

/// The filter slot of an address.
pub fn filter_index(addr: &AddrKey) -> u32 {
    if addr.family == Family::V4 as u8 {
        filter_index_v4([addr.addr[0], addr.addr[1], addr.addr[2], addr.addr[3]])
    } else {
        filter_index_v6(addr.addr)
    }
}

/// Every address the data path recognises: its filter bits and, for a VIP address, its
/// (port, protocol) entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addresses(BTreeMap<AddrKey, Address>);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Address {
    bits: u8,
    ports: BTreeMap<(u16, u8), VipInfo>,
}

impl Addresses {
    /// The VIPs' addresses (bit `VIP`, with their entries) and the tunnel addresses (bit
    /// `TUNNEL`).
    pub fn new(vips: &HashMap<VipKey, VipInfo>, tunnels: impl IntoIterator<Item = AddrKey>) -> Addresses {
        let mut all: BTreeMap<AddrKey, Address> = BTreeMap::new();
        for (k, info) in vips {
            let a = all.entry(AddrKey { addr: k.addr, family: k.family, pad: [0; 3] }).or_default();
            a.bits |= filter::VIP;
            a.ports.insert((k.port, k.proto), *info);
        }
        for t in tunnels {
            all.entry(t).or_default().bits |= filter::TUNNEL;
        }
        Addresses(all)
    }

    /// Slot index → (bits, the `ADDRS` entry its one VIP address gets, if it gets one).
    pub fn slots(&self) -> BTreeMap<u32, (u8, Option<AddrEntry>)> {
        /// A slot's bits and the VIP addresses on it.
        type Slot<'a> = (u8, Vec<(&'a AddrKey, &'a Address)>);
        let mut slots: BTreeMap<u32, Slot> = BTreeMap::new();
        for (k, a) in &self.0 {
            let s = slots.entry(filter_index(k)).or_default();
            s.0 |= a.bits;
            if a.bits & filter::VIP != 0 {
                s.1.push((k, a));
            }
        }
        slots
            .into_iter()
            .map(|(i, (bits, vips))| match vips[..] {
                [(k, a)] if a.ports.len() <= ADDR_PORTS => (i, (bits, Some(entry(k, a)))),
                [] => (i, (bits, None)),
                _ => (i, (bits | filter::OVERFLOW, None)),
            })
            .collect()
    }
}

fn entry(k: &AddrKey, a: &Address) -> AddrEntry {
    let mut e =
        AddrEntry { addr: k.addr, family: k.family, count: a.ports.len() as u8, ..Default::default() };
    for (slot, (&(port, proto), vip)) in e.ports.iter_mut().zip(&a.ports) {
        *slot = AddrPort { port, proto, pad: 0, vip: *vip };
    }
    e
}

/// One write of an update, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Entry(u16, AddrEntry),
    Slot(u32, AddrSlot),
}

/// The writes that make `filter` / `entries` (what the maps hold) hold `want`, in a safe
/// order; `filter` and `entries` are updated as the writes will leave them.
pub fn update(want: &Addresses, filter: &mut [AddrSlot], entries: &mut [AddrEntry]) -> Vec<Write> {
    let points = |s: &AddrSlot| s.bits & filter::VIP != 0 && s.bits & filter::OVERFLOW == 0;
    // Ids in use at the start stay untouched for this whole update: a packet may have read
    // a slot just before it was switched and still be about to read its old entry.
    let mut taken: BTreeSet<u16> = filter.iter().filter(|s| points(s)).map(|s| s.id).collect();
    let want = want.slots();
    let mut writes = Vec::new();
    let mut slot_writes = Vec::new();
    for (i, have) in filter.iter().enumerate() {
        let (bits, entry) = want.get(&(i as u32)).copied().unwrap_or((0, None));
        let next = match entry {
            Some(e) if points(have) && entries.get(have.id as usize) == Some(&e) => {
                AddrSlot { bits, pad: 0, id: have.id }
            }
            Some(e) => {
                let Some(id) = (0..ADDR_IDS as u16).find(|id| !taken.contains(id)) else {
                    // Cannot happen (ADDR_IDS is twice the VIPs there may be); degrade to the
                    // hash maps rather than fail.
                    slot_writes.push(Write::Slot(
                        i as u32,
                        AddrSlot { bits: bits | filter::OVERFLOW, pad: 0, id: 0 },
                    ));
                    continue;
                };
                taken.insert(id);
                writes.push(Write::Entry(id, e));
                AddrSlot { bits, pad: 0, id }
            }
            None => AddrSlot { bits, pad: 0, id: 0 },
        };
        if next != *have {
            slot_writes.push(Write::Slot(i as u32, next));
        }
    }
    // Entries first, then the slots that point at them.
    writes.extend(slot_writes);
    for w in &writes {
        match w {
            Write::Entry(id, e) => entries[*id as usize] = *e,
            Write::Slot(i, s) => filter[*i as usize] = *s,
        }
    }
    writes
}

/// Sizes of the two maps, for the shadows.
pub const SLOTS: usize = ADDR_FILTER_SIZE as usize;
pub const IDS: usize = ADDR_IDS as usize;

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(addr: [u8; 4], port: u16, proto: u8, index: u32) -> (VipKey, VipInfo) {
        let k = AddrKey::v4(addr);
        (VipKey { addr: k.addr, port, proto, family: k.family }, VipInfo { index, flags: 0 })
    }

    fn maps() -> (Vec<AddrSlot>, Vec<AddrEntry>) {
        (vec![AddrSlot::default(); SLOTS], vec![AddrEntry::default(); IDS])
    }

    #[test]
    fn one_address_gets_an_entry_written_before_its_slot() {
        let vips = HashMap::from([vip([192, 0, 2, 1], 53, 17, 0), vip([192, 0, 2, 1], 0, 6, 1)]);
        let tunnel = AddrKey::v4([10, 0, 0, 1]);
        let a = Addresses::new(&vips, [tunnel]);
        let (mut filter, mut entries) = maps();
        let writes = update(&a, &mut filter, &mut entries);
        let Write::Entry(id, e) = &writes[0] else { panic!("{writes:?}") };
        assert_eq!((e.count, e.ports[0].port, e.ports[0].proto, e.ports[1].port), (2, 0, 6, 53));
        let slot = filter[filter_index(&AddrKey::v4([192, 0, 2, 1])) as usize];
        assert_eq!(slot, AddrSlot { bits: filter::VIP, pad: 0, id: *id });
        assert_eq!(filter[filter_index(&tunnel) as usize].bits, filter::TUNNEL);
        assert_eq!(writes.len(), 3, "{writes:?}");
        // Unchanged: nothing to write.
        assert_eq!(update(&a, &mut filter, &mut entries), []);
    }

    #[test]
    fn a_changed_entry_moves_to_an_unused_id_then_the_slot_follows() {
        let (mut filter, mut entries) = maps();
        let one = HashMap::from([vip([192, 0, 2, 1], 53, 17, 0)]);
        update(&Addresses::new(&one, []), &mut filter, &mut entries);
        let i = filter_index(&AddrKey::v4([192, 0, 2, 1])) as usize;
        let old = filter[i].id;
        let two = HashMap::from([vip([192, 0, 2, 1], 53, 17, 0), vip([192, 0, 2, 1], 443, 6, 1)]);
        let writes = update(&Addresses::new(&two, []), &mut filter, &mut entries);
        let Write::Entry(new, e) = writes[0] else { panic!("{writes:?}") };
        assert_ne!(new, old, "never rewritten in place");
        assert_eq!(e.count, 2);
        assert_eq!(writes[1], Write::Slot(i as u32, AddrSlot { bits: filter::VIP, pad: 0, id: new }));
        // Removed: the slot is cleared; its entry is left (nothing points at it).
        let writes = update(&Addresses::new(&HashMap::new(), []), &mut filter, &mut entries);
        assert_eq!(writes, [Write::Slot(i as u32, AddrSlot::default())]);
    }

    #[test]
    fn shared_slots_and_many_ports_overflow_to_the_hash_maps() {
        // Two VIP addresses on one slot.
        let a = [192, 0, 2, 1];
        let ia = filter_index(&AddrKey::v4(a));
        let b = (0..=u32::MAX)
            .map(|n| n.to_be_bytes())
            .find(|b| *b != a && filter_index(&AddrKey::v4(*b)) == ia)
            .unwrap();
        let vips = HashMap::from([vip(a, 53, 17, 0), vip(b, 53, 17, 1)]);
        let slots = Addresses::new(&vips, []).slots();
        assert_eq!(slots[&ia], (filter::VIP | filter::OVERFLOW, None));
        // One address with more ports than an entry holds.
        let many: HashMap<_, _> = (0..=ADDR_PORTS as u16).map(|p| vip(a, 1000 + p, 6, p as u32)).collect();
        assert_eq!(Addresses::new(&many, []).slots()[&ia], (filter::VIP | filter::OVERFLOW, None));
        let fits: HashMap<_, _> = (0..ADDR_PORTS as u16).map(|p| vip(a, 1000 + p, 6, p as u32)).collect();
        assert_eq!(Addresses::new(&fits, []).slots()[&ia].0, filter::VIP);
    }
}
