//! Config (+ runtime overrides) → the contents of the data path's maps.
//!
//! Three steps, the first two pure and unit-tested:
//! 1. [`plan`]: the desired [`State`] of every map from the config, the overrides and the
//!    current state (which keeps slot numbers stable: a site keeps its index and generation
//!    as long as it exists, so established flows stay where they are);
//! 2. [`diff`]: the writes that turn one state into the other, ordered so that nothing
//!    the data path can see at any moment points to something not written yet (a Maglev
//!    table never names a site slot that is not configured, a VIP never points at a
//!    missing table);
//! 3. [`Reconciler::apply`]: performs them through [`DataPathMaps`] and keeps a shadow of
//!    what the maps hold, so a reconcile with no change writes nothing.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use anycast_common::{
    AddrKey, HashKey, LocalConfig, SiteInfo, VipInfo, VipKey,
    config::{CONFIG_DEBUG_LOG, CONFIG_TUNNEL_V4, CONFIG_TUNNEL_V6, Limit},
    maps::{MAX_SITES, MAX_VIPS},
    site::{MAGLEV_CHECK, MAGLEV_LOCAL, MAGLEV_SITE, SITE_CONFIGURED, SITE_LOCAL, SITE_NONE, SITE_UP},
    vip::VIP_STATELESS,
};

pub mod check;
pub mod maglev;
pub mod overrides;
pub mod preview;

use crate::{
    config::{Affinity, Config, Encap, HashKeySource, SiteKind},
    datapath::{
        addresses::Addresses,
        layout::Previous,
        maps::{DataPathMaps, MapsError},
    },
    model::WEIGHT_SCALE,
};
use maglev::Backend;
use overrides::Overrides;

/// What the maps hold (or should hold). Sites: every slot, configured or not (a cleared
/// slot keeps its generation so that its next occupant gets a new one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub config: LocalConfig,
    pub sites: Vec<SiteInfo>,
    pub vips: HashMap<VipKey, VipInfo>,
    /// Every VIP address with its number of `vips` entries.
    pub vip_addrs: BTreeMap<AddrKey, u32>,
    pub peers: HashMap<AddrKey, u32>,
    /// VIP index → Maglev table (entries as the data path reads them: site index plus
    /// `MAGLEV_LOCAL` / `MAGLEV_CHECK`). Shared (`Arc`) between VIPs whose tables are equal, so
    /// that 64 VIPs served by the same sites cost one table of memory, not 64.
    pub maglev: BTreeMap<u32, Arc<[u32]>>,
    /// What `ADDR_FILTER` and `ADDRS` hold: the VIP and tunnel addresses. `None` when they
    /// hold something else than the other maps imply (read back after a write was cut
    /// short): the next plan then writes them whatever it wants.
    pub addresses: Option<Addresses>,
    pub egress: BTreeSet<u32>,
}

impl Default for State {
    fn default() -> Self {
        State {
            config: LocalConfig::default(),
            sites: vec![SiteInfo::default(); MAX_SITES as usize],
            vips: HashMap::new(),
            vip_addrs: BTreeMap::new(),
            peers: HashMap::new(),
            maglev: BTreeMap::new(),
            addresses: None,
            egress: BTreeSet::new(),
        }
    }
}

/// The desired state plus the names behind the slot numbers (for metrics and status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub state: State,
    /// Site name → slot index, in config order.
    pub sites: Vec<(String, u32)>,
    /// VIP name → slot index, in config order.
    pub vips: Vec<(String, u32)>,
    /// Effective Maglev weight of every site.
    pub weights: BTreeMap<String, u32>,
}

/// What the controller decides at run time, on top of the config and the overrides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// Load-derived Maglev weights (`[load]`); a site missing here gets 0 (one table never
    /// mixes load-derived and configured weights); all sites get their configured weight
    /// when `None`.
    pub weights: Option<BTreeMap<String, u32>>,
    /// Sites that failed their health checks: weight 0, and their SITES entry loses
    /// SITE_UP so that the flows pinned to them are re-steered (docs/datapath.md §4).
    pub down: BTreeSet<String>,
}

impl Dynamic {
    /// Before the first measurement: with `[load]`, every new flow stays local (a site is
    /// not overloaded until measured so); without it, the configured weights.
    pub fn at_start(config: &Config) -> Dynamic {
        let weights = config.load.as_ref().map(|_| {
            config
                .sites
                .iter()
                .map(|s| {
                    let local = matches!(s.kind, SiteKind::Local);
                    (s.name.clone(), if local { WEIGHT_SCALE as u32 } else { 0 })
                })
                .collect()
        });
        Dynamic { weights, down: BTreeSet::new() }
    }

    /// With `[load]`, the weights a running data path already steers by, read back from the
    /// Maglev table of a VIP that every site serves (each site's share of the slots): a
    /// controller restarted while its site sheds load keeps shedding instead of pulling
    /// every new flow home until the policy catches up. `plan` is a plan of this config
    /// against `current` (for the slot of each name).
    pub fn adopted(config: &Config, plan: &Plan, current: &State) -> Option<BTreeMap<String, u32>> {
        config.load.as_ref()?;
        let vip = config.vips.iter().zip(&plan.vips).find(|(v, _)| v.sites.len() == config.sites.len())?;
        let table = current.maglev.get(&vip.1.1)?;
        let mut slots: HashMap<u32, usize> = HashMap::new();
        for &entry in table.iter() {
            *slots.entry(entry & MAGLEV_SITE).or_default() += 1;
        }
        let weights: BTreeMap<String, u32> = plan
            .sites
            .iter()
            .map(|(name, slot)| {
                let share = slots.get(slot).copied().unwrap_or(0) as f64 / table.len() as f64;
                (name.clone(), (share * WEIGHT_SCALE).round() as u32)
            })
            .collect();
        // A table of other sites (slots reused since) would not sum to the whole.
        let total: u32 = weights.values().sum();
        (total.abs_diff(WEIGHT_SCALE as u32) <= config.sites.len() as u32).then_some(weights)
    }

    /// What a running data path already steers by, read back from its maps, so that a
    /// restarted controller (or a CLI command writing the maps while no daemon runs) moves
    /// nothing: the load-derived weights ([`Dynamic::adopted`]) and, with `[health]`, the
    /// sites that are not proven up ([`unproven`]).
    pub fn running(
        config: &Config,
        overrides: &Overrides,
        current: &State,
        egress: BTreeSet<u32>,
    ) -> Result<Dynamic, PlanError> {
        let mut dynamic = Dynamic::at_start(config);
        let plan = plan(config, overrides, &dynamic, current, egress)?;
        if let Some(weights) = Dynamic::adopted(config, &plan, current) {
            dynamic.weights = Some(weights);
        }
        if config.health.is_some() {
            dynamic.down = unproven(config, &plan, current);
        }
        Ok(dynamic)
    }
}

/// The remote sites of `plan` that the data path (`current`) does not hold as up: down
/// there (configured without SITE_UP: its health checks failed) or not there at all (new,
/// or its slot re-used with a new generation). With `[health]` they get no flows until
/// they pass `rise` checks, across a restart and after a reload that adds them.
pub fn unproven(config: &Config, plan: &Plan, current: &State) -> BTreeSet<String> {
    plan.sites
        .iter()
        .zip(&config.sites)
        .filter(|(_, s)| matches!(s.kind, SiteKind::Remote { .. }))
        .filter(|((_, slot), _)| {
            let (have, want) = (&current.sites[*slot as usize], &plan.state.sites[*slot as usize]);
            have.flags & SITE_CONFIGURED == 0
                || have.flags & SITE_UP == 0
                || have.generation != want.generation
        })
        .map(|((name, _), _)| name.clone())
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no free site slot (the data path holds {MAX_SITES})")]
    NoSiteSlot,
    #[error("no free VIP slot (the data path holds {MAX_VIPS})")]
    NoVipSlot,
}

pub fn addr_key(a: IpAddr) -> AddrKey {
    match a {
        IpAddr::V4(a) => AddrKey::v4(a.octets()),
        IpAddr::V6(a) => AddrKey::v6(a.octets()),
    }
}

fn vip_key(v: &crate::config::Vip) -> VipKey {
    let a = addr_key(v.address);
    VipKey { addr: a.addr, port: v.port, proto: v.protocol.number(&v.address), family: a.family }
}

/// The SITES entry of a configured site, generation left for the caller.
fn site_info(kind: &SiteKind) -> SiteInfo {
    match kind {
        SiteKind::Local => SiteInfo { flags: SITE_CONFIGURED | SITE_UP | SITE_LOCAL, ..Default::default() },
        SiteKind::Remote { endpoint, encap } => {
            let a = addr_key(*endpoint);
            let (encap, gue_port) = match encap {
                Encap::Ip => (anycast_common::Encap::Ip, 0),
                Encap::Gue { port } => (anycast_common::Encap::Gue, *port),
            };
            SiteInfo {
                flags: SITE_CONFIGURED | SITE_UP,
                generation: 0,
                tunnel_addr: a.addr,
                tunnel_family: a.family,
                encap: encap as u8,
                gue_port,
            }
        }
    }
}

/// Whether slot `have` already holds this site: same role and tunnel endpoint. That is how
/// a restarted controller, which has no memory of names, finds its sites' slots again.
fn same_site(have: &SiteInfo, want: &SiteInfo) -> bool {
    have.flags & SITE_CONFIGURED != 0
        && (have.flags & SITE_LOCAL) == (want.flags & SITE_LOCAL)
        && (want.flags & SITE_LOCAL != 0
            || (have.tunnel_addr == want.tunnel_addr && have.tunnel_family == want.tunnel_family))
}

/// Computes the desired state. `current` is what the maps hold now; `egress` the ifindexes
/// of the configured interfaces.
pub fn plan(
    config: &Config,
    overrides: &Overrides,
    dynamic: &Dynamic,
    current: &State,
    egress: BTreeSet<u32>,
) -> Result<Plan, PlanError> {
    // Sites: keep the slot of every site that is still there, then place the new ones in
    // the lowest free slots with a bumped generation.
    let wanted: Vec<SiteInfo> = config.sites.iter().map(|s| site_info(&s.kind)).collect();
    let mut slot_of: Vec<Option<u32>> = vec![None; wanted.len()];
    let mut taken = vec![false; MAX_SITES as usize];
    for (i, want) in wanted.iter().enumerate() {
        if let Some(slot) = (0..MAX_SITES as usize).find(|&s| !taken[s] && same_site(&current.sites[s], want))
        {
            taken[slot] = true;
            slot_of[i] = Some(slot as u32);
        }
    }
    let mut sites = current.sites.clone();
    for s in sites.iter_mut() {
        s.flags = 0;
    }
    let mut names = Vec::new();
    for (i, want) in wanted.iter().enumerate() {
        let slot = match slot_of[i] {
            Some(slot) => slot as usize,
            None => {
                // A slot configured now but not kept is being vacated by this very plan:
                // leave it alone so that its flows see it unconfigured first.
                let free = (0..MAX_SITES as usize)
                    .find(|&s| !taken[s] && current.sites[s].flags & SITE_CONFIGURED == 0)
                    .ok_or(PlanError::NoSiteSlot)?;
                taken[free] = true;
                free
            }
        };
        let generation = if slot_of[i].is_some() {
            current.sites[slot].generation
        } else {
            current.sites[slot].generation.wrapping_add(1)
        };
        sites[slot] = SiteInfo { generation, ..*want };
        if dynamic.down.contains(&config.sites[i].name) {
            sites[slot].flags &= !SITE_UP;
        }
        names.push((config.sites[i].name.clone(), slot as u32));
    }
    let index_of: HashMap<&str, u32> = names.iter().map(|(n, i)| (n.as_str(), *i)).collect();

    let out = |s: &crate::config::Site| overrides.drained.contains(&s.name) || dynamic.down.contains(&s.name);
    let configured: BTreeMap<&str, u32> = config
        .sites
        .iter()
        .map(|s| (s.name.as_str(), if out(s) { 0 } else { s.configured_weight() }))
        .collect();
    let weights: BTreeMap<String, u32> = config
        .sites
        .iter()
        .map(|s| {
            let w = match &dynamic.weights {
                _ if out(s) => 0,
                Some(load) => load.get(&s.name).copied().unwrap_or(0),
                None => configured[s.name.as_str()],
            };
            (s.name.clone(), w)
        })
        .collect();

    let peers: HashMap<AddrKey, u32> = config
        .sites
        .iter()
        .filter_map(|s| match s.kind {
            SiteKind::Remote { endpoint, .. } => Some((addr_key(endpoint), index_of[s.name.as_str()])),
            SiteKind::Local => None,
        })
        .collect();

    // VIPs keep their index (and so their counters and table) while they exist.
    let keys: Vec<VipKey> = config.vips.iter().map(vip_key).collect();
    let mut used: BTreeSet<u32> = keys.iter().filter_map(|k| current.vips.get(k).map(|v| v.index)).collect();
    let mut vips = HashMap::new();
    let mut maglev = BTreeMap::new();
    let local_site =
        config.sites.iter().find(|s| matches!(s.kind, SiteKind::Local)).map(|s| index_of[s.name.as_str()]);
    // The key the owner resolved into the config; a plan without one (a one-shot command)
    // keeps the running key. Another key puts every flow in another bucket: a flow pinned
    // to another site may now fall in any local bucket, which must then look it up.
    let hash_key = match config.datapath.hash_key {
        HashKeySource::Inline(k) => HashKey::from_bytes(k),
        HashKeySource::File(_) | HashKeySource::Generated => current.config.hash_key,
    };
    let rekeyed = hash_key != current.config.hash_key;
    // VIPs served by the same sites get the same table: build it once (and flag it once
    // per table it replaces).
    let mut built: HashMap<Vec<(u32, u32)>, Arc<[u32]>> = HashMap::new();
    let mut flagged: HashMap<(usize, Option<usize>), Arc<[u32]>> = HashMap::new();
    let mut vip_names = Vec::new();
    for (v, key) in config.vips.iter().zip(&keys) {
        let index = match current.vips.get(key) {
            Some(info) => info.index,
            None => {
                let stale: BTreeSet<u32> = current.vips.values().map(|i| i.index).collect();
                let free = (0..MAX_VIPS)
                    .find(|i| !used.contains(i) && !stale.contains(i))
                    .or_else(|| (0..MAX_VIPS).find(|i| !used.contains(i)))
                    .ok_or(PlanError::NoVipSlot)?;
                used.insert(free);
                free
            }
        };
        let stateless = v.affinity == Affinity::None && v.protocol == crate::config::Protocol::Udp;
        vips.insert(*key, VipInfo { index, flags: if stateless { VIP_STATELESS } else { 0 } });
        let mut backends: Vec<Backend> = v
            .sites
            .iter()
            .map(|name| Backend { index: index_of[name.as_str()], name, weight: weights[name] })
            .collect();
        // Load-derived weights give a VIP that the local site does not serve nothing while
        // the local site keeps everything: such a VIP keeps its configured weights.
        if backends.iter().all(|b| b.weight == 0) {
            for b in &mut backends {
                b.weight = configured[b.name];
            }
        }
        let input: Vec<(u32, u32)> = backends.iter().map(|b| (b.index, b.weight)).collect();
        let base = built
            .entry(input)
            .or_insert_with(|| maglev::build(&backends, config.datapath.maglev_table_size).into())
            .clone();
        let previous = current.maglev.get(&index);
        let key = (
            Arc::as_ptr(&base) as *const u32 as usize,
            previous.map(|p| Arc::as_ptr(p) as *const u32 as usize),
        );
        let table = flagged
            .entry(key)
            .or_insert_with(|| flag_table(&base, local_site, previous.map(|p| &p[..]), rekeyed).into())
            .clone();
        maglev.insert(index, table);
        vip_names.push((v.name.clone(), index));
    }

    let mut vip_addrs: BTreeMap<AddrKey, u32> = BTreeMap::new();
    for v in &config.vips {
        *vip_addrs.entry(addr_key(v.address)).or_default() += 1;
    }
    let mut flags = if config.local.debug_log { CONFIG_DEBUG_LOG } else { 0 };
    let d = &config.datapath;
    let mut local = LocalConfig {
        hash_key,
        gue_port: config.local.gue_port.unwrap_or(0),
        socket_netns: d.socket_netns_id.unwrap_or(u32::MAX),
        local_site: local_site.unwrap_or(u32::MAX),
        icmp: Limit::per_second(d.icmp_rate, d.icmp_burst),
        pin: Limit::per_second(d.pin_rate, d.pin_burst),
        ..Default::default()
    };
    if let Some(a) = config.local.tunnel_v4 {
        flags |= CONFIG_TUNNEL_V4;
        local.tunnel_v4 = a.octets();
    }
    if let Some(a) = config.local.tunnel_v6 {
        flags |= CONFIG_TUNNEL_V6;
        local.tunnel_v6 = a.octets();
    }
    local.flags = flags;
    let addresses = Some(Addresses::new(&vips, tunnels(&local)));

    Ok(Plan {
        state: State { config: local, sites, vips, vip_addrs, peers, maglev, addresses, egress },
        sites: names,
        vips: vip_names,
        weights,
    })
}

/// A built table's entries as the data path reads them: `MAGLEV_LOCAL` on the local site's
/// slots, and `MAGLEV_CHECK` on those of them that named another site in the table the data
/// path holds now, or carried the flag already. Flows of such a bucket may be pinned to
/// another site or be mid-handshake towards one, so their mid-flow packets must look at the
/// flow and embryonic tables; a local bucket without the flag sends them straight to the
/// local stack (docs/datapath.md §6). A previous table of another size (a changed
/// `maglev_table_size`), or one under another hash key (`rekeyed`: every flow is in another
/// bucket now), says nothing slot by slot: every local slot is flagged.
fn flag_table(base: &[u32], local: Option<u32>, previous: Option<&[u32]>, rekeyed: bool) -> Vec<u32> {
    let was_elsewhere = |slot: usize| match previous {
        None => false,
        Some(p) if rekeyed || p.len() != base.len() => true,
        Some(p) => {
            let e = p[slot];
            let site = e & MAGLEV_SITE;
            e & MAGLEV_CHECK != 0 || (site != SITE_NONE && e & MAGLEV_LOCAL == 0 && Some(site) != local)
        }
    };
    base.iter()
        .enumerate()
        .map(|(slot, &site)| match local {
            Some(l) if site == l => MAGLEV_LOCAL | site | if was_elsewhere(slot) { MAGLEV_CHECK } else { 0 },
            _ => site,
        })
        .collect()
}

/// The tunnel addresses `config` holds.
fn tunnels(config: &LocalConfig) -> impl Iterator<Item = AddrKey> + use<> {
    let v4 = (config.flags & CONFIG_TUNNEL_V4 != 0).then(|| AddrKey::v4(config.tunnel_v4));
    let v6 = (config.flags & CONFIG_TUNNEL_V6 != 0).then(|| AddrKey::v6(config.tunnel_v6));
    v4.into_iter().chain(v6)
}

/// One write to the data path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Config(LocalConfig),
    Site(u32, SiteInfo),
    Peer(AddrKey, u32),
    Maglev(u32, Arc<[u32]>),
    Vip(VipKey, VipInfo),
    VipAddr(AddrKey, u32),
    Addresses(Addresses),
    RemoveVipAddr(AddrKey),
    RemoveVip(VipKey),
    /// A table no VIP uses any more (its VIP was removed): the slot is emptied so that the
    /// kernel frees it.
    RemoveMaglev(u32),
    RemovePeer(AddrKey),
    AddEgress(u32),
    RemoveEgress(u32),
}

/// The writes that turn `have` into `want`, in a safe order: first everything new things
/// will point to (config, sites being configured, peers, tables), then the VIPs and the
/// filter, then removals, and sites being unconfigured last (no table names them by then).
pub fn diff(want: &State, have: &State) -> Vec<Op> {
    let mut ops = Vec::new();
    if want.config != have.config {
        ops.push(Op::Config(want.config));
    }
    // Site updates in three groups: those that make a site usable (or change it) come before
    // anything that names it; a site going down comes after the tables that take its weight
    // away (in between, a new flow whose bucket still names it would be served here as
    // `site_down`, then sent elsewhere by the new table: a TCP flow would be reset); sites
    // being unconfigured come last of all.
    let configured = |s: &SiteInfo| s.flags & SITE_CONFIGURED != 0;
    let going_down = |w: &SiteInfo, h: &SiteInfo| {
        configured(w) && configured(h) && h.flags & SITE_UP != 0 && w.flags & SITE_UP == 0
    };
    #[derive(PartialEq, Clone, Copy)]
    enum Group {
        First,
        Down,
        Last,
    }
    let site_ops = |group: Group| {
        want.sites
            .iter()
            .zip(&have.sites)
            .enumerate()
            .filter(move |(_, (w, h))| {
                let g = match () {
                    _ if !configured(w) => Group::Last,
                    _ if going_down(w, h) => Group::Down,
                    _ => Group::First,
                };
                w != h && g == group
            })
            .map(|(i, (w, _))| Op::Site(i as u32, *w))
    };
    ops.extend(site_ops(Group::First));
    for (k, v) in &want.peers {
        if have.peers.get(k) != Some(v) {
            ops.push(Op::Peer(*k, *v));
        }
    }
    for (i, t) in &want.maglev {
        if have.maglev.get(i) != Some(t) {
            ops.push(Op::Maglev(*i, t.clone()));
        }
    }
    for (k, v) in &want.vip_addrs {
        if have.vip_addrs.get(k) != Some(v) {
            ops.push(Op::VipAddr(*k, *v));
        }
    }
    for (k, v) in &want.vips {
        if have.vips.get(k) != Some(v) {
            ops.push(Op::Vip(*k, *v));
        }
    }
    if let Some(a) = &want.addresses
        && want.addresses != have.addresses
    {
        ops.push(Op::Addresses(a.clone()));
    }
    ops.extend(site_ops(Group::Down));
    for k in have.vips.keys().filter(|k| !want.vips.contains_key(*k)) {
        ops.push(Op::RemoveVip(*k));
    }
    for i in have.maglev.keys().filter(|i| !want.maglev.contains_key(*i)) {
        ops.push(Op::RemoveMaglev(*i));
    }
    for k in have.vip_addrs.keys().filter(|k| !want.vip_addrs.contains_key(*k)) {
        ops.push(Op::RemoveVipAddr(*k));
    }
    for k in have.peers.keys().filter(|k| !want.peers.contains_key(*k)) {
        ops.push(Op::RemovePeer(*k));
    }
    ops.extend(want.egress.difference(&have.egress).map(|&i| Op::AddEgress(i)));
    ops.extend(have.egress.difference(&want.egress).map(|&i| Op::RemoveEgress(i)));
    ops.extend(site_ops(Group::Last));
    ops
}

impl State {
    /// The state to plan a migration against: this one (the maps as the new program will
    /// see them) with the VIP slots and Maglev tables of the older layout's running data
    /// path, so that VIPs keep their indices (and counters) and the running weights are
    /// adopted. Every entry of those tables counts as flagged `MAGLEV_CHECK`: layout 1 pinned
    /// every flow, so any local bucket may hold flows pinned to another site.
    pub fn with_previous(&self, previous: &Previous) -> State {
        let flagged: Vec<(u32, Vec<u32>)> = previous
            .maglev
            .iter()
            .map(|(index, table)| (*index, table.iter().map(|&e| e | MAGLEV_CHECK).collect()))
            .collect();
        let mut s = self.with_tables(&flagged);
        s.vips = previous.vips.iter().map(|(k, index)| (*k, VipInfo { index: *index, flags: 0 })).collect();
        s
    }

    /// This state with the Maglev tables `tables` (VIP slot → entries) instead of the maps'
    /// own: a rebuilt `MAGLEV` first gets the tables the running program steers by.
    pub fn with_tables(&self, tables: &[(u32, Vec<u32>)]) -> State {
        let mut s = self.clone();
        s.maglev = tables.iter().map(|(index, table)| (*index, table.as_slice().into())).collect();
        s
    }

    /// Records a write that succeeded.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Config(c) => self.config = *c,
            Op::Site(i, s) => self.sites[*i as usize] = *s,
            Op::Peer(k, v) => {
                self.peers.insert(*k, *v);
            }
            Op::Maglev(i, t) => {
                self.maglev.insert(*i, t.clone());
            }
            Op::Vip(k, v) => {
                self.vips.insert(*k, *v);
            }
            Op::VipAddr(k, n) => {
                self.vip_addrs.insert(*k, *n);
            }
            Op::RemoveVipAddr(k) => {
                self.vip_addrs.remove(k);
            }
            Op::Addresses(a) => self.addresses = Some(a.clone()),
            Op::RemoveVip(k) => {
                self.vips.remove(k);
            }
            Op::RemoveMaglev(i) => {
                self.maglev.remove(i);
            }
            Op::RemovePeer(k) => {
                self.peers.remove(k);
            }
            Op::AddEgress(i) => {
                self.egress.insert(*i);
            }
            Op::RemoveEgress(i) => {
                self.egress.remove(i);
            }
        }
    }

    /// Reads everything the data path holds. Costs one syscall per map entry (65 538 per
    /// Maglev table): done once at start; afterwards the [`Reconciler`]'s shadow is used.
    pub fn read(maps: &DataPathMaps) -> Result<State, MapsError> {
        let vips: HashMap<VipKey, VipInfo> = maps.vips()?.into_iter().collect();
        let mut maglev = BTreeMap::new();
        // One read per distinct inner map (the reconciler shares equal tables).
        let mut seen: HashMap<u32, Arc<[u32]>> = HashMap::new();
        for info in vips.values() {
            let Some(id) = maps.maglev_id(info.index)? else { continue };
            let table = match seen.get(&id) {
                Some(t) => Some(t.clone()),
                None => maps.maglev(info.index)?.map(|t| {
                    let t: Arc<[u32]> = t.into();
                    seen.insert(id, t.clone());
                    t
                }),
            };
            if let Some(t) = table {
                maglev.insert(info.index, t);
            }
        }
        let config = maps.config()?;
        // The filter is a hash of addresses and cannot be read back as addresses. What it
        // and ADDRS should hold follows from VIPS and CONFIG; kept only if they hold exactly
        // that, so that an unchanged config compares equal and an interrupted write is
        // finished by the next plan.
        let addresses = Some(Addresses::new(&vips, tunnels(&config))).filter(|a| maps.holds_addresses(a));
        Ok(State {
            config,
            sites: (0..MAX_SITES).map(|i| maps.site(i)).collect::<Result<_, _>>()?,
            vips,
            vip_addrs: maps.vip_addrs()?.into_iter().collect(),
            peers: maps.tunnel_peers()?.into_iter().collect(),
            maglev,
            addresses,
            egress: maps.egress()?.into_iter().collect(),
        })
    }
}

fn write(maps: &mut DataPathMaps, op: &Op) -> Result<(), MapsError> {
    match op {
        Op::Config(c) => maps.set_config(c),
        Op::Site(i, s) => maps.set_site(*i, s),
        Op::Peer(k, v) => maps.set_tunnel_peer(k, *v),
        Op::Maglev(i, t) => maps.set_maglev(*i, t),
        Op::Vip(k, v) => maps.set_vip(k, v),
        Op::VipAddr(k, n) => maps.set_vip_addr(k, *n),
        Op::RemoveVipAddr(k) => maps.remove_vip_addr(k),
        Op::Addresses(a) => maps.set_addresses(a),
        Op::RemoveVip(k) => maps.remove_vip(k),
        Op::RemoveMaglev(i) => maps.remove_maglev(*i),
        Op::RemovePeer(k) => maps.remove_tunnel_peer(k),
        Op::AddEgress(i) => maps.add_egress(*i),
        Op::RemoveEgress(i) => maps.remove_egress(*i),
    }
}

/// Counts of what one reconcile wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub writes: usize,
    pub tables: usize,
}

/// Keeps the data path equal to the latest plan.
pub struct Reconciler {
    shadow: State,
}

impl Reconciler {
    pub fn new(maps: &DataPathMaps) -> Result<Self, MapsError> {
        Ok(Reconciler { shadow: State::read(maps)? })
    }

    pub fn current(&self) -> &State {
        &self.shadow
    }

    /// Writes the difference between `want` and what the maps hold. On an error the
    /// writes done so far stay (each is consistent on its own) and are remembered.
    pub fn apply(&mut self, maps: &mut DataPathMaps, want: &State) -> Result<Applied, MapsError> {
        let ops = diff(want, &self.shadow);
        let mut applied = Applied::default();
        // `diff` emits the table swaps together: write them as one batch (equal tables
        // shared, one wait for running programs).
        let tables: Vec<(u32, &[u32])> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Maglev(vip, t) => Some((*vip, &t[..])),
                _ => None,
            })
            .collect();
        let mut tables_written = false;
        for op in &ops {
            match op {
                Op::Maglev(..) if tables_written => {}
                Op::Maglev(..) => {
                    maps.set_maglev_tables(&tables)?;
                    tables_written = true;
                    applied.tables = tables.len();
                }
                _ => write(maps, op)?,
            }
            self.shadow.apply(op);
            applied.writes += 1;
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests;
