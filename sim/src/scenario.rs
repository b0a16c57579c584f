//! The scenarios: what happens to demand, hosts and the backbone over time, and which sites
//! each one is about (the ones its figures and plot single out).

use crate::world::{HOST_CAPACITY, Site, World};

/// A change of one or more sites' demand factor over a time window.
#[derive(Clone, Debug)]
pub struct Surge {
    pub sites: Vec<usize>,
    pub factor: f64,
    pub from: f64,
    pub to: f64,
}

/// A host (or, with `host: None`, every host of the site) down over a time window.
#[derive(Clone, Debug)]
pub struct Outage {
    pub site: usize,
    pub host: Option<usize>,
    pub from: f64,
    pub to: f64,
}

/// The backbone split in two over a time window: sites on different sides cannot reach
/// each other (no reports, no probes, no forwarded packets); clients still reach every
/// site through the internet.
#[derive(Clone, Debug)]
pub struct Partition {
    pub from: f64,
    pub to: f64,
    pub side: Vec<bool>,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: String,
    pub duration: f64,
    pub world: World,
    /// Demand factor of every site outside surges (1: each catchment brings its site's
    /// home demand).
    pub base: f64,
    pub surges: Vec<Surge>,
    /// One compressed day over the scenario: demand follows each site's local time.
    pub diurnal: bool,
    pub outages: Vec<Outage>,
    pub partition: Option<Partition>,
    /// The main event: settle time is measured from its start, reversals after settling
    /// until its end.
    pub event: (f64, f64),
    /// The sites the figures and the plot single out.
    pub focus: Vec<usize>,
    /// Total capacity suffices at target: the "no site above high" figure applies.
    pub capacity_suffices: bool,
    /// Simulated seconds run before the scenario's clock starts, recorded nowhere. The
    /// model starts every host with the flows its demand would have with every flow kept
    /// and every controller at `keep` 1: the steady state of a scenario that starts below
    /// target, but for one that does not (the day: the sites in their evening are at up to
    /// 1.14 of capacity at 0 s) a cold start of every controller at once, which is not the
    /// scenario. The warm-up runs the demand of the seconds before 0 s.
    pub warm_up: f64,
}

pub const NAMES: [&str; 7] =
    ["flash", "flood", "diurnal", "partition", "overload", "failure", "shared-sibling"];

/// Diurnal demand: 1 + AMPLITUDE × cos(2π (local time − PEAK)), peaking at 20:00.
const DIURNAL_AMPLITUDE: f64 = 0.9;
const DIURNAL_PEAK: f64 = 20.0 / 24.0;

impl Scenario {
    /// The scenario `name` over a generated world of `n` sites × `hosts` hosts.
    pub fn named(name: &str, n: usize, hosts: usize, seed: u64) -> Option<Scenario> {
        let world = World::generate(n, hosts, 0.5, seed);
        let fra = world.nearest_to(50.1, 8.7);
        let nyc = world.nearest_to(40.7, -74.0);
        let base = Scenario {
            name: "",
            about: String::new(),
            duration: 200.0,
            base: 1.0,
            surges: Vec::new(),
            diurnal: false,
            outages: Vec::new(),
            partition: None,
            event: (20.0, 140.0),
            focus: vec![fra],
            capacity_suffices: true,
            warm_up: 0.0,
            world,
        };
        let fra_name = base.world.sites[fra].name.clone();
        let s = match name {
            "flash" => Scenario {
                name: "flash",
                about: format!("3x flash crowd at {fra_name} (nearest Frankfurt) from 20 s to 140 s"),
                surges: vec![Surge { sites: vec![fra], factor: 3.0, from: 20.0, to: 140.0 }],
                ..base
            },
            "flood" => {
                let mut five = vec![fra];
                five.extend(base.world.nearest[fra].iter().take(4));
                Scenario {
                    name: "flood",
                    about: format!(
                        "10x flood at five sites at once ({fra_name} and its four nearest) from 20 s to 140 s"
                    ),
                    surges: vec![Surge { sites: five.clone(), factor: 10.0, from: 20.0, to: 140.0 }],
                    focus: five,
                    ..base
                }
            }
            "diurnal" => {
                // The sites with the largest peak load (their catchment is big for their size).
                let mut by_load: Vec<usize> = (0..base.world.len()).collect();
                let load = |s: &Site| s.home_demand / s.capacity();
                by_load.sort_by(|&a, &b| load(&base.world.sites[b]).total_cmp(&load(&base.world.sites[a])));
                Scenario {
                    name: "diurnal",
                    about: "one day compressed into 20 minutes: each site's demand follows its local time, \
                            from 0.1x at 08:00 to 1.9x at 20:00"
                        .into(),
                    duration: 1200.0,
                    // One lifetime of a long flow (60 s): the flows the cold start kept are
                    // gone, and the controllers hold what the hour before 0 s needs.
                    warm_up: 60.0,
                    diurnal: true,
                    event: (0.0, 1200.0),
                    focus: by_load.into_iter().take(4).collect(),
                    ..base
                }
            }
            "partition" => {
                let side = base.world.sites.iter().map(|s| s.lon < -30.0).collect();
                Scenario {
                    name: "partition",
                    about: format!(
                        "3x flash crowds at {fra_name} and {} (nearest New York) from 20 s; the backbone splits \
                         the Americas from the rest from 60 s to 140 s",
                        base.world.sites[nyc].name
                    ),
                    duration: 220.0,
                    surges: vec![Surge { sites: vec![fra, nyc], factor: 3.0, from: 20.0, to: 200.0 }],
                    partition: Some(Partition { from: 60.0, to: 140.0, side }),
                    event: (60.0, 140.0),
                    focus: vec![fra, nyc],
                    ..base
                }
            }
            "overload" => Scenario {
                name: "overload",
                about: "total demand 1.2x total capacity (every catchment 2.4x) from 20 s to 200 s".into(),
                duration: 240.0,
                surges: vec![Surge {
                    sites: (0..base.world.len()).collect(),
                    factor: 2.4,
                    from: 20.0,
                    to: 200.0,
                }],
                event: (20.0, 200.0),
                capacity_suffices: false,
                ..base
            },
            "failure" => {
                let par = base.world.nearest_to(48.9, 2.4);
                let host = if hosts > 1 { Some(0) } else { None };
                Scenario {
                    name: "failure",
                    about: format!(
                        "3x flash crowd at {fra_name} from 20 s; {} of it fails at 60 s (back at 150 s); \
                         the whole of {} (nearest Paris) fails at 90 s (back at 160 s)",
                        if host.is_some() { "one host" } else { "the site (one host)" },
                        base.world.sites[par].name
                    ),
                    duration: 240.0,
                    surges: vec![Surge { sites: vec![fra], factor: 3.0, from: 20.0, to: 200.0 }],
                    outages: vec![
                        Outage { site: fra, host, from: 60.0, to: 150.0 },
                        Outage { site: par, host: None, from: 90.0, to: 160.0 },
                    ],
                    event: (20.0, 200.0),
                    focus: vec![fra, par],
                    ..base
                }
            }
            "shared-sibling" => {
                // Three sites in a row: a and c overloaded, b between them with room for less
                // than both would shed.
                let site = |name: &str, lon: f64, utilisation: f64| Site {
                    name: name.into(),
                    region: 1,
                    lat: 50.0,
                    lon,
                    hosts,
                    host_capacity: HOST_CAPACITY,
                    home_demand: utilisation * HOST_CAPACITY * hosts as f64,
                };
                let world =
                    World::with_sites(vec![site("a", 0.0, 0.5), site("b", 10.0, 0.3), site("c", 20.0, 0.5)]);
                Scenario {
                    name: "shared-sibling",
                    about:
                        "sites a and c at 1.1 of capacity from 20 s to 140 s, each with more to shed (0.3) \
                            than half of the room of b (0.5) between them"
                            .into(),
                    duration: 180.0,
                    surges: vec![Surge { sites: vec![0, 2], factor: 2.2, from: 20.0, to: 140.0 }],
                    focus: vec![1, 0, 2],
                    world,
                    ..base
                }
            }
            _ => return None,
        };
        Some(s)
    }

    /// The demand factor of site `i`'s catchment at `t`.
    pub fn demand_factor(&self, i: usize, t: f64) -> f64 {
        let mut f = self.base;
        if self.diurnal {
            let local = self.world.sites[i].local_time(t, self.duration);
            f *= 1.0 + DIURNAL_AMPLITUDE * (std::f64::consts::TAU * (local - DIURNAL_PEAK)).cos();
        }
        for s in &self.surges {
            if (s.from..s.to).contains(&t) && s.sites.contains(&i) {
                f *= s.factor;
            }
        }
        f
    }

    pub fn partitioned(&self, t: f64) -> Option<&[bool]> {
        self.partition.as_ref().filter(|p| (p.from..p.to).contains(&t)).map(|p| &p.side[..])
    }
}
