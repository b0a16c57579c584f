//! The simulated deployment: sites on a globe with their hosts, capacities, client
//! populations (the demand each site's BGP catchment brings when every site announces), and
//! the backbone between them (round-trip times from great-circle distances).

/// Where the sites are: regions with a centre (latitude, longitude in degrees), a spread
/// (degrees) and a share of the sites, roughly where anycast operators put points of
/// presence.
const REGIONS: [(&str, f64, f64, f64, f64); 6] = [
    ("na", 40.0, -95.0, 12.0, 0.25),
    ("eu", 50.0, 10.0, 8.0, 0.30),
    ("as", 30.0, 110.0, 15.0, 0.22),
    ("sa", -15.0, -60.0, 10.0, 0.08),
    ("af", 5.0, 20.0, 14.0, 0.07),
    ("oc", -30.0, 145.0, 8.0, 0.08),
];

/// Packets/s one host serves at utilisation 1, before the per-site factor.
pub const HOST_CAPACITY: f64 = 100_000.0;
/// Light in fibre covers ~200 km per ms; backbone paths are ~1.4× the great circle.
const KM_PER_MS: f64 = 200.0;
const ROUTE_STRETCH: f64 = 1.4;
const EARTH_RADIUS_KM: f64 = 6371.0;

#[derive(Clone, Debug)]
pub struct Site {
    pub name: String,
    pub region: usize,
    pub lat: f64,
    pub lon: f64,
    pub hosts: usize,
    /// Packets/s each of its hosts serves at utilisation 1.
    pub host_capacity: f64,
    /// Packets/s its own catchment sends it with every site announcing, at demand factor 1.
    pub home_demand: f64,
}

impl Site {
    pub fn capacity(&self) -> f64 {
        self.host_capacity * self.hosts as f64
    }

    /// Local time of day as a fraction of a day, at `t` seconds into a day of `day` seconds
    /// that starts at midnight on the Greenwich meridian.
    pub fn local_time(&self, t: f64, day: f64) -> f64 {
        ((t / day) + self.lon / 360.0).rem_euclid(1.0)
    }
}

#[derive(Clone, Debug)]
pub struct World {
    pub sites: Vec<Site>,
    /// Round-trip times between sites, ms, row-major.
    rtt: Vec<f32>,
    /// For each site, the others from nearest to farthest.
    pub nearest: Vec<Vec<usize>>,
}

impl World {
    /// `n` sites of `hosts` hosts each, placed and sized from `seed`; each site's catchment
    /// brings `utilisation` of its capacity on average (±20 %).
    pub fn generate(n: usize, hosts: usize, utilisation: f64, seed: u64) -> World {
        let mut rng = fastrand::Rng::with_seed(seed);
        let total: f64 = REGIONS.iter().map(|r| r.4).sum();
        let mut sites = Vec::with_capacity(n);
        for i in 0..n {
            // Regions in proportion, interleaved so that any prefix of the list is spread.
            let x = (i as f64 + 0.5) / n as f64 * total;
            let mut acc = 0.0;
            let region = REGIONS
                .iter()
                .position(|r| {
                    acc += r.4;
                    x < acc
                })
                .unwrap_or(REGIONS.len() - 1);
            let (code, lat, lon, spread, _) = REGIONS[region];
            let lat = (lat + gauss(&mut rng) * spread).clamp(-60.0, 70.0);
            let lon = lon + gauss(&mut rng) * spread * 1.5;
            // Sites differ in size: 1×, 1.5×, 2× or 3× the base host.
            let factor = [1.0, 1.5, 2.0, 3.0][rng.usize(0..4)];
            let host_capacity = HOST_CAPACITY * factor;
            let home_demand = utilisation * host_capacity * hosts as f64 * (0.8 + 0.4 * rng.f64());
            sites.push(Site {
                name: format!("{code}-{i:03}"),
                region,
                lat,
                lon,
                hosts,
                host_capacity,
                home_demand,
            });
        }
        World::with_sites(sites)
    }

    /// A world of the given sites (scenarios that need a particular shape).
    pub fn with_sites(sites: Vec<Site>) -> World {
        let n = sites.len();
        let mut rtt = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                let km = great_circle_km(&sites[i], &sites[j]);
                rtt[i * n + j] =
                    if i == j { 0.0 } else { (2.0 * km * ROUTE_STRETCH / KM_PER_MS + 1.0) as f32 };
            }
        }
        let nearest = (0..n)
            .map(|i| {
                let mut others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
                others.sort_by(|&a, &b| rtt[i * n + a].total_cmp(&rtt[i * n + b]));
                others
            })
            .collect();
        World { sites, rtt, nearest }
    }

    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    pub fn rtt_ms(&self, i: usize, j: usize) -> f64 {
        self.rtt[i * self.sites.len() + j] as f64
    }

    /// Round-trip times from site `i` to every site, ms.
    pub fn rtt_row(&self, i: usize) -> &[f32] {
        let n = self.sites.len();
        &self.rtt[i * n..(i + 1) * n]
    }

    pub fn total_capacity(&self) -> f64 {
        self.sites.iter().map(Site::capacity).sum()
    }

    /// The site nearest to a point.
    pub fn nearest_to(&self, lat: f64, lon: f64) -> usize {
        let probe =
            Site { name: String::new(), region: 0, lat, lon, hosts: 0, host_capacity: 0.0, home_demand: 0.0 };
        (0..self.len())
            .min_by(|&a, &b| {
                great_circle_km(&probe, &self.sites[a]).total_cmp(&great_circle_km(&probe, &self.sites[b]))
            })
            .unwrap_or(0)
    }
}

fn great_circle_km(a: &Site, b: &Site) -> f64 {
    let (la, lb) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = lb - la;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la.cos() * lb.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// A standard normal deviate (Box–Muller).
pub fn gauss(rng: &mut fastrand::Rng) -> f64 {
    let u = rng.f64().max(f64::MIN_POSITIVE);
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * rng.f64()).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_are_spread_sized_and_ordered_by_distance() {
        let w = World::generate(300, 8, 0.5, 1);
        assert_eq!(w.len(), 300);
        let eu = w.sites.iter().filter(|s| s.name.starts_with("eu-")).count();
        assert!((80..=100).contains(&eu), "{eu} European sites of 300");
        for i in [0, 150, 299] {
            let order = &w.nearest[i];
            assert_eq!(order.len(), 299);
            assert!(order.windows(2).all(|p| w.rtt_ms(i, p[0]) <= w.rtt_ms(i, p[1])));
        }
        // Frankfurt to Sydney is ~16,500 km: a few hundred ms round trip over fibre.
        let fra = w.nearest_to(50.1, 8.7);
        let syd = w.nearest_to(-33.9, 151.2);
        let rtt = w.rtt_ms(fra, syd);
        assert!((150.0..400.0).contains(&rtt), "{rtt} ms");
        let load = w.sites.iter().map(|s| s.home_demand).sum::<f64>() / w.total_capacity();
        assert!((0.45..0.55).contains(&load), "{load}");
    }
}
