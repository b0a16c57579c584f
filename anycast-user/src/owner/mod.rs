//! The one owner of the data path: config, overrides, the pinned maps and links, the
//! reconciler and the plan. In the daemon it lives on a thread of its own ([`actor`]) that
//! alone writes the maps; the other tasks send it commands and read what it publishes
//! ([`DataPathView`]). A CLI command that finds no daemon (and the pin directory's lock
//! free) uses it directly, with the run-time state read back from the maps
//! ([`Owner::open_pinned`]).

pub mod actor;
pub mod sweep;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anycast_common::{HashKey, flow::STATE_UNIT_SHIFT, maps::FLOWS};
use aya::maps::MapInfo;

use crate::{
    config::{
        Config, HashKeySource,
        hash_key::{self, HashKeyError, Origin},
    },
    datapath::{
        link_state::{self, LinkState},
        loader::{self, Instance, LinkOutcome, Loaded, LoaderError},
        maglev::{self, Shape},
        maps::{DataPathMaps, MapsError},
    },
    model::{DataPathView, ReloadOutcome},
    reconcile::{
        self, Applied, Dynamic, Plan, PlanError, Reconciler, State,
        check::{self, CameHome, FlaggedCount},
        overrides::{Overrides, OverridesError},
        preview::{self, Preview},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Overrides(#[from] OverridesError),
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("no site named `{0}` in the config")]
    UnknownSite(String),
    #[error(
        "{0} cannot change while the controller runs: restart it (and `anycast detach` first for the pin directory)"
    )]
    NeedsRestart(&'static str),
    #[error("no anycast instance is pinned under {0}: start one with `anycast run --config`")]
    NotRunning(String),
    #[error(transparent)]
    HashKey(#[from] HashKeyError),
    #[error("computed for config generation {0}, the owner runs {1}: recompute")]
    Stale(u64, u64),
    #[error("the data-path owner has stopped")]
    Gone,
}

type Result<T, E = OwnerError> = std::result::Result<T, E>;

/// What [`Owner::start`] did.
pub struct Started {
    pub owner: Owner,
    pub links: Vec<(String, LinkOutcome)>,
    pub applied: Applied,
}

/// The program at start: loaded, or already on its links (a Maglev rebuild).
enum Program {
    Loaded(Loaded),
    Running(Instance, Vec<(String, LinkOutcome)>),
}

/// What a start and a one-shot open both read before an [`Owner`] exists.
struct Parts {
    config: Config,
    overrides: Overrides,
    maps: DataPathMaps,
    reconciler: Reconciler,
    plan: Plan,
    dynamic: Dynamic,
}

pub struct Owner {
    config: Arc<Config>,
    generation: u64,
    overrides: Overrides,
    maps: DataPathMaps,
    /// None when working on the pinned maps without holding the links (one-shot CLI).
    instance: Option<Instance>,
    reconciler: Reconciler,
    plan: Plan,
    /// Load-derived weights and sites down, from the steering task.
    dynamic: Dynamic,
    /// The resolved pin directory.
    pin_dir: PathBuf,
    flow_capacity: u64,
    attached: bool,
    reload: Option<ReloadOutcome>,
    /// When this controller started watching: it cannot tell what happened before (how
    /// long a bucket has been local, how long a flow has been silent).
    started: Instant,
    /// When each bucket last came home (remote → local), for the VIPs one of whose buckets
    /// did so within `check_grace`.
    came_home: CameHome,
    last_sweep: Option<Instant>,
    /// The buckets flagged `MAGLEV_CHECK` in the tables the data path holds.
    flagged: FlaggedCount,
}

pub fn ifindexes(ifaces: &[String]) -> Result<BTreeSet<u32>> {
    ifaces
        .iter()
        .map(|name| {
            let c = CString::new(name.as_str()).map_err(|_| OwnerError::NoInterface(name.clone()))?;
            // SAFETY: c is a valid NUL-terminated string.
            match unsafe { libc::if_nametoindex(c.as_ptr()) } {
                0 => Err(OwnerError::NoInterface(name.clone())),
                i => Ok(i),
            }
        })
        .collect()
}

/// The config with its flow hash key resolved (read from `hash_key_file`, or generated once
/// into `state_dir`, or the running data path's written there), so that everything planned
/// from it uses that key. `running`: the state the maps hold.
fn with_hash_key(mut config: Config, running: &State) -> Result<Config> {
    // A fresh data path's CONFIG is zeroed: no key runs yet.
    let key = Some(running.config.hash_key).filter(|k| *k != HashKey::default()).map(HashKey::to_bytes);
    let (key, origin) = hash_key::resolve(&config.datapath.hash_key, &config.admin.state_dir, key)?;
    let path = config.admin.state_dir.join(hash_key::GENERATED);
    match origin {
        Origin::Read => {}
        Origin::Generated => log::warn!(
            "generated a flow hash key in {}: every host of a multi-host site must use the same \
             key (set [datapath] hash_key or hash_key_file on all of them)",
            path.display()
        ),
        Origin::Adopted => log::warn!(
            "{} was missing: wrote the running data path's flow hash key there (a new key would \
             put every flow in another bucket)",
            path.display()
        ),
    }
    config.datapath.hash_key = HashKeySource::Inline(key);
    Ok(config)
}

fn flow_capacity(pin_dir: &Path) -> u64 {
    MapInfo::from_pin(pin_dir.join(FLOWS)).map(|i| i.max_entries() as u64).unwrap_or(0)
}

/// Whether the kernel runs the program on every interface: the pinned links' state, not
/// our link handles (what matters is the kernel's state whoever holds the link), and not
/// the pins alone (a link whose interface was recreated is pinned but defunct).
fn attached(config: &Config, pin_dir: &Path) -> bool {
    config
        .local
        .interfaces
        .iter()
        .all(|i| link_state::state(&loader::link_pin(pin_dir, i), i) == LinkState::Attached)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Owner {
    /// Loads (or adopts, or upgrades) the pinned data path on the configured interfaces and
    /// makes its maps match the config and the saved overrides, carrying on with the
    /// run-time state the maps hold (load weights, sites down): a restart moves nothing.
    pub fn start(config: Config, object: &[u8]) -> Result<Started> {
        let overrides = Overrides::load(&config.admin.state_dir)?;
        let t0 = Instant::now();
        let prepared = loader::load(
            object,
            &config.datapath.pin_dir,
            config.datapath.flow_table_size,
            config.datapath.maglev_table_size,
        )?;
        let mut maps = prepared.maps;
        let t1 = Instant::now();
        let mut reconciler = Reconciler::new(&maps)?;
        let config = with_hash_key(config, reconciler.current())?;
        // A rebuild of the Maglev tables goes first, on its own: the new tables get the
        // running ones (re-slotted for another size) and every pinned link is swapped onto
        // them before the config changes anything. Planned with the config, the shared
        // maps (VIP and site slots) would change under the old program while it still
        // steers by the old tables: a slot the new config reuses would be steered by
        // another VIP's table, or to another site, until the swap.
        let program = match &prepared.rebuilt_maglev {
            Some(tables) => {
                let slots = maps.maglev_shape().capacity();
                let running: Vec<(u32, Vec<u32>)> =
                    tables.iter().map(|(vip, t)| (*vip, maglev::resized(t, slots))).collect();
                let state = reconciler.current().with_tables(&running);
                reconciler.apply(&mut maps, &state)?;
                let (instance, links) = prepared.loaded.attach_pinned(&mut maps)?;
                Program::Running(instance, links)
            }
            None => Program::Loaded(prepared.loaded),
        };
        // A migration plans against what the older layout's data path steers by (its VIP
        // slots and tables, its sites) and writes into the new maps.
        let planning = prepared.previous.as_ref().map(|p| reconciler.current().with_previous(p));
        let current = planning.as_ref().unwrap_or(reconciler.current());
        let t2 = Instant::now();
        let egress = ifindexes(&config.local.interfaces)?;
        let dynamic = Dynamic::running(&config, &overrides, current, egress.clone())?;
        if let Some(w) = dynamic.weights.as_ref().filter(|_| prepared.adopted_maps) {
            log::info!("load steering: carrying on with the running weights {w:?}");
        }
        if !dynamic.down.is_empty() {
            log::info!(
                "health: {} not proven up yet (down in the data path, or new): no new flows until they pass their checks",
                dynamic.down.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        let plan = reconcile::plan(&config, &overrides, &dynamic, current, egress)?;
        let applied = reconciler.apply(&mut maps, &plan.state)?;
        let t3 = Instant::now();
        // Only now, with the maps holding the config, does the program meet packets (a
        // rebuild's program met them already, on the running state).
        let (instance, links) = match program {
            Program::Loaded(loaded) => loaded.attach(&mut maps, &config.local.interfaces)?,
            Program::Running(mut instance, mut links) => {
                links.extend(instance.set_interfaces(&config.local.interfaces)?);
                (instance, links)
            }
        };
        log::info!(
            "start: load {:.0} ms, read maps {:.0} ms, reconcile {:.0} ms, attach {:.0} ms",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            (t3 - t2).as_secs_f64() * 1e3,
            t3.elapsed().as_secs_f64() * 1e3
        );
        let pin_dir = instance.pin_dir().to_owned();
        let parts = Parts { config, overrides, maps, reconciler, plan, dynamic };
        let mut owner = Owner::assemble(parts, Some(instance), pin_dir);
        // A link adopted from a pin whose interface was recreated since runs nowhere.
        owner.check_links();
        Ok(Started { owner, links, applied })
    }

    /// Opens the maps of a running instance without touching its links, for one-shot CLI
    /// commands when no daemon runs (the caller holds the pin directory's lock). The
    /// run-time state comes from the maps, so a change written here keeps the load weights
    /// and the sites down that the last daemon left.
    pub fn open_pinned(config: Config) -> Result<Owner> {
        let pin_dir = loader::resolve_pin_dir(&config.datapath.pin_dir)?;
        if !pin_dir.join(FLOWS).exists() {
            return Err(OwnerError::NotRunning(pin_dir.display().to_string()));
        }
        let overrides = Overrides::load(&config.admin.state_dir)?;
        let maps = DataPathMaps::from_pins(&pin_dir, config.datapath.maglev_table_size)?;
        // Tables of another size than the running ones would move every bucket: the
        // running size stands until a start rebuilds them (datapath::maglev), as a reload
        // refuses to change it.
        let running = maps.maglev_shape();
        let mut config = config;
        if matches!(running, Shape::Fixed { .. }) && running.capacity() != config.datapath.maglev_table_size {
            log::warn!(
                "maglev_table_size {} takes effect at the next controller start; the running tables have {}",
                config.datapath.maglev_table_size,
                running.capacity()
            );
            config.datapath.maglev_table_size = running.capacity();
        }
        let reconciler = Reconciler::new(&maps)?;
        let config = with_hash_key(config, reconciler.current())?;
        let egress = ifindexes(&config.local.interfaces)?;
        let dynamic = Dynamic::running(&config, &overrides, reconciler.current(), egress.clone())?;
        // Plan only: nothing is written until a change is asked for.
        let plan = reconcile::plan(&config, &overrides, &dynamic, reconciler.current(), egress)?;
        Ok(Owner::assemble(Parts { config, overrides, maps, reconciler, plan, dynamic }, None, pin_dir))
    }

    fn assemble(p: Parts, instance: Option<Instance>, pin_dir: PathBuf) -> Owner {
        let mut flagged = FlaggedCount::default();
        flagged.update(&p.reconciler.current().maglev);
        Owner {
            flow_capacity: flow_capacity(&pin_dir),
            attached: attached(&p.config, &pin_dir),
            pin_dir,
            config: Arc::new(p.config),
            generation: 0,
            overrides: p.overrides,
            maps: p.maps,
            instance,
            reconciler: p.reconciler,
            plan: p.plan,
            dynamic: p.dynamic,
            reload: None,
            started: Instant::now(),
            came_home: CameHome::default(),
            last_sweep: None,
            flagged,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// What the other tasks may know of the owner's state.
    pub fn view(&self) -> DataPathView {
        DataPathView {
            generation: self.generation,
            config: self.config.clone(),
            sites: self.plan.sites.clone(),
            vips: self.plan.vips.clone(),
            weights: self.plan.weights.clone(),
            load_weights: self.dynamic.weights.clone(),
            down: self.dynamic.down.clone(),
            drained: self.overrides.drained.clone(),
            attached: self.attached,
            pin_dir: self.pin_dir.clone(),
            flow_capacity: self.flow_capacity,
            checked_buckets: self.flagged.total() as u64,
            reload: self.reload.clone(),
        }
    }

    /// Writes `state` and recounts the flagged buckets of the tables it changed — also when a
    /// later write failed: what was written stays written.
    fn apply(&mut self, state: &State) -> Result<Applied> {
        let result = self.reconciler.apply(&mut self.maps, state);
        self.flagged.update(&self.reconciler.current().maglev);
        Ok(result?)
    }

    fn sync(&mut self, config: &Config, overrides: &Overrides, dynamic: &Dynamic) -> Result<(Plan, Applied)> {
        let egress = ifindexes(&config.local.interfaces)?;
        let plan = reconcile::plan(config, overrides, dynamic, self.reconciler.current(), egress)?;
        let before = self.reconciler.current().maglev.clone();
        let result = self.apply(&plan.state);
        // What was written stays written, also when a later write failed.
        self.note_came_home(&before);
        Ok((plan, result?))
    }

    /// Records when buckets came home, from the tables before a write and now.
    fn note_came_home(&mut self, before: &BTreeMap<u32, Arc<[u32]>>) {
        // Rounded up: a bucket is never taken for home longer than it is.
        let now = self.watched_secs() + 1;
        for (vip, table) in &self.reconciler.current().maglev {
            let old = before.get(vip);
            if old.is_some_and(|o| Arc::ptr_eq(o, table)) {
                continue;
            }
            let slots = check::came_home(old.map(|o| &o[..]), table);
            self.came_home.note(*vip, table.len(), &slots, now);
        }
    }

    /// Whole seconds since this controller started watching.
    fn watched_secs(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// How often the check flags are swept: a fraction of `check_grace`, at most every 30 s.
    fn sweep_interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.config.datapath.check_grace / 2).clamp(1, 30))
    }

    /// A sweep of the check flags, if one is due and some bucket is flagged: a snapshot of
    /// what it reads, to run off this thread ([`sweep::Job::run`]); what it finds comes
    /// back to [`Self::swept`]. `None` when no sweep is due.
    pub fn sweep_job(&mut self) -> Result<Option<sweep::Job>> {
        if self.last_sweep.is_some_and(|t| t.elapsed() < self.sweep_interval()) {
            return Ok(None);
        }
        self.last_sweep = Some(Instant::now());
        let flagged = self.flagged.total();
        if flagged == 0 {
            return Ok(None);
        }
        let grace = Duration::from_secs(u64::from(self.config.datapath.check_grace));
        let (now, grace_secs) = (self.watched_secs(), self.config.datapath.check_grace);
        self.came_home.prune(now, grace_secs);
        let state = self.reconciler.current();
        let unit = 1u64 << STATE_UNIT_SHIFT;
        Ok(Some(sweep::Job {
            flows: self.maps.flows_reader()?,
            hash_key: state.config.hash_key,
            vips: state.vips.clone(),
            sites: state.sites.clone(),
            tables: state.maglev.clone(),
            started: self.started,
            // Rounded up, and one unit more: an entry's time is the start of its unit.
            grace: (grace.as_nanos() as u64).div_ceil(unit) + 1,
            settled: self.started.elapsed() >= grace,
            came_home: self.came_home.clone(),
            watched: now,
            check_grace: grace_secs,
            flagged,
        }))
    }

    /// Clears the flags a sweep found unneeded, in the tables the data path still holds:
    /// a table written since the sweep's snapshot (a weight change, a reload) is left for
    /// the next sweep.
    pub fn swept(&mut self, found: sweep::Found) -> Result<sweep::Sweep> {
        let t0 = Instant::now();
        let mut want = self.reconciler.current().clone();
        let mut cleared = 0;
        // Under another key the pins are in other buckets: what the sweep judged is moot
        // (a new key flags every local bucket anyway, which may leave a table as it was).
        let rekeyed = found.hash_key != want.config.hash_key;
        for c in found.swept.clear.iter().filter(|_| !rekeyed) {
            if !c.vips.iter().all(|v| want.maglev.get(v).is_some_and(|t| Arc::ptr_eq(t, &c.table))) {
                continue;
            }
            let table = c.cleared();
            for v in &c.vips {
                want.maglev.insert(*v, table.clone());
            }
            cleared += c.slots.len() * c.vips.len();
        }
        if cleared > 0 {
            self.apply(&want)?;
            self.plan.state.maglev = self.reconciler.current().maglev.clone();
        }
        Ok(sweep::Sweep {
            pins: found.pins,
            flagged: found.flagged,
            kept_by_pins: found.swept.kept_by_pins,
            cleared,
            took: found.took,
            wrote: t0.elapsed(),
        })
    }

    /// Applies load-derived weights and the sites that are down, decided against config
    /// `generation` (refused when a reload came in between).
    pub fn set_dynamic(&mut self, dynamic: Dynamic, generation: u64) -> Result<Applied> {
        if generation != self.generation {
            return Err(OwnerError::Stale(generation, self.generation));
        }
        let config = self.config.clone();
        let overrides = self.overrides.clone();
        let (plan, applied) = self.sync(&config, &overrides, &dynamic)?;
        self.dynamic = dynamic;
        self.plan = plan;
        Ok(applied)
    }

    /// Re-checks that the program still runs on every interface, and attaches it again on
    /// one whose link went defunct while its interface exists again (recreated); true when
    /// the attached state changed.
    pub fn check_links(&mut self) -> bool {
        if let Some(instance) = &mut self.instance {
            for iface in &self.config.local.interfaces {
                let pin = loader::link_pin(&self.pin_dir, iface);
                if link_state::state(&pin, iface) == LinkState::Defunct && link_state::ifindex(iface) != 0 {
                    match instance.reattach(iface) {
                        Ok(outcome) => {
                            log::warn!("{iface}: its link was defunct (interface recreated): {outcome}")
                        }
                        Err(e) => log::error!("{iface}: its link is defunct and attaching again failed: {e}"),
                    }
                }
            }
        }
        let now = attached(&self.config, &self.pin_dir);
        std::mem::replace(&mut self.attached, now) != now
    }

    /// The run-time state for a new config: the load weights carry over (a site they do not
    /// name gets 0 until the policy gives it some); with `[health]`, the sites down stay
    /// down and the new ones start down.
    fn dynamic_for(&self, config: &Config, egress: BTreeSet<u32>) -> Result<Dynamic> {
        let weights = match (&config.load, &self.dynamic.weights) {
            (None, _) => None,
            (Some(_), Some(w)) => Some(w.clone()),
            (Some(_), None) => Dynamic::at_start(config).weights,
        };
        let probe = Dynamic { weights: weights.clone(), down: BTreeSet::new() };
        let plan = reconcile::plan(config, &self.overrides, &probe, self.reconciler.current(), egress)?;
        let down = match config.health {
            Some(_) => reconcile::unproven(config, &plan, self.reconciler.current()),
            None => BTreeSet::new(),
        };
        Ok(Dynamic { weights, down })
    }

    /// Applies a new (validated) config, all or nothing: the plan is made first (pure), the
    /// interfaces are attached and detached next, the maps written last; if a step fails,
    /// the interfaces and maps go back to the running config.
    pub fn reload(&mut self, config: Config) -> Result<Applied> {
        log::info!("reload: planning {} sites, {} VIPs", config.sites.len(), config.vips.len());
        let result = self.try_reload(config);
        self.reload = Some(ReloadOutcome {
            at: unix_now(),
            ok: result.is_ok(),
            message: match &result {
                Ok(a) => format!("applied: {} writes, {} Maglev tables", a.writes, a.tables),
                Err(e) => e.to_string(),
            },
        });
        result
    }

    /// Records a reload refused before planning (its file does not parse).
    pub fn refused(&mut self, message: String) {
        self.reload = Some(ReloadOutcome { at: unix_now(), ok: false, message });
    }

    fn try_reload(&mut self, config: Config) -> Result<Applied> {
        let config = with_hash_key(config, self.reconciler.current())?;
        if config.datapath.hash_key != self.config.datapath.hash_key {
            log::warn!(
                "the flow hash key changed: every flow without state (stateless UDP, new flows) \
                 maps to new buckets, as after a change of every weight; every local bucket is \
                 flagged, so that the flows pinned to other sites are still looked up"
            );
        }
        if config.datapath.pin_dir != self.config.datapath.pin_dir {
            return Err(OwnerError::NeedsRestart("datapath.pin_dir"));
        }
        // The running tables' size is their template's, fixed when the data path started
        // (datapath::maglev): only a start rebuilds them (another size re-slots every bucket).
        if config.datapath.maglev_table_size != self.config.datapath.maglev_table_size {
            return Err(OwnerError::NeedsRestart("datapath.maglev_table_size"));
        }
        if config.admin != self.config.admin {
            log::warn!("[admin] changes take effect at the next controller start");
        }
        if config.datapath.flow_table_size != self.config.datapath.flow_table_size {
            log::warn!("flow_table_size changes take effect after `anycast detach` and a start");
        }
        let egress = ifindexes(&config.local.interfaces)?;
        let dynamic = self.dynamic_for(&config, egress.clone())?;
        // Pure: a config the maps cannot hold is refused before anything changes.
        reconcile::plan(&config, &self.overrides, &dynamic, self.reconciler.current(), egress)?;
        let old_ifaces = self.config.local.interfaces.clone();
        if let Some(instance) = &mut self.instance {
            for (iface, outcome) in instance.set_interfaces(&config.local.interfaces)? {
                log::info!("{iface}: {outcome}");
            }
        }
        let overrides = self.overrides.clone();
        match self.sync(&config, &overrides, &dynamic) {
            Ok((plan, applied)) => {
                self.config = Arc::new(config);
                self.generation += 1;
                self.dynamic = dynamic;
                self.plan = plan;
                self.attached = attached(&self.config, &self.pin_dir);
                Ok(applied)
            }
            Err(e) => {
                log::error!("reload: {e}; going back to the running config");
                if let Some(instance) = &mut self.instance {
                    match instance.set_interfaces(&old_ifaces) {
                        Ok(links) => {
                            links.iter().for_each(|(iface, outcome)| log::info!("{iface}: {outcome}"))
                        }
                        Err(back) => log::error!("reload: restoring the interfaces: {back}"),
                    }
                }
                let (config, dynamic) = (self.config.clone(), self.dynamic.clone());
                if let Err(back) = self.sync(&config, &overrides, &dynamic) {
                    log::error!("reload: restoring the maps: {back}");
                }
                Err(e)
            }
        }
    }

    /// What applying `config` would change, without changing anything.
    pub fn preview(&self, config: &Config) -> Result<Preview> {
        let config = &with_hash_key(config.clone(), self.reconciler.current())?;
        let egress = ifindexes(&config.local.interfaces)?;
        let dynamic = self.dynamic_for(config, egress.clone())?;
        let plan = reconcile::plan(config, &self.overrides, &dynamic, self.reconciler.current(), egress)?;
        Ok(preview::preview(&self.config, &self.plan, config, &plan, self.reconciler.current()))
    }

    /// Drains (weight 0, established flows stay) or undrains a site. Persisted once the maps
    /// hold it: a failed write changes neither the maps nor the file.
    pub fn set_drained(&mut self, site: &str, drained: bool) -> Result<u32> {
        if !self.config.sites.iter().any(|s| s.name == site) {
            return Err(OwnerError::UnknownSite(site.to_owned()));
        }
        let mut overrides = self.overrides.clone();
        if drained {
            overrides.drained.insert(site.to_owned());
        } else {
            overrides.drained.remove(site);
        }
        let (config, dynamic) = (self.config.clone(), self.dynamic.clone());
        let (plan, _) = self.sync(&config, &overrides, &dynamic)?;
        if let Err(e) = overrides.save(&self.config.admin.state_dir) {
            let old = self.overrides.clone();
            if let Err(back) = self.sync(&config, &old, &dynamic) {
                log::error!("drain: restoring the maps after the save failed: {back}");
            }
            return Err(e.into());
        }
        self.overrides = overrides;
        self.plan = plan;
        Ok(self.plan.weights[site])
    }
}
