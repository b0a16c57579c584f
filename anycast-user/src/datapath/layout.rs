//! The pinned maps' layout across releases, and the migration of an older layout's state
//! into this build's, under traffic, without touching a flow.
//!
//! Release 0.1.0 pinned its maps with no version (layout 1); from layout 2 on, `LAYOUT`
//! holds `anycast_common::maps::LAYOUT_VERSION`. A controller that finds an older layout
//! migrates it (docs/controller.md, "Upgrades"):
//!
//! 1. **stage**: the new object is loaded against the running maps whose layout and meaning
//!    did not change (they are shared: the running program and the new one see the same
//!    flow table, the same counters) and against new maps for the others, pinned under
//!    `<pin_dir>/staging/`. Counters of replaced maps are carried over into the new ones.
//!    Nothing the running program uses changes meaning.
//! 2. the owner **reconciles** the staged maps from the config (weights adopted from the
//!    running tables, every local bucket flagged for a look at the flow table, since layout
//!    1 pinned every flow), then marks the staging complete (`staging/LAYOUT`);
//! 3. **swap**: each link's program is replaced with `BPF_LINK_UPDATE`, atomically per
//!    interface: a packet runs either the old program on the old maps or the new one on the
//!    new maps, never a mix;
//! 4. **commit**: each staged pin is renamed over the old one (bpffs renames atomically),
//!    `LAYOUT` last, and the staging directory removed.
//!
//! A failure before the swap leaves the running program and its maps untouched (a staging
//! directory without its `LAYOUT` mark is thrown away by the next start). A controller
//! killed after the mark resumes: the next start loads against the staged pins (or the
//! already renamed ones) and completes the swap and the commit. Going back to an older
//! release is refused by that release before it touches anything: its own size check sees
//! `CONFIG` in another layout.

use std::{
    io,
    path::{Path, PathBuf},
};

use anycast_common::{
    Action, Event, Exception, VipKey,
    counters::exception_index,
    maps::{self, LAYOUT_VERSION},
};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};

/// Subdirectory of the pin directory where a migration stages its new maps.
/// (bpffs refuses names with a dot: "reserved for future use".)
pub const STAGING: &str = "staging";

/// The maps release 0.1.0 (layout 1) pinned.
const LAYOUT_1_MAPS: [&str; 12] = [
    maps::CONFIG,
    maps::ADDR_FILTER,
    maps::VIPS,
    maps::MAGLEV,
    maps::SITES,
    maps::TUNNEL_PEERS,
    maps::FLOWS,
    maps::DEVMAP,
    maps::SITE_STATS,
    maps::VIP_STATS,
    maps::EXCEPTIONS,
    maps::FIB_CACHE,
];

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "the pinned maps in {dir} are layout {found}, newer than this build's {LAYOUT_VERSION}: run the release \
         that pinned them (or a newer one), or `anycast detach` first (interrupts forwarding)"
    )]
    Newer { dir: PathBuf, found: u32 },
    #[error(
        "{dir} holds maps without a LAYOUT, but not all of release 0.1.0's (missing: {missing}): not what \
         a release of anycast pinned. `anycast detach` (interrupts forwarding) and start again"
    )]
    Incomplete { dir: PathBuf, missing: String },
    #[error("reading the pinned {name}: {source}")]
    Read { name: String, source: MapError },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("carrying the counters of {name} over: {source}")]
    Carry { name: &'static str, source: io::Error },
}

type Result<T, E = LayoutError> = std::result::Result<T, E>;

/// What the pin directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pinned {
    /// No maps: a fresh start creates them in this build's layout.
    Fresh,
    /// This build's layout.
    Current,
    /// An older layout, to migrate. `resume`: a migration whose staging is complete was
    /// interrupted (it resumes at the swap).
    Older { from: u32, resume: bool },
}

/// Reads which layout `dir` holds, and throws away an incomplete staging.
pub fn pinned(dir: &Path) -> Result<Pinned> {
    inspect(dir, true)
}

/// [`pinned`] touching nothing (for a dry run).
pub fn inspect_only(dir: &Path) -> Result<Pinned> {
    inspect(dir, false)
}

/// [`pinned`]; `tidy`: throw away an incomplete staging.
fn inspect(dir: &Path, tidy: bool) -> Result<Pinned> {
    let staging = dir.join(STAGING);
    let remove_staging = |s: &Path| if tidy { remove_staging(s) } else { Ok(()) };
    if let Some(v) = read_layout(&dir.join(maps::LAYOUT))? {
        if v > LAYOUT_VERSION {
            return Err(LayoutError::Newer { dir: dir.to_owned(), found: v });
        }
        if v == LAYOUT_VERSION {
            // A commit that renamed LAYOUT and stopped before removing the directory.
            remove_staging(&staging)?;
            return Ok(Pinned::Current);
        }
    }
    let from = match read_layout(&dir.join(maps::LAYOUT))? {
        Some(v) => v,
        None if maps::ALL.iter().any(|n| dir.join(n).exists()) => 1,
        None => {
            remove_staging(&staging)?;
            return Ok(Pinned::Fresh);
        }
    };
    if from == 1 {
        // Release 0.1.0 pinned all twelve of its maps; anything less is not its work.
        let missing: Vec<&str> = LAYOUT_1_MAPS.iter().copied().filter(|n| !dir.join(n).exists()).collect();
        if !missing.is_empty() {
            return Err(LayoutError::Incomplete { dir: dir.to_owned(), missing: missing.join(", ") });
        }
    }
    let resume = read_layout(&staging.join(maps::LAYOUT))? == Some(LAYOUT_VERSION);
    if !resume {
        remove_staging(&staging)?;
    }
    Ok(Pinned::Older { from, resume })
}

/// The value of a pinned `LAYOUT` map, if there is one (0 = created, never marked).
fn read_layout(path: &Path) -> Result<Option<u32>> {
    if !path.exists() {
        return Ok(None);
    }
    let err = |source| LayoutError::Read { name: path.display().to_string(), source };
    let data = MapData::from_pin(path).map_err(err)?;
    let array: Array<MapData, u32> = Array::try_from(Map::Array(data)).map_err(err)?;
    Ok(Some(array.get(&0, 0).map_err(err)?))
}

/// Removes a staging directory and its pins, if there is one. (By hand rather than with
/// `remove_dir_all`, which bpffs refuses with EPERM.)
pub fn remove_staging(staging: &Path) -> Result<()> {
    fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayoutError + 'a {
        move |source| LayoutError::Io { what, path: path.to_owned(), source }
    }
    let entries = match std::fs::read_dir(staging) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(LayoutError::Io { what: "reading", path: staging.to_owned(), source }),
    };
    for entry in entries {
        let path = entry.map_err(err("reading", staging))?.path();
        std::fs::remove_file(&path).map_err(err("removing", &path))?;
    }
    std::fs::remove_dir(staging).map_err(err("removing", staging))?;
    log::info!("upgrade: removed the staging directory {}", staging.display());
    Ok(())
}

/// Maps whose layout and meaning layout `from` shares with this build: a migration keeps
/// the running ones (the new program uses them as they are).
pub fn kept(from: u32) -> &'static [&'static str] {
    match from {
        // Layout 1 → 2: the flow table (same key bytes, same value), the site slots with
        // their generations, the tunnel peers, the egress devices, the per-site and per-VIP
        // counters and the next-hop cache. Replaced: CONFIG (a key, limits), ADDR_FILTER (a
        // new index function, slots that point into ADDRS), VIPS (flags), MAGLEV (entries
        // carry flags), EXCEPTIONS (per reason and action). New: LAYOUT, ADDRS, VIP_ADDRS,
        // EMBRYOS, EVENTS, RATE. (FLOWS' value reads as layout 2's: its u32 site is
        // layout 2's u16 site and a u16 state of 0, "not closing".)
        1 => &[
            maps::SITES,
            maps::TUNNEL_PEERS,
            maps::FLOWS,
            maps::DEVMAP,
            maps::SITE_STATS,
            maps::VIP_STATS,
            maps::FIB_CACHE,
        ],
        _ => &[],
    }
}

/// Maps that earlier builds of this layout pinned and this one no longer has: `FLOW_SEEN`
/// (the closing state of pinned TCP flows, now in their own `FLOWS` values). Nothing
/// carries over: its entries were only ever about flows the new program notes afresh.
pub const RETIRED: [&str; 1] = ["FLOW_SEEN"];

/// Unpins the [`RETIRED`] maps left in `dir` (a program still running with one keeps its
/// own reference until it is replaced); returns the names removed.
pub fn remove_retired(dir: &Path) -> Result<Vec<&'static str>> {
    let mut removed = Vec::new();
    for name in RETIRED {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(LayoutError::Io { what: "removing", path, source }),
        }
    }
    Ok(removed)
}

/// Where this build's map `name` is (or goes) for what `dir` holds: a kept map where it
/// runs; another one of a migration in the staging directory — unless a resumed commit has
/// already renamed it into place.
pub fn map_path(dir: &Path, pinned: &Pinned, name: &str) -> PathBuf {
    match *pinned {
        Pinned::Older { from, resume } if !kept(from).contains(&name) => {
            let staged = dir.join(STAGING).join(name);
            if resume && !staged.exists() { dir.join(name) } else { staged }
        }
        _ => dir.join(name),
    }
}

/// What the running (older) data path steers by, read before the new maps are filled: the
/// VIP slots and their Maglev tables, so that the plan keeps VIP indices (their counters)
/// and adopts the running weights.
#[derive(Clone, Debug, Default)]
pub struct Previous {
    pub from: u32,
    /// VIP key → VIP index.
    pub vips: Vec<(VipKey, u32)>,
    /// VIP index → its Maglev table (site indices, without the size slot).
    pub maglev: Vec<(u32, Vec<u32>)>,
}

/// Reads the running layout-`from` state needed to plan the migration.
pub fn previous(dir: &Path, from: u32) -> Result<Previous> {
    let err = |name: &'static str| move |source| LayoutError::Read { name: name.to_owned(), source };
    let vips_data = MapData::from_pin(dir.join(maps::VIPS)).map_err(err(maps::VIPS))?;
    // Layout 1's VipInfo was the VIP index alone.
    let vips_map: HashMap<MapData, VipKey, u32> =
        HashMap::try_from(Map::HashMap(vips_data)).map_err(err(maps::VIPS))?;
    let vips: Vec<(VipKey, u32)> =
        vips_map.iter().collect::<std::result::Result<_, _>>().map_err(err(maps::VIPS))?;
    let mut maglev = Vec::new();
    let outer = super::maps::Maglev::from_pin(&dir.join(maps::MAGLEV)).map_err(err(maps::MAGLEV))?;
    let mut indices: Vec<u32> = vips.iter().map(|(_, i)| *i).collect();
    indices.sort_unstable();
    indices.dedup();
    for index in indices {
        if let Some(table) = outer.table(index).map_err(err(maps::MAGLEV))? {
            maglev.push((index, table));
        }
    }
    Ok(Previous { from, vips, maglev })
}

/// Layout 1's exception reasons, in its counter order, and where each count goes now: a
/// (reason, action) of `EXCEPTIONS`, or an event (layout 1 counted informational events as
/// exceptions). Its actions were fixed per reason.
enum V1 {
    Exc(Exception, Action),
    Ev(Event),
}

const V1_EXCEPTIONS: [V1; 14] = [
    V1::Exc(Exception::Truncated, Action::Pass),
    V1::Exc(Exception::BadHeader, Action::Pass),
    V1::Exc(Exception::ExtHeaderLimit, Action::Pass),
    V1::Exc(Exception::NoSite, Action::Pass),
    V1::Exc(Exception::SiteDown, Action::Pass),
    V1::Exc(Exception::FibNoNeigh, Action::Pass),
    V1::Exc(Exception::FibFailed, Action::Pass),
    // Counted both answered and passed ones; most were answered.
    V1::Exc(Exception::TooBig, Action::Tx),
    V1::Exc(Exception::EncapFailed, Action::Pass),
    V1::Ev(Event::FlowUnknown),
    V1::Ev(Event::FlowInsertFailed),
    V1::Exc(Exception::DecapUnknownPeer, Action::Pass),
    V1::Exc(Exception::DecapBadInner, Action::Drop),
    V1::Ev(Event::Fragment),
];

/// Adds the running data path's exception counts (layout `from`) into the staged
/// `EXCEPTIONS` and `EVENTS`, CPU by CPU, so that the metrics go on from where they were
/// (the staged maps are new: nothing else writes them yet).
pub fn carry_counters(dir: &Path, from: u32) -> Result<()> {
    if from != 1 {
        return Ok(());
    }
    let err =
        |name: &'static str| move |source: MapError| LayoutError::Read { name: name.to_owned(), source };
    let open = |path: PathBuf, name: &'static str| -> Result<PerCpuArray<MapData, u64>> {
        let data = MapData::from_pin(path).map_err(err(name))?;
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(err(name))
    };
    let old = open(dir.join(maps::EXCEPTIONS), maps::EXCEPTIONS)?;
    let staging = dir.join(STAGING);
    let mut exceptions = open(staging.join(maps::EXCEPTIONS), maps::EXCEPTIONS)?;
    let mut events = open(staging.join(maps::EVENTS), maps::EVENTS)?;
    for (i, to) in V1_EXCEPTIONS.iter().enumerate() {
        let counts = old.get(&(i as u32), 0).map_err(err(maps::EXCEPTIONS))?;
        let (map, index, name) = match *to {
            V1::Exc(e, a) => (&mut exceptions, exception_index(e, a), maps::EXCEPTIONS),
            V1::Ev(e) => (&mut events, e as u32, maps::EVENTS),
        };
        let have = map.get(&index, 0).map_err(err(name))?;
        let sum: Vec<u64> = have.iter().zip(counts.iter()).map(|(a, b)| a + b).collect();
        let values = PerCpuValues::try_from(sum).map_err(|source| LayoutError::Carry { name, source })?;
        map.set(index, values, 0).map_err(err(name))?;
    }
    Ok(())
}

/// Step 4: renames every staged pin over the old one, `LAYOUT` last, and removes the
/// staging directory. Each rename is atomic and idempotent across restarts (a pin already
/// moved is skipped).
pub fn commit(dir: &Path, from: u32) -> Result<()> {
    let staging = dir.join(STAGING);
    let mut names: Vec<&str> = maps::ALL.iter().copied().filter(|n| !kept(from).contains(n)).collect();
    names.sort_by_key(|&n| n == maps::LAYOUT);
    for name in names {
        let src = staging.join(name);
        if !src.exists() {
            continue;
        }
        let dst = dir.join(name);
        std::fs::rename(&src, &dst).map_err(|source| LayoutError::Io {
            what: "renaming into place",
            path: src,
            source,
        })?;
        log::info!("upgrade: {name} of layout {LAYOUT_VERSION} in place");
        super::fault::point("commit");
    }
    std::fs::remove_dir(&staging).map_err(|source| LayoutError::Io {
        what: "removing",
        path: staging,
        source,
    })?;
    Ok(())
}

/// What an upgrade of `dir` would do, one line per step (for `anycast plan`), touching
/// nothing.
pub fn describe(dir: &Path) -> Result<Vec<String>> {
    let from = match inspect(dir, false)? {
        Pinned::Fresh => {
            return Ok(vec![format!("no pinned maps: a start creates them in layout {LAYOUT_VERSION}")]);
        }
        Pinned::Current => {
            return Ok(vec![format!(
                "pinned maps are layout {LAYOUT_VERSION}, this build's: nothing to migrate"
            )]);
        }
        Pinned::Older { from, resume: true } => {
            return Ok(vec![format!(
                "an interrupted migration from layout {from} to {LAYOUT_VERSION}: a start swaps the remaining links and commits"
            )]);
        }
        Pinned::Older { from, .. } => from,
    };
    let kept = kept(from);
    let replaced: Vec<&str> =
        maps::ALL.iter().copied().filter(|n| !kept.contains(n) && dir.join(n).exists()).collect();
    let created: Vec<&str> =
        maps::ALL.iter().copied().filter(|n| !kept.contains(n) && !dir.join(n).exists()).collect();
    let flows = MapData::from_pin(dir.join(maps::FLOWS))
        .and_then(|d| d.info().map(|i| i.max_entries()))
        .map(|n| format!(" (capacity {n})"))
        .unwrap_or_default();
    Ok(vec![
        format!("pinned maps are layout {from}; this build's is {LAYOUT_VERSION}: a start migrates them, under traffic"),
        format!("kept as they run (state and counters go on): {}{flows}", kept.join(", ")),
        format!("rebuilt from the config, weights adopted from the running tables: {}", replaced.join(", ")),
        "exception counters carried over into the new per-(reason, action) counters".to_owned(),
        format!("created: {}", created.join(", ")),
        "then every link's program swapped atomically (BPF_LINK_UPDATE) and the new pins renamed into place".to_owned(),
        "rolling back: release 0.1.0 refuses these maps before touching anything; `anycast detach` (interrupts forwarding) is the way back".to_owned(),
    ])
}
