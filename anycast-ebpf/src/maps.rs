//! Every map of the data path, declared once. Names, kinds and sizes come from
//! `anycast_common::maps` (the statics' names are the map names userspace looks up).

use anycast_common::{
    AddrEntry, AddrKey, AddrSlot, Event, FlowKey, FlowValue, LocalConfig, NextHop, SiteCounters, SiteInfo,
    VipCounters, VipInfo, VipKey,
    config::{Bucket, RATE_SLOTS},
    counters::EXCEPTION_SLOTS,
    flow::EMBRYO_SLOTS,
    maps::{
        ADDR_FILTER_SIZE, ADDR_IDS, FLOW_TABLE_DEFAULT, MAGLEV_DEFAULT_SIZE, MAX_IFACES, MAX_SITES,
        MAX_TUNNEL_PEERS, MAX_VIPS, maglev_inner_len,
    },
};
use aya_ebpf::{
    btf_maps,
    macros::{btf_map, map},
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};

/// Holds `anycast_common::maps::LAYOUT_VERSION`, written by the controller: the program
/// never reads it; it is pinned with the maps so that a controller knows their layout.
#[map]
pub static LAYOUT: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static CONFIG: Array<LocalConfig> = Array::with_max_entries(1, 0);

#[map]
pub static ADDR_FILTER: Array<AddrSlot> = Array::with_max_entries(ADDR_FILTER_SIZE, 0);

/// The VIP addresses, each with its ports: the VIP match without a hash lookup.
#[map]
pub static ADDRS: Array<AddrEntry> = Array::with_max_entries(ADDR_IDS, 0);

/// Every address that has a `VIPS` entry (value: how many), for "is this one of our VIP
/// addresses" whatever the port and protocol.
#[map]
pub static VIP_ADDRS: HashMap<AddrKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

#[map]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Inner template of `MAGLEV`, without `BPF_F_INNER_MAP`: the verifier then knows every
/// table's size and inlines both lookups (no helper call). Its size here is the default
/// table's; the controller creates `MAGLEV` itself with a template of the configured
/// `maglev_table_size` (anycast-user `datapath::maglev`).
pub type MaglevTable = btf_maps::Array<u32, { maglev_inner_len(MAGLEV_DEFAULT_SIZE) as usize }, 0>;

/// A map of maps: the controller builds a new table aside and swaps the outer entry, so a
/// packet sees either the whole old table or the whole new one (size included: entry 0).
#[btf_map]
pub static MAGLEV: btf_maps::ArrayOfMaps<MaglevTable, { MAX_VIPS as usize }> = btf_maps::ArrayOfMaps::new();

#[map]
pub static SITES: Array<SiteInfo> = Array::with_max_entries(MAX_SITES, 0);

#[map]
pub static TUNNEL_PEERS: HashMap<AddrKey, u32> = HashMap::with_max_entries(MAX_TUNNEL_PEERS, 0);

/// Capacity is overridden by the controller at load time (`EbpfLoader::map_max_entries`).
/// A forwarded TCP pin's value also says whether its client closed (`FlowValue::state`,
/// written in place by `affinity::note`).
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(FLOW_TABLE_DEFAULT, 0);

/// Shared by all CPUs (a handshake's SYN and ACK may be handled on different CPUs); each
/// entry is one 8-byte word, so never read half-written.
#[map]
pub static EMBRYOS: Array<u64> = Array::with_max_entries(EMBRYO_SLOTS, 0);

#[map]
pub static DEVMAP: DevMapHash = DevMapHash::with_max_entries(MAX_IFACES, 0);

#[map]
pub static SITE_STATS: PerCpuArray<SiteCounters> = PerCpuArray::with_max_entries(MAX_SITES, 0);

#[map]
pub static VIP_STATS: PerCpuArray<VipCounters> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map]
pub static EXCEPTIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EXCEPTION_SLOTS, 0);

#[map]
pub static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Event::COUNT, 0);

/// Per CPU, so that an entry is never read half-written by another CPU.
#[map]
pub static FIB_CACHE: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_SITES, 0);

/// The host-wide settings (slot 0 of `CONFIG`, always present in an array map).
#[inline(always)]
pub fn config() -> Option<&'static LocalConfig> {
    CONFIG.get(0)
}

#[map]
pub static RATE: PerCpuArray<Bucket> = PerCpuArray::with_max_entries(RATE_SLOTS, 0);
