//! The controller's state while it runs: config, overrides, the pinned data path and the
//! reconciler, plus the counter samples behind rates. The daemon (`anycast run --config`)
//! wraps one in a mutex ([`Shared`]) shared by the signal handlers, the sampler, the HTTP
//! server and the steering and BGP tasks.

use std::{
    collections::BTreeSet,
    ffi::CString,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anycast_common::maps::FLOWS;
use aya::maps::MapInfo;

use crate::{
    config::{
        Config, Encap, HashKeySource, Site, SiteKind,
        hash_key::{self, HashKeyError},
    },
    datapath::{
        counters::Snapshot,
        loader::{self, Instance, LinkOutcome, LoaderError},
        maps::{DataPathMaps, MapsError},
        object,
    },
    model::{
        BgpView, LoadReport, SiteSignals, SteeringView,
        status::{SiteStatus, Status, VipStatus},
    },
    reconcile::{
        self, Applied, Dynamic, Plan, PlanError, Reconciler,
        overrides::{Overrides, OverridesError},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
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
}

type Result<T, E = ControllerError> = std::result::Result<T, E>;

pub type Shared = Arc<Mutex<Controller>>;

/// The controller, for the HTTP handlers and the daemon's tasks. A panic while holding the
/// lock leaves a state that is still a valid config + maps (every write is applied or not):
/// keep serving.
pub fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Controller> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`Controller::start`] did.
pub struct Started {
    pub controller: Controller,
    pub links: Vec<(String, LinkOutcome)>,
    pub applied: Applied,
}

pub struct Controller {
    config: Config,
    overrides: Overrides,
    maps: DataPathMaps,
    /// None when working on the pinned maps without holding the links (one-shot admin).
    instance: Option<Instance>,
    reconciler: Reconciler,
    plan: Plan,
    /// Load-derived weights and sites down, from the steering task.
    dynamic: Dynamic,
    view: SteeringView,
    bgp: Option<BgpView>,
    /// The resolved pin directory.
    pin_dir: PathBuf,
    flow_capacity: u64,
    flow_entries: u64,
    /// The last two counter samples: rates are their difference.
    samples: (Option<Snapshot>, Option<Snapshot>),
}

fn ifindexes(ifaces: &[String]) -> Result<BTreeSet<u32>> {
    ifaces
        .iter()
        .map(|name| {
            let c = CString::new(name.as_str()).map_err(|_| ControllerError::NoInterface(name.clone()))?;
            // SAFETY: c is a valid NUL-terminated string.
            match unsafe { libc::if_nametoindex(c.as_ptr()) } {
                0 => Err(ControllerError::NoInterface(name.clone())),
                i => Ok(i),
            }
        })
        .collect()
}

fn sync(
    config: &Config,
    overrides: &Overrides,
    dynamic: &Dynamic,
    reconciler: &mut Reconciler,
    maps: &mut DataPathMaps,
) -> Result<(Plan, Applied)> {
    for name in &overrides.drained {
        if !config.sites.iter().any(|s| &s.name == name) {
            log::warn!("override: drained site `{name}` is not in the config; ignored");
        }
    }
    let egress = ifindexes(&config.local.interfaces)?;
    let plan = reconcile::plan(config, overrides, dynamic, reconciler.current(), egress)?;
    let applied = reconciler.apply(maps, &plan.state)?;
    Ok((plan, applied))
}

/// The config with its flow hash key resolved (read from `hash_key_file`, or generated once
/// into `state_dir`), so that everything planned from it uses that key.
fn with_hash_key(mut config: Config) -> Result<Config> {
    let (key, generated) = hash_key::resolve(&config.datapath.hash_key, &config.admin.state_dir)?;
    if generated {
        log::warn!(
            "generated a flow hash key in {}: every host of a multi-host site must use the same \
             key (set [datapath] hash_key or hash_key_file on all of them)",
            config.admin.state_dir.join(hash_key::GENERATED).display()
        );
    }
    config.datapath.hash_key = HashKeySource::Inline(key);
    Ok(config)
}

fn flow_capacity(pin_dir: &Path) -> u64 {
    MapInfo::from_pin(pin_dir.join(FLOWS)).map(|i| i.max_entries() as u64).unwrap_or(0)
}

impl Controller {
    /// Loads (or adopts, or upgrades) the pinned data path on the configured interfaces and
    /// makes its maps match the config and the saved overrides.
    pub fn start(config: Config) -> Result<Started> {
        Self::start_object(config, object::ANYCAST)
    }

    /// [`Controller::start`] with another build of the XDP object than the embedded one
    /// (`anycast run --object`, hidden: the upgrade tests swap in a second build).
    pub fn start_object(config: Config, object: &[u8]) -> Result<Started> {
        let config = with_hash_key(config)?;
        let overrides = Overrides::load(&config.admin.state_dir)?;
        let t0 = std::time::Instant::now();
        let started = loader::start(
            object,
            &config.datapath.pin_dir,
            config.datapath.flow_table_size,
            &config.local.interfaces,
        )?;
        let mut maps = started.maps;
        let t1 = std::time::Instant::now();
        let mut reconciler = Reconciler::new(&maps)?;
        let t2 = std::time::Instant::now();
        let mut dynamic = Dynamic::at_start(&config);
        if dynamic.weights.is_some() {
            let egress = ifindexes(&config.local.interfaces)?;
            let plan = reconcile::plan(&config, &overrides, &dynamic, reconciler.current(), egress)?;
            if let Some(weights) = Dynamic::adopted(&config, &plan, reconciler.current()) {
                log::info!("load steering: adopting the running weights {weights:?}");
                dynamic.weights = Some(weights);
            }
        }
        let (plan, applied) = sync(&config, &overrides, &dynamic, &mut reconciler, &mut maps)?;
        log::info!(
            "start: load and attach {:.0} ms, read maps {:.0} ms, reconcile {:.0} ms",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            t2.elapsed().as_secs_f64() * 1e3
        );
        let pin_dir = started.instance.pin_dir().to_owned();
        let flow_capacity = flow_capacity(&pin_dir);
        let c = Controller {
            pin_dir,
            config,
            overrides,
            maps,
            instance: Some(started.instance),
            reconciler,
            plan,
            dynamic,
            view: SteeringView::default(),
            bgp: None,
            flow_capacity,
            flow_entries: 0,
            samples: (None, None),
        };
        Ok(Started { controller: c, links: started.links, applied })
    }

    /// Opens the maps of a running instance without touching its links, for one-shot admin
    /// commands when no daemon answers. A later [`Controller::set_drained`] writes the whole
    /// plan, i.e. also any config change not applied yet, as a daemon start would.
    pub fn open_pinned(config: Config) -> Result<Controller> {
        let pin_dir = &loader::resolve_pin_dir(&config.datapath.pin_dir)?;
        if !pin_dir.join(FLOWS).exists() {
            return Err(ControllerError::NotRunning(pin_dir.display().to_string()));
        }
        let overrides = Overrides::load(&config.admin.state_dir)?;
        let maps = DataPathMaps::from_pins(pin_dir)?;
        let reconciler = Reconciler::new(&maps)?;
        // Plan only, to know the slots: nothing is written until a change is asked for.
        let egress = ifindexes(&config.local.interfaces)?;
        let dynamic = Dynamic::default();
        let plan = reconcile::plan(&config, &overrides, &dynamic, reconciler.current(), egress)?;
        let flow_capacity = flow_capacity(pin_dir);
        Ok(Controller {
            pin_dir: pin_dir.clone(),
            config,
            overrides,
            maps,
            instance: None,
            reconciler,
            plan,
            dynamic,
            view: SteeringView::default(),
            bgp: None,
            flow_capacity,
            flow_entries: 0,
            samples: (None, None),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This site's state as the outside world should see it.
    pub fn signals(&self) -> SiteSignals {
        let pin_dir = &self.pin_dir;
        let local = self.config.sites.iter().find(|s| matches!(s.kind, SiteKind::Local));
        SiteSignals {
            // The pins, not our link handles: what matters is whether the kernel still runs
            // the program on each interface, whoever holds the link.
            attached: self.config.local.interfaces.iter().all(|i| loader::link_pin(pin_dir, i).exists()),
            drained: local.is_some_and(|l| self.overrides.drained.contains(&l.name)),
            overloaded: self.view.overloaded,
            no_headroom: self.view.no_headroom,
        }
    }

    /// The local site and its slot.
    pub fn local_site(&self) -> Option<(&Site, u32)> {
        let site = self.config.sites.iter().find(|s| matches!(s.kind, SiteKind::Local))?;
        Some((site, self.site_index(&site.name)?))
    }

    pub fn site_index(&self, name: &str) -> Option<u32> {
        self.plan.sites.iter().find(|(n, _)| n == name).map(|(_, i)| *i)
    }

    /// Drained by an operator (`anycast drain`).
    pub fn drained(&self, site: &str) -> bool {
        self.overrides.drained.contains(site)
    }

    /// Applies load-derived weights and the sites that are down.
    pub fn set_dynamic(&mut self, dynamic: Dynamic) -> Result<Applied> {
        let (plan, applied) =
            sync(&self.config, &self.overrides, &dynamic, &mut self.reconciler, &mut self.maps)?;
        self.dynamic = dynamic;
        self.plan = plan;
        Ok(applied)
    }

    /// The load-derived weights and sites down applied now.
    pub fn dynamic(&self) -> &Dynamic {
        &self.dynamic
    }

    pub fn set_view(&mut self, view: SteeringView) {
        self.view = view;
    }

    /// The BGP task's view, for `/metrics`.
    pub fn set_bgp_view(&mut self, view: Option<BgpView>) {
        self.bgp = view;
    }

    pub fn view(&self) -> &SteeringView {
        &self.view
    }

    /// `GET /load`: this site's report; before the first measurement, an idle one.
    pub fn load_report(&self) -> LoadReport {
        self.view.report.clone().unwrap_or_else(|| {
            let signals = self.signals();
            LoadReport {
                site: self.local_site().map(|(s, _)| s.name.clone()).unwrap_or_default(),
                capacity: self.local_site().map_or(0.0, |(s, _)| s.capacity as f64),
                served: 0.0,
                utilisation: 0.0,
                target: self.config.load.as_ref().map_or(1.0, |l| l.target),
                drained: signals.drained,
                attached: signals.attached,
                overloaded: false,
                no_headroom: false,
            }
        })
    }

    /// Applies a new (validated) config: interfaces attached/detached, maps reconciled.
    pub fn reload(&mut self, config: Config) -> Result<Applied> {
        let config = with_hash_key(config)?;
        if config.datapath.hash_key != self.config.datapath.hash_key {
            log::warn!(
                "the flow hash key changed: every flow without state (stateless UDP, new flows) \
                 maps to new buckets, as after a change of every weight"
            );
        }
        if config.datapath.pin_dir != self.config.datapath.pin_dir {
            return Err(ControllerError::NeedsRestart("datapath.pin_dir"));
        }
        if config.admin != self.config.admin {
            log::warn!("[admin] changes take effect at the next controller start");
        }
        if config.datapath.flow_table_size != self.config.datapath.flow_table_size {
            log::warn!("flow_table_size changes take effect after `anycast detach` and a start");
        }
        // Check the interfaces exist before changing anything.
        ifindexes(&config.local.interfaces)?;
        if let Some(instance) = &mut self.instance {
            for (iface, outcome) in instance.set_interfaces(&config.local.interfaces)? {
                log::info!("{iface}: {outcome}");
            }
        }
        let (plan, applied) =
            sync(&config, &self.overrides, &self.dynamic, &mut self.reconciler, &mut self.maps)?;
        self.config = config;
        self.plan = plan;
        Ok(applied)
    }

    /// Drains (weight 0, established flows stay) or undrains a site; persisted.
    pub fn set_drained(&mut self, site: &str, drained: bool) -> Result<u32> {
        if !self.config.sites.iter().any(|s| s.name == site) {
            return Err(ControllerError::UnknownSite(site.to_owned()));
        }
        let mut overrides = self.overrides.clone();
        if drained {
            overrides.drained.insert(site.to_owned());
        } else {
            overrides.drained.remove(site);
        }
        overrides.save(&self.config.admin.state_dir)?;
        let (plan, _) = sync(&self.config, &overrides, &self.dynamic, &mut self.reconciler, &mut self.maps)?;
        self.overrides = overrides;
        self.plan = plan;
        Ok(self.plan.weights[site])
    }

    /// Takes a counter sample (for rates) and recounts the flow table.
    pub fn sample(&mut self) -> Result<()> {
        let snap = self.snapshot()?;
        self.samples = (self.samples.1.take(), Some(snap));
        self.flow_entries = self.maps.flow_count() as u64;
        Ok(())
    }

    /// Every counter of the configured sites and VIPs, read now.
    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot::read(
            &self.maps,
            self.plan.sites.iter().map(|(_, i)| *i),
            self.plan.vips.iter().map(|(_, i)| *i),
        )?)
    }

    /// The plan in force: slots and effective weights.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Flow-table entries (at the last sample) and capacity.
    pub fn flow_table(&self) -> (u64, u64) {
        (self.flow_entries, self.flow_capacity)
    }

    /// The BGP task's view, when it drives BIRD.
    pub fn bgp_view(&self) -> Option<&BgpView> {
        self.bgp.as_ref()
    }

    pub fn status(&self) -> Result<Status> {
        let snap = self.snapshot()?;
        let (site_pps, vip_pps) = match &self.samples {
            (Some(a), Some(b)) => {
                let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
                let vips: std::collections::BTreeMap<u32, f64> = b
                    .vips
                    .iter()
                    .map(|(i, c)| {
                        let before = a.vips.get(i).map_or(0, |c| c.packets);
                        (*i, c.packets.saturating_sub(before) as f64 / secs)
                    })
                    .collect();
                (b.site_rates(a), vips)
            }
            _ => Default::default(),
        };
        let sites = self
            .config
            .sites
            .iter()
            .zip(&self.plan.sites)
            .map(|(s, (_, index))| {
                let c = snap.sites[index];
                let (role, endpoint, encap) = match s.kind {
                    SiteKind::Local => ("local", None, "-"),
                    SiteKind::Remote { endpoint, encap } => (
                        "remote",
                        Some(endpoint.to_string()),
                        match encap {
                            Encap::Ip => "ip",
                            Encap::Gue { .. } => "gue",
                        },
                    ),
                };
                SiteStatus {
                    name: s.name.clone(),
                    index: *index,
                    role: role.into(),
                    endpoint,
                    encap: encap.into(),
                    state: if self.overrides.drained.contains(&s.name) {
                        "drained"
                    } else if self.dynamic.down.contains(&s.name) {
                        "down"
                    } else {
                        "up"
                    }
                    .into(),
                    weight: self.plan.weights[&s.name],
                    configured_weight: s.configured_weight(),
                    load: self.view.sites.get(&s.name).and_then(|v| v.load_ratio),
                    pps: site_pps.get(index).copied().unwrap_or(0.0),
                    local_packets: c.local_packets,
                    forwarded_packets: c.forwarded_packets,
                    received_packets: c.received_packets,
                }
            })
            .collect();
        let vips = self
            .config
            .vips
            .iter()
            .zip(&self.plan.vips)
            .map(|(v, (_, index))| VipStatus {
                name: v.name.clone(),
                index: *index,
                sites: v.sites.clone(),
                packets: snap.vips[index].packets,
                pps: vip_pps.get(index).copied().unwrap_or(0.0),
            })
            .collect();
        Ok(Status {
            interfaces: self.config.local.interfaces.clone(),
            flow_entries: self.flow_entries,
            flow_capacity: self.flow_capacity,
            sites,
            vips,
            drops: snap
                .exceptions
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, &n)| {
                    let (e, a) = anycast_common::counters::exception_slot(i as u32);
                    (format!("{}/{}", e.name(), a.name()), n)
                })
                .collect(),
            overloaded: self.view.overloaded,
            no_headroom: self.view.no_headroom,
        })
    }
}
