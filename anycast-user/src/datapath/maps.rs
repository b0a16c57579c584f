//! Typed access to every map of the data path (the list and sizes are in
//! `anycast_common::maps`). The controller, the tests and the benchmarks all write and read
//! the data path through this one type, so the layout rules (filter bits, Maglev header
//! slot, per-CPU sums) live in one place.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd, RawFd},
    path::Path,
};

use anycast_common::{
    AddrEntry, AddrKey, AddrSlot, Event, FlowKey, FlowValue, LocalConfig, NextHop, SiteCounters, SiteInfo,
    VipCounters, VipInfo, VipKey,
    counters::EXCEPTION_SLOTS,
    flow::EMBRYO_SLOTS,
    maps::{self, MAGLEV_DEFAULT_SIZE},
    site::clean_local,
};

use super::{
    addresses::{self, Addresses, Write},
    maglev::Shape,
    sys::{self, BPF_MAP_LOOKUP_BATCH, BPF_MAP_UPDATE_BATCH},
};
use aya::{
    Ebpf, Pod,
    maps::{
        Array, ArrayOfMaps, DevMapHash, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray,
        xdp::XdpMapError,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("the XDP object has no map named {0}")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: MapError },
    #[error("map {name}: {source}")]
    Devmap { name: &'static str, source: XdpMapError },
    #[error("map {name}: per-CPU values: {source}")]
    PerCpu { name: &'static str, source: std::io::Error },
    #[error("map {name}: {source}")]
    Io { name: &'static str, source: std::io::Error },
    #[error(
        "Maglev table of {0} slots: the data path's tables hold 1..={1} (maglev_table_size at its start)"
    )]
    MaglevSize(usize, u32),
}

type Result<T, E = MapsError> = std::result::Result<T, E>;

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { name, source }
}

/// Every map of one data-path instance, typed.
pub struct DataPathMaps {
    layout: Array<MapData, u32>,
    config: Array<MapData, LocalConfig>,
    addr_filter: Array<MapData, AddrSlot>,
    addrs: Array<MapData, AddrEntry>,
    /// What `addr_filter` and `addrs` hold, so that an update writes only what changes.
    filter_shadow: Vec<AddrSlot>,
    addrs_shadow: Vec<AddrEntry>,
    vip_addrs: HashMap<MapData, AddrKey, u32>,
    vips: HashMap<MapData, VipKey, VipInfo>,
    maglev: ArrayOfMaps<MapData, Array<MapData, u32>>,
    /// The outer map's fd again, for batch updates (aya's `ArrayOfMaps` does not expose it).
    maglev_fd: OwnedFd,
    /// What its template accepts as inner tables.
    maglev_shape: Shape,
    sites: Array<MapData, SiteInfo>,
    tunnel_peers: HashMap<MapData, AddrKey, u32>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    embryos: Array<MapData, u64>,
    devmap: DevMapHash<MapData>,
    site_stats: PerCpuArray<MapData, SiteCounters>,
    vip_stats: PerCpuArray<MapData, VipCounters>,
    exceptions: PerCpuArray<MapData, u64>,
    events: PerCpuArray<MapData, u64>,
    fib_cache: PerCpuArray<MapData, NextHop>,
}

impl DataPathMaps {
    /// The shape of the tables this `MAGLEV` accepts.
    pub fn maglev_shape(&self) -> Shape {
        self.maglev_shape
    }

    /// Takes the maps out of a loaded object (the program keeps its references); `shape`:
    /// what its `MAGLEV` template accepts ([`Shape::of_object`] for an object's own).
    pub fn take(ebpf: &mut Ebpf, shape: Shape) -> Result<Self> {
        Self::build(|name| ebpf.take_map(name).ok_or(MapsError::Missing(name)), Some(shape))
    }

    /// Opens the maps pinned under `dir` (one file per map name) by a running instance.
    /// (Pinning itself happens at load: `EbpfLoader::map_pin_path` for every name in
    /// `anycast_common::maps::ALL` reuses a pinned map or creates and pins it.) The shape
    /// of the Maglev tables is read off the ones there; with none, `maglev_table_size`.
    pub fn from_pins(dir: &Path, maglev_table_size: u32) -> Result<Self> {
        let mut maps = Self::build(
            |name| {
                let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
                Map::from_map_data(data).map_err(map_err(name))
            },
            None,
        )?;
        maps.maglev_shape = Shape::of_outer(maps.maglev_fd.as_fd())
            .map_err(map_err(maps::MAGLEV))?
            .unwrap_or(Shape::for_size(maglev_table_size));
        Ok(maps)
    }

    fn build(mut get: impl FnMut(&'static str) -> Result<Map>, shape: Option<Shape>) -> Result<Self> {
        fn typed<T: TryFrom<Map, Error = MapError>>(
            get: &mut impl FnMut(&'static str) -> Result<Map>,
            name: &'static str,
        ) -> Result<T> {
            T::try_from(get(name)?).map_err(map_err(name))
        }
        let addr_filter: Array<MapData, AddrSlot> = typed(&mut get, maps::ADDR_FILTER)?;
        let filter_shadow =
            addr_filter.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(maps::ADDR_FILTER))?;
        let addrs: Array<MapData, AddrEntry> = typed(&mut get, maps::ADDRS)?;
        let addrs_shadow = addrs.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(maps::ADDRS))?;
        let maglev = get(maps::MAGLEV)?;
        let maglev_fd = match &maglev {
            Map::ArrayOfMaps(data) => dup(data.fd().as_fd(), maps::MAGLEV)?,
            _ => return Err(map_err(maps::MAGLEV)(MapError::InvalidMapType { map_type: 0 })),
        };
        Ok(DataPathMaps {
            layout: typed(&mut get, maps::LAYOUT)?,
            config: typed(&mut get, maps::CONFIG)?,
            addr_filter,
            addrs,
            filter_shadow,
            addrs_shadow,
            vip_addrs: typed(&mut get, maps::VIP_ADDRS)?,
            vips: typed(&mut get, maps::VIPS)?,
            maglev: maglev.try_into().map_err(map_err(maps::MAGLEV))?,
            maglev_fd,
            maglev_shape: shape.unwrap_or(Shape::for_size(MAGLEV_DEFAULT_SIZE)),
            sites: typed(&mut get, maps::SITES)?,
            tunnel_peers: typed(&mut get, maps::TUNNEL_PEERS)?,
            flows: typed(&mut get, maps::FLOWS)?,
            embryos: typed(&mut get, maps::EMBRYOS)?,
            devmap: typed(&mut get, maps::DEVMAP)?,
            site_stats: typed(&mut get, maps::SITE_STATS)?,
            vip_stats: typed(&mut get, maps::VIP_STATS)?,
            exceptions: typed(&mut get, maps::EXCEPTIONS)?,
            events: typed(&mut get, maps::EVENTS)?,
            fib_cache: typed(&mut get, maps::FIB_CACHE)?,
        })
    }

    /// The layout version the maps were written in (0: never written).
    pub fn layout(&self) -> Result<u32> {
        self.layout.get(&0, 0).map_err(map_err(maps::LAYOUT))
    }

    pub fn set_layout(&mut self, version: u32) -> Result<()> {
        self.layout.set(0, version, 0).map_err(map_err(maps::LAYOUT))
    }

    pub fn config(&self) -> Result<LocalConfig> {
        self.config.get(&0, 0).map_err(map_err(maps::CONFIG))
    }

    pub fn set_config(&mut self, config: &LocalConfig) -> Result<()> {
        self.config.set(0, config, 0).map_err(map_err(maps::CONFIG))
    }

    /// Makes the filter and the address entries hold exactly `want`, writing only what
    /// changes, entries before the slots that point at them ([`addresses::update`]).
    pub fn set_addresses(&mut self, want: &Addresses) -> Result<()> {
        let (mut filter, mut entries) = (self.filter_shadow.clone(), self.addrs_shadow.clone());
        for w in addresses::update(want, &mut filter, &mut entries) {
            match w {
                Write::Entry(id, e) => {
                    self.addrs.set(u32::from(id), e, 0).map_err(map_err(maps::ADDRS))?;
                    self.addrs_shadow[id as usize] = e;
                }
                Write::Slot(i, s) => {
                    self.addr_filter.set(i, s, 0).map_err(map_err(maps::ADDR_FILTER))?;
                    self.filter_shadow[i as usize] = s;
                }
            }
        }
        Ok(())
    }

    /// Whether the filter and the address entries hold exactly `want` (an update would
    /// write nothing).
    pub fn holds_addresses(&self, want: &Addresses) -> bool {
        let (mut filter, mut entries) = (self.filter_shadow.clone(), self.addrs_shadow.clone());
        addresses::update(want, &mut filter, &mut entries).is_empty()
    }

    /// Every VIP at once (`VIPS`, `VIP_ADDRS`) and the address table with them and the
    /// `tunnels`: for the tests and benchmarks, which build a data path by hand (the
    /// reconciler orders these writes itself, `reconcile::diff`).
    pub fn set_vips_with_addresses(&mut self, vips: &[(VipKey, VipInfo)], tunnels: &[AddrKey]) -> Result<()> {
        let mut per_addr: std::collections::BTreeMap<AddrKey, u32> = Default::default();
        for (k, info) in vips {
            self.set_vip(k, info)?;
            *per_addr.entry(AddrKey { addr: k.addr, family: k.family, pad: [0; 3] }).or_default() += 1;
        }
        for (a, n) in &per_addr {
            self.set_vip_addr(a, *n)?;
        }
        let all: std::collections::HashMap<VipKey, VipInfo> = vips.iter().copied().collect();
        self.set_addresses(&Addresses::new(&all, tunnels.iter().copied()))
    }

    /// The VIP address set (address → number of VIPS entries with it).
    pub fn vip_addrs(&self) -> Result<Vec<(AddrKey, u32)>> {
        collect(self.vip_addrs.iter(), maps::VIP_ADDRS)
    }

    pub fn set_vip_addr(&mut self, addr: &AddrKey, entries: u32) -> Result<()> {
        self.vip_addrs.insert(addr, entries, 0).map_err(map_err(maps::VIP_ADDRS))
    }

    pub fn remove_vip_addr(&mut self, addr: &AddrKey) -> Result<()> {
        self.vip_addrs.remove(addr).map_err(map_err(maps::VIP_ADDRS))
    }

    pub fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>> {
        collect(self.vips.iter(), maps::VIPS)
    }

    pub fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<()> {
        self.vips.insert(key, info, 0).map_err(map_err(maps::VIPS))
    }

    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.vips.remove(key).map_err(map_err(maps::VIPS))
    }

    pub fn site(&self, index: u32) -> Result<SiteInfo> {
        self.sites.get(&index, 0).map_err(map_err(maps::SITES))
    }

    pub fn set_site(&mut self, index: u32, site: &SiteInfo) -> Result<()> {
        self.sites.set(index, site, 0).map_err(map_err(maps::SITES))
    }

    pub fn tunnel_peers(&self) -> Result<Vec<(AddrKey, u32)>> {
        collect(self.tunnel_peers.iter(), maps::TUNNEL_PEERS)
    }

    pub fn set_tunnel_peer(&mut self, addr: &AddrKey, site: u32) -> Result<()> {
        self.tunnel_peers.insert(addr, site, 0).map_err(map_err(maps::TUNNEL_PEERS))
    }

    pub fn remove_tunnel_peer(&mut self, addr: &AddrKey) -> Result<()> {
        self.tunnel_peers.remove(addr).map_err(map_err(maps::TUNNEL_PEERS))
    }

    /// Builds a new inner table for VIP slot `vip` and swaps it in with one update of the
    /// outer map: the kernel replaces the pointer atomically, so every packet sees either the
    /// whole old table or the whole new one. Slot 0 holds the table size.
    pub fn set_maglev(&mut self, vip: u32, table: &[u32]) -> Result<()> {
        self.set_maglev_tables(&[(vip, table)])
    }

    /// [`Self::set_maglev`] for several VIPs at once. VIPs with equal tables (same sites,
    /// same weights: the usual case) share one inner map, built and written once; all outer
    /// entries change in one batch update, and the kernel waits for running programs once
    /// per batch (since 6.7) instead of ~8 ms per entry.
    pub fn set_maglev_tables(&mut self, tables: &[(u32, &[u32])]) -> Result<()> {
        let mut inners: Vec<(&[u32], Array<MapData, u32>)> = Vec::new();
        let mut slots = Vec::with_capacity(tables.len());
        for &(vip, table) in tables {
            // Pointer equality first: the reconciler shares equal tables (`Arc`).
            let i = match inners.iter().position(|(t, _)| std::ptr::eq(*t, table) || *t == table) {
                Some(i) => i,
                None => {
                    inners.push((table, new_maglev_inner(table, self.maglev_shape)?));
                    inners.len() - 1
                }
            };
            slots.push((vip, i));
        }
        let keys: Vec<u32> = slots.iter().map(|&(vip, _)| vip).collect();
        let fds: Vec<u32> = slots
            .iter()
            .map(|&(_, i)| IterableMap::<u32, u32>::map(&inners[i].1).fd().as_fd().as_raw_fd() as u32)
            .collect();
        if update_batch(self.maglev_fd.as_raw_fd(), &keys, &fds).is_err() {
            // Older kernels: one update (and one wait) per VIP.
            for &(vip, i) in &slots {
                self.maglev.set(vip, &inners[i].1, 0).map_err(map_err(maps::MAGLEV))?;
            }
        }
        Ok(())
    }

    /// Empties VIP slot `vip` of `MAGLEV`, releasing its table (programs running with it
    /// keep their reference until they end). An empty slot is already what is wanted.
    pub fn remove_maglev(&mut self, vip: u32) -> Result<()> {
        match sys::delete_elem(self.maglev_fd.as_raw_fd(), vip) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(MapsError::Io { name: maps::MAGLEV, source }),
        }
    }

    /// Kernel id of the inner map in VIP slot `vip`, if any: VIPs sharing a table share it,
    /// which lets a reader fetch each distinct table once.
    pub fn maglev_id(&self, vip: u32) -> Result<Option<u32>> {
        match self.maglev.get(&vip, 0) {
            Ok(inner) => {
                let info = IterableMap::<u32, u32>::map(&inner).info().map_err(map_err(maps::MAGLEV))?;
                Ok(Some(info.id()))
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(maps::MAGLEV)(e)),
        }
    }

    /// The table currently in VIP slot `vip` (without the size slot), if any.
    pub fn maglev(&self, vip: u32) -> Result<Option<Vec<u32>>> {
        read_table(&self.maglev, vip).map_err(map_err(maps::MAGLEV))
    }

    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowValue>> {
        match self.flows.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(maps::FLOWS)(e)),
        }
    }

    /// Pins a flow (tests and migration; the data path pins its own flows).
    pub fn set_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<()> {
        self.flows.insert(key, value, 0).map_err(map_err(maps::FLOWS))
    }

    /// Every pinned flow, read in batches (see [`Self::flow_count`]).
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>> {
        read_flows(&self.flows)
    }

    /// A handle of its own on the flow table, for a reader on another thread.
    pub fn flows_reader(&self) -> Result<FlowsReader> {
        let fd = dup(IterableMap::<FlowKey, FlowValue>::map(&self.flows).fd().as_fd(), maps::FLOWS)?;
        let map = Map::from_map_data(MapData::from_fd(fd).map_err(map_err(maps::FLOWS))?)
            .map_err(map_err(maps::FLOWS))?;
        Ok(FlowsReader(map.try_into().map_err(map_err(maps::FLOWS))?))
    }

    /// The embryonic entry in slot `slot` (0: empty).
    pub fn embryo(&self, slot: u32) -> Result<u64> {
        self.embryos.get(&slot, 0).map_err(map_err(maps::EMBRYOS))
    }

    /// Empties the embryonic table (tests: each case starts without handshakes in flight).
    pub fn clear_embryos(&mut self) -> Result<usize> {
        let fd = IterableMap::<u32, u64>::map(&self.embryos).fd().as_fd().as_raw_fd();
        let all: Vec<u64> = match lookup_batch(fd, EMBRYO_SLOTS) {
            Ok(all) => all,
            Err(_) => collect_array(self.embryos.iter(), maps::EMBRYOS)?,
        };
        let mut cleared = 0;
        for (slot, &e) in all.iter().enumerate() {
            if e != 0 {
                self.embryos.set(slot as u32, 0, 0).map_err(map_err(maps::EMBRYOS))?;
                cleared += 1;
            }
        }
        Ok(cleared)
    }

    /// Forgets the cached next hop of `site` on every CPU: the next packet asks the FIB.
    pub fn clear_next_hop(&mut self, site: u32) -> Result<()> {
        self.set_next_hop(site, &NextHop::default())
    }

    /// The cached next hop of `site`, per CPU.
    pub fn next_hops(&self, site: u32) -> Result<Vec<NextHop>> {
        Ok(self.fib_cache.get(&site, 0).map_err(map_err(maps::FIB_CACHE))?.iter().copied().collect())
    }

    /// Writes the cached next hop of `site` on every CPU (tests of the cache's rules).
    pub fn set_next_hop(&mut self, site: u32, hop: &NextHop) -> Result<()> {
        let cpus = self.next_hops(site)?.len();
        let values = aya::maps::PerCpuValues::try_from(vec![*hop; cpus])
            .map_err(|source| MapsError::PerCpu { name: maps::FIB_CACHE, source })?;
        self.fib_cache.set(site, values, 0).map_err(map_err(maps::FIB_CACHE))
    }

    /// Empties the flow table (every flow is re-steered on its next packet); returns how
    /// many entries it held. Walks the keys: O(entries) syscalls.
    pub fn clear_flows(&mut self) -> Result<usize> {
        let keys = self.flows.keys().collect::<Result<Vec<_>, _>>().map_err(map_err(maps::FLOWS))?;
        for key in &keys {
            self.flows.remove(key).map_err(map_err(maps::FLOWS))?;
        }
        Ok(keys.len())
    }

    /// Entries in the flow table. Reads it in batches of 4096 entries (one syscall each;
    /// a full 2^18 table is 64 syscalls instead of 2^18); one syscall per key on kernels
    /// without batch lookups for hash maps (before 5.6).
    pub fn flow_count(&self) -> usize {
        let fd = IterableMap::<FlowKey, FlowValue>::map(&self.flows).fd().as_fd().as_raw_fd();
        count_batch::<FlowKey, FlowValue>(fd)
            .unwrap_or_else(|_| self.flows.keys().filter(|k| k.is_ok()).count())
    }

    /// Lets the data path redirect (XDP_REDIRECT) to this interface.
    pub fn add_egress(&mut self, ifindex: u32) -> Result<()> {
        self.devmap
            .insert(ifindex, ifindex, None, 0)
            .map_err(|source| MapsError::Devmap { name: maps::DEVMAP, source })
    }

    /// The interfaces the data path may redirect to.
    pub fn egress(&self) -> Result<Vec<u32>> {
        self.devmap.keys().collect::<Result<Vec<_>, _>>().map_err(map_err(maps::DEVMAP))
    }

    pub fn remove_egress(&mut self, ifindex: u32) -> Result<()> {
        self.devmap.remove(ifindex).map_err(map_err(maps::DEVMAP))
    }

    pub fn site_counters(&self, index: u32) -> Result<SiteCounters> {
        let per_cpu = self.site_stats.get(&index, 0).map_err(map_err(maps::SITE_STATS))?;
        Ok(per_cpu.iter().fold(SiteCounters::default(), |a, c| SiteCounters {
            local_packets: a.local_packets + c.local_packets,
            local_bytes: a.local_bytes + c.local_bytes,
            forwarded_packets: a.forwarded_packets + c.forwarded_packets,
            forwarded_bytes: a.forwarded_bytes + c.forwarded_bytes,
            received_packets: a.received_packets + c.received_packets,
            received_bytes: a.received_bytes + c.received_bytes,
            probe_packets: a.probe_packets + c.probe_packets,
        }))
    }

    pub fn vip_counters(&self, index: u32) -> Result<VipCounters> {
        let per_cpu = self.vip_stats.get(&index, 0).map_err(map_err(maps::VIP_STATS))?;
        Ok(per_cpu.iter().fold(VipCounters::default(), |a, c| VipCounters {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        }))
    }

    /// Every exception counter, summed over CPUs, by
    /// [`exception_index`](anycast_common::counters::exception_index).
    pub fn exceptions(&self) -> Result<[u64; EXCEPTION_SLOTS as usize]> {
        sum_per_cpu(&self.exceptions, maps::EXCEPTIONS)
    }

    /// Every event counter, summed over CPUs, in [`Event::ALL`] order.
    pub fn events(&self) -> Result<[u64; Event::COUNT as usize]> {
        sum_per_cpu(&self.events, maps::EVENTS)
    }
}

fn sum_per_cpu<const N: usize>(map: &PerCpuArray<MapData, u64>, name: &'static str) -> Result<[u64; N]> {
    let mut out = [0u64; N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = map.get(&(i as u32), 0).map_err(map_err(name))?.iter().sum();
    }
    Ok(out)
}

/// A Maglev outer map opened on its own: a migration reads an older layout's tables with it.
pub struct Maglev(ArrayOfMaps<MapData, Array<MapData, u32>>);

impl Maglev {
    pub fn from_pin(path: &Path) -> Result<Maglev, MapError> {
        let data = MapData::from_pin(path)?;
        Ok(Maglev(ArrayOfMaps::try_from(Map::ArrayOfMaps(data))?))
    }

    /// The table in VIP slot `vip` (without the size slot), if any.
    pub fn table(&self, vip: u32) -> Result<Option<Vec<u32>>, MapError> {
        read_table(&self.0, vip)
    }
}

fn read_table(
    outer: &ArrayOfMaps<MapData, Array<MapData, u32>>,
    vip: u32,
) -> Result<Option<Vec<u32>>, MapError> {
    // The outer entry is an inner map's id, opened by a second syscall: a table replaced in
    // between (by the owner, when the reader is another process) is freed by then, ENOENT.
    // The entry then names its successor: read it again.
    let mut attempts = 0;
    let inner = loop {
        match outer.get(&vip, 0) {
            Ok(inner) => break inner,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(MapError::SyscallError(e))
                if e.call == "bpf_map_get_fd_by_id"
                    && e.io_error.raw_os_error() == Some(libc::ENOENT)
                    && attempts < 8 =>
            {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let fd = IterableMap::<u32, u32>::map(&inner).fd().as_fd().as_raw_fd();
    let mut all = match lookup_batch(fd, inner.len()) {
        Ok(all) => all,
        // Kernels before 5.6: one syscall per entry.
        Err(_) => inner.iter().collect::<Result<Vec<_>, _>>()?,
    };
    let size = all.first().copied().unwrap_or(0) as usize;
    all.truncate(size + 1);
    all.remove(0);
    // A table installed as its one whole-local entry ([`installed`]) reads back as the
    // table it stands for: that entry in every slot the inner array has room for.
    if let [entry] = all[..] {
        if clean_local(entry) {
            all = vec![entry; inner.len() as usize - 1];
        }
    }
    Ok(Some(all))
}

/// What is written for `table`: a table whose every bucket is the same local entry without
/// `MAGLEV_CHECK` (a site that sheds none of a VIP's flows) as that entry alone, a table
/// of one slot. Every flow lands on that entry either way, and the data path sends the
/// flows of a one-slot local table that need no state to the local stack without computing
/// their hash (anycast-ebpf `steer::whole_local`; docs/datapath.md §6). The inner array
/// keeps the template's size, so the swap back to a full table is one outer update, as
/// for any table.
fn installed(table: &[u32]) -> &[u32] {
    match table {
        [first, rest @ ..] if clean_local(*first) && rest.iter().all(|e| e == first) => &table[..1],
        _ => table,
    }
}

/// `union bpf_attr`'s `batch` member (linux/bpf.h). aya 0.14 has no batch operations,
/// hence the raw `bpf(2)` calls below: a Maglev table is 65 538 entries, ~170 ms one
/// syscall each, a few ms in one batch.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    sys::bpf(cmd, attr).map(drop)
}

/// An inner Maglev array of `shape` holding `table` (size in slot 0), written in one batch.
fn new_maglev_inner(table: &[u32], shape: Shape) -> Result<Array<MapData, u32>> {
    let size = table.len();
    if size == 0 || size > shape.capacity() as usize {
        return Err(MapsError::MaglevSize(size, shape.capacity()));
    }
    // Only a table of the template's size reads back whole from one slot ([`read_table`]).
    let table = if let Shape::Fixed { .. } = shape { installed(table) } else { table };
    let size = table.len();
    let (entries, flags) = shape.inner(size as u32);
    let mut inner = Array::<MapData, u32>::create(entries, flags).map_err(map_err(maps::MAGLEV))?;
    let values: Vec<u32> = std::iter::once(size as u32).chain(table.iter().copied()).collect();
    let keys: Vec<u32> = (0..values.len() as u32).collect();
    let fd = IterableMap::<u32, u32>::map(&inner).fd().as_fd().as_raw_fd();
    if update_batch(fd, &keys, &values).is_err() {
        // Kernels before 5.6 have no batch updates for arrays: one syscall per entry.
        for (i, &v) in values.iter().enumerate() {
            inner.set(i as u32, v, 0).map_err(map_err(maps::MAGLEV))?;
        }
    }
    Ok(inner)
}

/// Writes `values` at `keys` of an array map in one syscall.
fn update_batch(fd: RawFd, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
    assert_eq!(keys.len(), values.len());
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: values.len() as u32,
        map_fd: fd as u32,
        elem_flags: 0,
        flags: 0,
    };
    bpf_batch(BPF_MAP_UPDATE_BATCH, &mut attr)
}

/// Reads every entry of a hash map with `BPF_MAP_LOOKUP_BATCH`, handing each batch to
/// `each`. The batch token of a hash map is a bucket index (u32); ENOENT marks the end;
/// ENOSPC means one bucket held more entries than the buffer, which is then grown.
fn walk_batch<K: Default + Clone, V: Default + Clone>(
    fd: RawFd,
    mut each: impl FnMut(&[K], &[V]),
) -> std::io::Result<()> {
    let mut chunk = 4096usize;
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    let (mut token_in, mut token_out) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &mut token_in as *mut u32 as u64 },
            out_batch: &mut token_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        let done = match bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < 1 << 20 => {
                chunk *= 4;
                keys.resize(chunk, K::default());
                values.resize(chunk, V::default());
                continue;
            }
            Err(e) => return Err(e),
        };
        let n = attr.count as usize;
        each(&keys[..n], &values[..n]);
        if done {
            return Ok(());
        }
        token_in = token_out;
        first = false;
    }
}

fn count_batch<K: Default + Clone, V: Default + Clone>(fd: RawFd) -> std::io::Result<usize> {
    let mut total = 0;
    walk_batch::<K, V>(fd, |k, _| total += k.len())?;
    Ok(total)
}

/// Reads all `len` entries of an array map in one syscall.
fn lookup_batch<V: Default + Clone>(fd: RawFd, len: u32) -> std::io::Result<Vec<V>> {
    let mut keys = vec![0u32; len as usize];
    let mut values = vec![V::default(); len as usize];
    let mut out_batch = 0u32;
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: &mut out_batch as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: len,
        map_fd: fd as u32,
        elem_flags: 0,
        flags: 0,
    };
    match bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) {
        Ok(()) => {}
        // ENOENT: the batch reached the end of the map, which it does when it read all.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    if attr.count != len {
        return Err(std::io::Error::other(format!("batch read {} of {len} entries", attr.count)));
    }
    Ok(values)
}

/// A second descriptor of a map.
fn dup(fd: BorrowedFd<'_>, name: &'static str) -> Result<OwnedFd> {
    fd.try_clone_to_owned().map_err(|io_error| {
        map_err(name)(MapError::SyscallError(aya::sys::SyscallError { call: "dup", io_error }))
    })
}

/// The flow table read from a thread other than the owner's: the sweep of the check flags
/// reads every pin (2^20 entries take ~0.2 s), which would hold up the owner's weight
/// installs. It only reads; the owner stays the maps' one writer.
pub struct FlowsReader(HashMap<MapData, FlowKey, FlowValue>);

impl FlowsReader {
    /// Every pinned flow, read in batches.
    pub fn read(&self) -> Result<Vec<(FlowKey, FlowValue)>> {
        read_flows(&self.0)
    }
}

fn read_flows(flows: &HashMap<MapData, FlowKey, FlowValue>) -> Result<Vec<(FlowKey, FlowValue)>> {
    let fd = IterableMap::<FlowKey, FlowValue>::map(flows).fd().as_fd().as_raw_fd();
    let mut out = Vec::new();
    match walk_batch::<FlowKey, FlowValue>(fd, |k, v| out.extend(k.iter().copied().zip(v.iter().copied()))) {
        Ok(()) => Ok(out),
        Err(_) => collect(flows.iter(), maps::FLOWS),
    }
}

fn collect<K: Pod, V: Pod>(
    iter: impl Iterator<Item = Result<(K, V), MapError>>,
    name: &'static str,
) -> Result<Vec<(K, V)>> {
    iter.collect::<Result<Vec<_>, _>>().map_err(map_err(name))
}

fn collect_array<V: Pod>(
    iter: impl Iterator<Item = Result<V, MapError>>,
    name: &'static str,
) -> Result<Vec<V>> {
    iter.collect::<Result<Vec<_>, _>>().map_err(map_err(name))
}

#[cfg(test)]
mod tests {
    use anycast_common::site::{MAGLEV_CHECK, MAGLEV_LOCAL};

    use super::installed;

    #[test]
    fn a_table_of_one_local_entry_without_the_check_flag_is_installed_as_that_entry() {
        let local = 3 | MAGLEV_LOCAL;
        assert_eq!(installed(&[local; 7]), &[local]);
        assert_eq!(installed(&[local]), &[local]);
        // Anything else is written slot for slot: a flagged local bucket must still look at
        // the flow table, a remote one needs the hash, two local sites differ.
        for table in [
            vec![local; 6].into_iter().chain([local | MAGLEV_CHECK]).collect::<Vec<_>>(),
            vec![local | MAGLEV_CHECK; 7],
            vec![local, local, 5, local],
            vec![5; 7],
            vec![local, 4 | MAGLEV_LOCAL],
        ] {
            assert_eq!(installed(&table), &table[..], "{table:?}");
        }
    }
}
