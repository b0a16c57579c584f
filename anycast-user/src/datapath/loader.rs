//! Loading the data path so that it outlives the controller: every map and every XDP link
//! is pinned under the pin directory (bpffs), and a controller that starts while a pinned
//! instance exists adopts it instead of replacing it.
//!
//! Layout (default `/sys/fs/bpf/anycast`):
//!
//! ```text
//! <pin_dir>/<MAP NAME>      one pin per name in anycast_common::maps::ALL
//! <pin_dir>/links/<IFACE>   the bpf_link attaching the program to IFACE
//! ```
//!
//! Why this keeps forwarding across restarts and upgrades (kernel facts relied on):
//! - A pinned bpf_link stays attached with no process holding it, and keeps its program
//!   loaded; a pinned map keeps its contents (flow table, counters, Maglev tables).
//! - `EbpfLoader::map_pin_path` makes a new load reuse the pinned maps, so a new program
//!   shares the running one's state.
//! - `BPF_LINK_UPDATE` (aya `Xdp::attach_to_link`) swaps the program of an attached link
//!   in one step: every packet runs either the old or the new program, none is dropped.
//!   It is only done when the program differs: the kernel's program tag is a hash of the
//!   instructions with map fds masked out, so it identifies the object independently of
//!   which maps it was relocated against.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anycast_common::maps::{self, FLOWS, LAYOUT_VERSION, MAGLEV, MAX_VIPS, PROGRAM};
use aya::{
    Ebpf, EbpfLoader,
    maps::MapInfo,
    programs::{
        ProgramError, ProgramInfo, Xdp,
        links::{FdLink, LinkError, LinkInfo, LinkType, PinnedLink},
        loaded_programs,
        xdp::XdpLink,
    },
};

use super::{
    attach::{self, AttachError, Mode},
    ebpf_log, fault,
    layout::{self, LayoutError, Pinned, Previous},
    link_state::{self, LinkState},
    maglev::{self, Shape},
    maps::{DataPathMaps, Maglev, MapsError},
};

/// `BPF_FS_MAGIC` from linux/magic.h: the f_type statfs reports for bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const LINKS: &str = "links";

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(
        "{path} is not on a BPF filesystem (bpffs) and mounting one failed: {source}. Mount it with `mount -t bpf bpf /sys/fs/bpf` or choose a pin_dir on bpffs"
    )]
    NoBpffs { path: PathBuf, source: io::Error },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error(
        "pinned map {path} has key/value sizes {have:?} but this build's layout {LAYOUT_VERSION} expects \
         {want:?}, and its LAYOUT says it is the same layout: the pins were changed by hand? \
         `anycast detach` (interrupts forwarding) and start again"
    )]
    Incompatible { path: PathBuf, have: (u32, u32), want: (u32, u32) },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Kernel(#[from] super::kernel::KernelError),
    #[error("reading pinned map {path}: {source}")]
    PinnedMap { path: PathBuf, source: aya::maps::MapError },
    #[error("parsing the embedded XDP object: {0}")]
    Parse(#[from] aya_obj::ParseError),
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP object has no XDP program `{PROGRAM}`")]
    NoProgram,
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("pinned link {path}: {source}")]
    Link { path: PathBuf, source: LinkError },
    #[error("pinning link {path}: {source}")]
    Pin { path: PathBuf, source: aya::pin::PinError },
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Maps(#[from] MapsError),
}

type Result<T, E = LoaderError> = std::result::Result<T, E>;

/// What happened on one interface at start or reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkOutcome {
    /// Newly attached and pinned.
    Attached(Mode),
    /// A pinned link running this very program: left untouched.
    Adopted,
    /// A pinned link running another program: program swapped in place.
    Upgraded,
    /// A pinned link of an interface the config no longer lists: unpinned, which detaches
    /// the program (left, it would run on maps this controller no longer writes).
    Detached,
    /// The pinned link was defunct (its interface was recreated): unpinned, and the
    /// program attached afresh and pinned.
    Reattached(Mode),
}

impl std::fmt::Display for LinkOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkOutcome::Attached(mode) => write!(f, "attached ({} XDP), pinned", mode.name()),
            LinkOutcome::Adopted => f.write_str("adopted the running instance"),
            LinkOutcome::Upgraded => f.write_str("program upgraded in place (link update)"),
            LinkOutcome::Detached => f.write_str("detached (no longer configured)"),
            LinkOutcome::Reattached(mode) => {
                write!(f, "attached afresh ({} XDP), pinned: the pinned link was defunct", mode.name())
            }
        }
    }
}

/// The links this controller holds on the running data path.
pub struct Instance {
    pin_dir: PathBuf,
    /// Keeps the program loaded while links are being attached or updated.
    ebpf: Ebpf,
    links: BTreeMap<String, FdLink>,
    /// Kernel id of the `MAGLEV` this program uses: a link whose program has the same tag
    /// but another `MAGLEV` (rebuilt at this start) is updated, not adopted.
    maglev_id: u32,
}

/// The program loaded against the pinned maps (or new ones), its links not touched yet:
/// [`load`] returns it with the maps, the owner makes the maps match the config, then
/// [`Loaded::attach`] puts the program on the interfaces.
pub struct Loaded {
    pin_dir: PathBuf,
    ebpf: Ebpf,
    pinned: Pinned,
    /// `MAGLEV` is rebuilt in the staging directory (see [`load`]).
    rebuild_maglev: bool,
    maglev_id: u32,
}

/// What [`load`] found.
pub struct Prepared {
    pub loaded: Loaded,
    pub maps: DataPathMaps,
    /// Whether the maps were pinned already (an instance was adopted or is migrated).
    pub adopted_maps: bool,
    /// An older layout being migrated: what its data path steers by, for the plan (keep
    /// the VIP slots, adopt the weights, flag every local bucket).
    pub previous: Option<Previous>,
    /// `MAGLEV` rebuilt for another table size: the tables the running program steers by
    /// (VIP slot → table without its size slot), to carry onto the new one.
    pub rebuilt_maglev: Option<Vec<(u32, Vec<u32>)>>,
}

pub fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(LINKS).join(iface)
}

/// Where to pin: `pin_dir` itself when it is on bpffs. Otherwise, when it is under
/// `/sys/fs/bpf`, the host's bpffs seen through `/proc/1/root` if that is readable: `ip
/// netns exec` runs commands in a private mount namespace with a fresh /sys that has no
/// bpffs, and a bpffs mounted there would be a private instance whose pins vanish with the
/// namespace (and the links with them). Failing both, bpffs is mounted on /sys/fs/bpf.
/// Creates the directories.
pub fn resolve_pin_dir(pin_dir: &Path) -> Result<PathBuf> {
    let sys_bpf = Path::new("/sys/fs/bpf");
    let dir = if is_bpffs(existing_ancestor(pin_dir)) {
        pin_dir.to_owned()
    } else if let Ok(rest) = pin_dir.strip_prefix(sys_bpf) {
        let host = Path::new("/proc/1/root/sys/fs/bpf");
        if is_bpffs(host) {
            log::info!(
                "{} is not bpffs in this mount namespace; pinning in the host's, {}",
                sys_bpf.display(),
                host.display()
            );
            host.join(rest)
        } else {
            mount_bpffs(sys_bpf).map_err(|source| LoaderError::NoBpffs { path: pin_dir.into(), source })?;
            log::warn!(
                "mounted bpffs on {}. If this process runs in a private mount namespace (`ip \
                 netns exec` makes one per command), the pins vanish with it and the data path \
                 with them: enter the network namespace with `nsenter --net=/run/netns/NAME` \
                 instead, which keeps the host's /sys/fs/bpf",
                sys_bpf.display()
            );
            pin_dir.to_owned()
        }
    } else {
        return Err(LoaderError::NoBpffs { path: pin_dir.into(), source: io::Error::other("not bpffs") });
    };
    let links = dir.join(LINKS);
    std::fs::create_dir_all(&links).map_err(|source| LoaderError::Io {
        what: "creating",
        path: links,
        source,
    })?;
    Ok(dir)
}

fn existing_ancestor(p: &Path) -> &Path {
    p.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"))
}

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path, st a valid out-pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

fn mount_bpffs(at: &Path) -> io::Result<()> {
    let target = CString::new(at.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let bpf = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let rc = unsafe { libc::mount(bpf.as_ptr(), target.as_ptr(), bpf.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Refuses maps to be reused whose key or value size differs from the object's: reusing
/// them would make the new program read another layout (the kernel only checks sizes the
/// verifier sees). `paths` are where each map is pinned for this load.
fn check_pinned(object: &[u8], paths: &[(&str, PathBuf)]) -> Result<bool> {
    let obj = aya_obj::Object::parse(object)?;
    let mut any = false;
    for (name, path) in paths {
        if !path.exists() {
            continue;
        }
        any = true;
        let info = MapInfo::from_pin(path)
            .map_err(|source| LoaderError::PinnedMap { path: path.clone(), source })?;
        let Some(want) = obj.maps.get(*name) else { continue };
        // DEVMAP's value size is chosen by aya at creation (ifindex alone or with a program
        // fd, by kernel support), not taken from the object: compare keys only.
        let value = |v: u32| if *name == maps::DEVMAP { 0 } else { v };
        let have = (info.key_size(), value(info.value_size()));
        let want = (want.key_size(), value(want.value_size()));
        if have != want {
            return Err(LoaderError::Incompatible { path: path.clone(), have, want });
        }
    }
    Ok(any)
}

/// Loads `object` against the maps pinned under `pin_dir` — this build's layout as they
/// are, an older layout by staging the maps that changed (see [`layout`]) — creating and
/// pinning the ones that are missing. Touches no link.
///
/// `MAGLEV` is created here, not by aya, with inner tables of `maglev_table_size` slots
/// ([`maglev`]). A pinned one of another shape (another `maglev_table_size`, or an older
/// build's tables of any size) is rebuilt: a new one is staged, the program loaded against
/// it and the running tables handed back; the owner writes them into it and swaps every
/// pinned link onto it ([`Loaded::attach_pinned`], which renames the new pin into place)
/// before it applies the config. Nothing else changes: with the same size no flow
/// moves; another size re-slots every bucket (docs/controller.md: TCP connections stay,
/// stateless flows move).
pub fn load(object: &[u8], pin_dir: &Path, flow_table_size: u32, maglev_table_size: u32) -> Result<Prepared> {
    super::kernel::check(&super::kernel::release())?;
    let pin_dir = resolve_pin_dir(pin_dir)?;
    let pinned = layout::pinned(&pin_dir)?;
    let mut paths: Vec<(&str, PathBuf)> =
        maps::ALL.iter().map(|&n| (n, layout::map_path(&pin_dir, &pinned, n))).collect();
    let adopted_maps = check_pinned(object, &paths)?;
    let shape = Shape::for_size(maglev_table_size);
    let staging = pin_dir.join(layout::STAGING);
    let create_staging = || {
        std::fs::create_dir_all(&staging).map_err(|source| LoaderError::Io {
            what: "creating",
            path: staging.clone(),
            source,
        })
    };
    let maglev_err = |path: &Path| {
        let path = path.to_owned();
        move |source| LoaderError::PinnedMap { path, source }
    };
    let running = pin_dir.join(MAGLEV);
    let rebuild_maglev = pinned == Pinned::Current
        && maglev::pinned_shape(&running).map_err(maglev_err(&running))? != Some(shape);
    let mut rebuilt_maglev = None;
    if rebuild_maglev {
        log::info!(
            "the pinned Maglev tables are not of {maglev_table_size} slots as this build makes them: \
             rebuilding them (the running weights are kept)"
        );
        let outer = Maglev::from_pin(&running).map_err(maglev_err(&running))?;
        let mut tables = Vec::new();
        for vip in 0..MAX_VIPS {
            if let Some(t) = outer.table(vip).map_err(maglev_err(&running))? {
                tables.push((vip, t));
            }
        }
        rebuilt_maglev = Some(tables);
        create_staging()?;
        let staged = staging.join(MAGLEV);
        remove_pin(&staged)?;
        if let Some(p) = paths.iter_mut().find(|(n, _)| *n == MAGLEV) {
            p.1 = staged;
        }
    }
    let maglev_path = paths.iter().find(|(n, _)| *n == MAGLEV).map(|(_, p)| p.clone()).unwrap_or(running);
    let previous = match pinned {
        Pinned::Older { from, resume } => {
            log::info!(
                "upgrade: pinned maps are layout {from}, this build's is {LAYOUT_VERSION}: migrating{}",
                if resume { " (resuming an interrupted migration)" } else { "" }
            );
            create_staging()?;
            // Resumed, the staged maps hold the plan already (and a commit may have renamed
            // some of the old ones away): plan against them as they are.
            if resume { None } else { Some(layout::previous(&pin_dir, from)?) }
        }
        Pinned::Fresh | Pinned::Current => None,
    };
    if !maglev_path.exists() {
        maglev::create_pinned(&maglev_path, shape).map_err(maglev_err(&maglev_path))?;
    }
    let maglev_id = MapInfo::from_pin(&maglev_path).map_err(maglev_err(&maglev_path))?.id();
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(FLOWS, flow_table_size);
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = match loader.load(object) {
        Ok(ebpf) => ebpf,
        Err(e) => {
            // A fresh start that failed leaves no MAGLEV alone (the next start would take a
            // lone pin for foreign maps).
            if pinned == Pinned::Fresh {
                remove_pin(&maglev_path)?;
            }
            return Err(e.into());
        }
    };
    if adopted_maps {
        let flows = MapInfo::from_pin(pin_dir.join(FLOWS))
            .map_err(|source| LoaderError::PinnedMap { path: pin_dir.join(FLOWS), source })?;
        if flows.max_entries() != flow_table_size {
            log::warn!(
                "the pinned flow table has {} entries, the config asks for {flow_table_size}: \
                 the running size stays until `anycast detach` and a restart",
                flows.max_entries()
            );
        }
    }
    ebpf_log::spawn(&mut ebpf);
    program(&mut ebpf)?.load()?;
    // A resumed migration's staged MAGLEV may be of an earlier start's size: its own shape.
    let shape = maglev::pinned_shape(&maglev_path).map_err(maglev_err(&maglev_path))?.unwrap_or(shape);
    let mut maps = DataPathMaps::take(&mut ebpf, shape)?;
    match pinned {
        Pinned::Fresh => maps.set_layout(LAYOUT_VERSION)?,
        Pinned::Older { from, resume: false } => {
            layout::carry_counters(&pin_dir, from)?;
            log::info!(
                "upgrade: new maps staged in {}, counters carried over",
                pin_dir.join(layout::STAGING).display()
            );
        }
        Pinned::Older { resume: true, .. } | Pinned::Current => {}
    }
    Ok(Prepared {
        loaded: Loaded { pin_dir, ebpf, pinned, rebuild_maglev, maglev_id },
        maps,
        adopted_maps,
        previous,
        rebuilt_maglev,
    })
}

impl Loaded {
    /// Puts the program on `ifaces` (attaching, adopting or upgrading each link). A
    /// migration is marked complete first (its maps must hold the config by now: the owner
    /// reconciled them), then each link's program is swapped (`BPF_LINK_UPDATE`) and the
    /// staged pins are committed.
    pub fn attach(
        self,
        maps: &mut DataPathMaps,
        ifaces: &[String],
    ) -> Result<(Instance, Vec<(String, LinkOutcome)>)> {
        let Loaded { pin_dir, ebpf, pinned, rebuild_maglev, maglev_id } = self;
        if let Pinned::Older { from, .. } = pinned {
            maps.set_layout(LAYOUT_VERSION)?;
            log::info!(
                "upgrade: staged maps of layout {from} → {LAYOUT_VERSION} hold the config; swapping the programs"
            );
            fault::point("staged");
        }
        let mut instance = Instance { pin_dir, ebpf, links: BTreeMap::new(), maglev_id };
        // Before any old map is released: this also detaches a link left pinned by an
        // earlier run for an interface since dropped from the config.
        let links = instance.set_interfaces(ifaces)?;
        // Every link runs this program now: the maps only an earlier build used go.
        for name in layout::remove_retired(&instance.pin_dir)? {
            log::info!("removed the pinned {name}, which this build no longer uses");
        }
        if rebuild_maglev {
            // Every link runs the program on the new tables now: the old ones go.
            let staging = instance.pin_dir.join(layout::STAGING);
            let (src, dst) = (staging.join(MAGLEV), instance.pin_dir.join(MAGLEV));
            std::fs::rename(&src, &dst).map_err(|source| LoaderError::Io {
                what: "renaming into place",
                path: src,
                source,
            })?;
            // The data path is whole from here: a leftover staging directory is removed at
            // the next start.
            if let Err(e) = layout::remove_staging(&staging) {
                log::warn!("removing {}: {e}", staging.display());
            }
            log::info!("the rebuilt Maglev tables are in place");
        }
        if let Pinned::Older { from, .. } = pinned {
            layout::commit(&instance.pin_dir, from)?;
            log::info!("upgrade: layout {from} → {LAYOUT_VERSION} complete; the old maps are released");
        }
        Ok((instance, links))
    }
}

impl Loaded {
    /// [`Loaded::attach`] onto the links pinned now, whatever the config lists: a Maglev
    /// rebuild swaps every link that runs on the tables it replaces, before the config is
    /// applied (the caller then sets the config's interfaces on the instance).
    pub fn attach_pinned(self, maps: &mut DataPathMaps) -> Result<(Instance, Vec<(String, LinkOutcome)>)> {
        let pinned = pinned_interfaces(&self.pin_dir)?;
        self.attach(maps, &pinned)
    }
}

/// The interfaces with a link pinned under `pin_dir`.
fn pinned_interfaces(pin_dir: &Path) -> Result<Vec<String>> {
    let dir = pin_dir.join(LINKS);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(LoaderError::Io { what: "listing", path: dir, source }),
    };
    let mut ifaces = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LoaderError::Io { what: "listing", path: dir.clone(), source })?;
        ifaces.push(entry.file_name().to_string_lossy().into_owned());
    }
    ifaces.sort();
    Ok(ifaces)
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(PROGRAM).ok_or(LoaderError::NoProgram)?.try_into().map_err(|_| LoaderError::NoProgram)
}

/// The program a link runs.
fn link_program(info: &LinkInfo) -> Option<ProgramInfo> {
    loaded_programs().filter_map(|p| p.ok()).find(|p| p.id() == info.program_id())
}

/// Whether program `p` uses the map of kernel id `map`. (Unknown on kernels that do not
/// report map ids: taken as yes, as before.)
fn uses_map(p: &ProgramInfo, map: u32) -> bool {
    p.map_ids().ok().flatten().is_none_or(|ids| ids.contains(&map))
}

impl Instance {
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn interfaces(&self) -> impl Iterator<Item = &str> {
        self.links.keys().map(String::as_str)
    }

    /// Makes the program attached to exactly `ifaces`: attaches (or adopts, or upgrades)
    /// the new ones, detaches the ones no longer listed — held by this controller or only
    /// pinned, by an earlier run (left, such a link would go on running its program on
    /// maps that no reconcile, health check or weight change reaches any more).
    pub fn set_interfaces(&mut self, ifaces: &[String]) -> Result<Vec<(String, LinkOutcome)>> {
        let mut outcomes = Vec::new();
        for iface in ifaces {
            if self.links.contains_key(iface) {
                continue;
            }
            let (link, outcome) = self.link(iface)?;
            self.links.insert(iface.clone(), link);
            outcomes.push((iface.clone(), outcome));
        }
        let mut gone: BTreeSet<String> = self.links.keys().cloned().collect();
        gone.extend(pinned_interfaces(&self.pin_dir)?);
        gone.retain(|i| !ifaces.contains(i));
        for iface in gone {
            self.links.remove(&iface);
            remove_pin(&link_pin(&self.pin_dir, &iface))?;
            outcomes.push((iface, LinkOutcome::Detached));
        }
        Ok(outcomes)
    }

    /// Attaches afresh on `iface`, whose pinned link is defunct (its interface was
    /// recreated: `link_state`): the dead link and its pin go, a new one is attached and
    /// pinned.
    pub fn reattach(&mut self, iface: &str) -> Result<LinkOutcome> {
        self.links.remove(iface);
        let (link, outcome) = self.link(iface)?;
        self.links.insert(iface.to_owned(), link);
        Ok(outcome)
    }

    fn link(&mut self, iface: &str) -> Result<(FdLink, LinkOutcome)> {
        let path = link_pin(&self.pin_dir, iface);
        let prog = program(&mut self.ebpf)?;
        // A defunct link (its interface recreated while no controller ran) runs nothing
        // and refuses a program update (`bpf_xdp_link_update`: -ENOLINK once its device
        // is gone): an upgrade or a Maglev rebuild would fail on it. It goes, and the
        // interface gets a new link. (Without the interface, the dead link is kept as it
        // is: `check_links` attaches once the interface exists.)
        let defunct =
            link_state::state(&path, iface) == LinkState::Defunct && link_state::ifindex(iface) != 0;
        if defunct {
            remove_pin(&path)?;
        }
        if path.exists() {
            let pinned = PinnedLink::from_pin(&path)
                .map_err(|source| LoaderError::Link { path: path.clone(), source })?;
            let link = FdLink::from(pinned);
            let info = link.info().map_err(|source| LoaderError::Link { path: path.clone(), source })?;
            if info.link_type().ok() != Some(LinkType::Xdp) {
                return Err(LoaderError::Link { path, source: LinkError::InvalidLink });
            }
            let ours = prog.info()?.tag();
            if link_program(&info).is_some_and(|p| p.tag() == ours && uses_map(&p, self.maglev_id)) {
                ebpf_log::spawn_for_program(info.program_id());
                return Ok((link, LinkOutcome::Adopted));
            }
            let xdp =
                XdpLink::try_from(link).map_err(|source| LoaderError::Link { path: path.clone(), source })?;
            let id = prog.attach_to_link(xdp)?;
            let link =
                FdLink::try_from(prog.take_link(id)?).map_err(|source| LoaderError::Link { path, source })?;
            fault::point("swap");
            return Ok((link, LinkOutcome::Upgraded));
        }
        let (id, mode) = attach::attach(prog, iface)?;
        let link = FdLink::try_from(prog.take_link(id)?)
            .map_err(|source| LoaderError::Link { path: path.clone(), source })?;
        let pinned = link.pin(&path).map_err(|source| LoaderError::Pin { path, source })?;
        let outcome = if defunct { LinkOutcome::Reattached(mode) } else { LinkOutcome::Attached(mode) };
        Ok((pinned.into(), outcome))
    }
}

fn remove_pin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LoaderError::Io { what: "removing", path: path.to_owned(), source }),
    }
}

/// `anycast detach`: unpins every link (which detaches the program from its interface once
/// no process holds it) and every map, then removes the directories. Returns the
/// interfaces detached.
pub fn detach(pin_dir: &Path) -> Result<Vec<String>> {
    let pin_dir = &resolve_pin_dir(pin_dir)?;
    let links = pin_dir.join(LINKS);
    let mut detached = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&links) {
        for entry in entries.flatten() {
            remove_pin(&entry.path())?;
            detached.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    for name in maps::ALL.iter().chain(&layout::RETIRED) {
        remove_pin(&pin_dir.join(name))?;
    }
    layout::remove_staging(&pin_dir.join(layout::STAGING))?;
    for dir in [links.as_path(), pin_dir] {
        match std::fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(LoaderError::Io { what: "removing", path: dir.to_owned(), source }),
        }
    }
    detached.sort();
    Ok(detached)
}
