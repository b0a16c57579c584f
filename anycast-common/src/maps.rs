//! Every map of the data path, in one place: name (the eBPF static's name, which is what
//! userspace looks up and pins), kind, key → value, and size.
//!
//! | name | kind | key → value | entries |
//! | --- | --- | --- | --- |
//! | `LAYOUT` | Array | 0 → u32 [`LAYOUT_VERSION`] | 1 |
//! | `CONFIG` | Array | 0 → [`LocalConfig`](crate::LocalConfig) | 1 |
//! | `ADDR_FILTER` | Array | [`filter_index_v4`](crate::addr::filter_index_v4) / `_v6` → [`AddrSlot`](crate::addr::AddrSlot) (bits, `ADDRS` id) | [`ADDR_FILTER_SIZE`] |
//! | `ADDRS` | Array | id → [`AddrEntry`](crate::addr::AddrEntry) (a VIP address and its ports) | [`ADDR_IDS`] |
//! | `VIP_ADDRS` | HashMap | [`AddrKey`](crate::AddrKey) → u32 (number of VIPS entries of that address) | [`MAX_VIPS`] |
//! | `VIPS` | HashMap | [`VipKey`](crate::VipKey) → [`VipInfo`](crate::VipInfo) | [`MAX_VIPS`] |
//! | `MAGLEV` | ArrayOfMaps (BTF) | VIP index → inner Array u32 ([`MAGLEV_SITE`](crate::site::MAGLEV_SITE) + flags) | [`MAX_VIPS`] outer; inner [`maglev_inner_len`] of `maglev_table_size`, every one |
//! | `SITES` | Array | site index → [`SiteInfo`](crate::SiteInfo) | [`MAX_SITES`] |
//! | `TUNNEL_PEERS` | HashMap | [`AddrKey`](crate::AddrKey) → site index (u32) | [`MAX_TUNNEL_PEERS`] |
//! | `FLOWS` | LruHashMap | [`FlowKey`](crate::FlowKey) → [`FlowValue`](crate::FlowValue) (site, closing state, generation) | [`FLOW_TABLE_DEFAULT`] (set at load) |
//! | `EMBRYOS` | Array | [`embryo_slot`](crate::flow::embryo_slot) → u64 [`embryo_entry`](crate::flow::embryo_entry) | [`EMBRYO_SLOTS`](crate::flow::EMBRYO_SLOTS) |
//! | `DEVMAP` | DevMapHash | ifindex → ifindex | [`MAX_IFACES`] |
//! | `SITE_STATS` | PerCpuArray | site index → [`SiteCounters`](crate::SiteCounters) | [`MAX_SITES`] |
//! | `VIP_STATS` | PerCpuArray | VIP index → [`VipCounters`](crate::VipCounters) | [`MAX_VIPS`] |
//! | `EXCEPTIONS` | PerCpuArray | [`exception_index`](crate::counters::exception_index) → u64 | [`EXCEPTION_SLOTS`](crate::counters::EXCEPTION_SLOTS) |
//! | `EVENTS` | PerCpuArray | [`Event`](crate::Event) → u64 | [`Event::COUNT`](crate::Event::COUNT) |
//! | `FIB_CACHE` | PerCpuArray | site index → [`NextHop`](crate::NextHop) | [`MAX_SITES`] |
//! | `RATE` | PerCpuArray | [`RATE_ICMP`](crate::config::RATE_ICMP) / [`RATE_PIN`](crate::config::RATE_PIN) → [`Bucket`](crate::config::Bucket) | [`RATE_SLOTS`](crate::config::RATE_SLOTS) |
//!
//! The flow table holds only flows that need state: forwarded TCP flows, pinned when their
//! handshake completes (a SYN writes only `EMBRYOS`, so a SYN flood cannot fill it), UDP
//! flows of `affinity = "flow"` VIPs and fragments. A local TCP flow needs no entry: the
//! host's socket table knows it.
//!
//! A pinned TCP flow forwarded to another site carries its own liveness in its `FLOWS`
//! value ([`FlowValue::state`](crate::FlowValue::state): closing once its client sent FIN or
//! RST, and the coarse time last seen since), so that the controller can clear
//! `MAGLEV_CHECK` from a local bucket whose pins to other sites are all over
//! (docs/datapath.md §6) by reading `FLOWS` alone. `state` is the high half of what layout
//! 1 (and the first builds of layout 2) held as a u32 site index, always 0 there: "not
//! closing", which the controller takes as alive. (Those builds of layout 2 kept it in an
//! array of its own, `FLOW_SEEN`; a start on their pins removes it.)
//!
//! A Maglev table of M slots is an inner array whose entry 0 holds M, entries 1..=M the
//! site index of each slot. Keeping the size inside the table makes a swap of the outer
//! entry atomic for both at once: a packet never sees a new size with an old table. Every
//! inner array has the template's size, `maglev_table_size` + 1 entries (a smaller table,
//! e.g. one local site, leaves the rest zero): the verifier inlines lookups only into inner
//! arrays of a known size (no `BPF_F_INNER_MAP`). A table whose every slot is the same local
//! entry without `MAGLEV_CHECK` is written as that one slot (M = 1, read back whole by the
//! controller): the same buckets for any reader, and the data path skips the flow hash of
//! the packets that need no state (docs/datapath.md §6). Every build of this layout reads
//! it alike, so the layout stays 2.

/// The layout of the maps listed here (keys, values, sizes, meaning). Bumped by every
/// change that a running program would read differently; pinned with the maps (`LAYOUT`)
/// so that a new controller knows what it adopts and migrates the state of an older layout
/// (anycast-user's migration module; release 0.1.0, which had no `LAYOUT` map, is layout 1).
/// Still 2 after `FlowValue`'s u32 site became a u16 site and a u16 state, and `FLOW_SEEN`
/// went, before any release of layout 2: every value an earlier build wrote reads the
/// same (state 0), so a start on its pins adopts them (docs/controller.md, "Upgrades").
pub const LAYOUT_VERSION: u32 = 2;

pub const LAYOUT: &str = "LAYOUT";
pub const CONFIG: &str = "CONFIG";
pub const ADDR_FILTER: &str = "ADDR_FILTER";
pub const ADDRS: &str = "ADDRS";
pub const VIP_ADDRS: &str = "VIP_ADDRS";
pub const VIPS: &str = "VIPS";
pub const MAGLEV: &str = "MAGLEV";
pub const SITES: &str = "SITES";
pub const TUNNEL_PEERS: &str = "TUNNEL_PEERS";
pub const FLOWS: &str = "FLOWS";
pub const EMBRYOS: &str = "EMBRYOS";
pub const DEVMAP: &str = "DEVMAP";
pub const SITE_STATS: &str = "SITE_STATS";
pub const VIP_STATS: &str = "VIP_STATS";
pub const EXCEPTIONS: &str = "EXCEPTIONS";
pub const EVENTS: &str = "EVENTS";
pub const FIB_CACHE: &str = "FIB_CACHE";
pub const RATE: &str = "RATE";

/// Every map name, for pinning and adoption.
pub const ALL: [&str; 18] = [
    LAYOUT,
    CONFIG,
    ADDR_FILTER,
    ADDRS,
    VIP_ADDRS,
    VIPS,
    MAGLEV,
    SITES,
    TUNNEL_PEERS,
    FLOWS,
    EMBRYOS,
    DEVMAP,
    SITE_STATS,
    VIP_STATS,
    EXCEPTIONS,
    EVENTS,
    FIB_CACHE,
    RATE,
];

/// Name of the XDP program in the object.
pub const PROGRAM: &str = "anycast";

/// 2^16 slots (array values are rounded up to 8 bytes by the kernel: 512 KiB): one array
/// lookup (~2 ns) decides that a packet is not for us.
pub const ADDR_FILTER_SIZE: u32 = 1 << 16;
pub const MAX_VIPS: u32 = 256;
/// `ADDRS` entries: two per possible VIP address, so that a changed entry is always written
/// into an unused one and the filter slot switched to it in one store.
pub const ADDR_IDS: u32 = 2 * MAX_VIPS;
pub const MAX_SITES: u32 = 1024;
/// An IPv4 and an IPv6 tunnel address per site.
pub const MAX_TUNNEL_PEERS: u32 = 2 * MAX_SITES;
pub const MAX_IFACES: u32 = 64;
/// Default flow-table capacity; the controller sets the configured size at load time.
pub const FLOW_TABLE_DEFAULT: u32 = 1 << 18;
/// Default Maglev table size (prime), as in Katran.
pub const MAGLEV_DEFAULT_SIZE: u32 = 65_537;
/// Largest Maglev table size accepted (prime, ~ 4 × the default).
pub const MAGLEV_MAX_SIZE: u32 = 262_147;

/// Entries of an inner Maglev array for a table of `m` slots (slot 0 holds `m`).
pub const fn maglev_inner_len(m: u32) -> u32 {
    m + 1
}

/// How long the data path reuses a successful `bpf_fib_lookup` towards a site, in jiffies
/// (25–100 ms for HZ 1000–250): the lookup costs ~190 ns, the cache check ~3 ns. Written
/// only by the data path; the controller may zero entries to force a new lookup.
pub const FIB_CACHE_TTL_JIFFIES: u64 = 25;

/// `BPF_F_INNER_MAP`: inner maps may differ in size from the template. `MAGLEV`'s template
/// had it before its tables were of one size; it is recognised to rebuild such a `MAGLEV`.
pub const BPF_F_INNER_MAP: usize = 1 << 12;
