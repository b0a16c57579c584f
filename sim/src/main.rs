//! `anycast-sim`: runs the scenarios, prints their figures, writes the JSON and the plots.
//! `cargo xtask sim` builds and runs it (release).

use std::{
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use anycast_sim::{
    engine::{Params, Sim, Steering},
    figures::Figures,
    plot,
    scenario::{NAMES, Scenario},
};
use anycast_user::{
    bgp::Pacing,
    config::Config,
    model::{Claim, LoadReport},
    steering::{
        peers::{PeerKey, Published, SIGNATURE_HEADER},
        policy::Knobs,
    },
};
use anyhow::{Context, Result, bail};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "anycast-sim",
    about = "Simulate the steering loop over many sites with the daemon's own decision code"
)]
struct Cli {
    /// Number of sites.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u16).range(2..=1024))]
    sites: u16,
    /// Hosts per site.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    hosts: u16,
    /// Scenarios to run (default: all).
    #[arg(long = "scenario", value_parser = clap::builder::PossibleValuesParser::new(NAMES))]
    scenarios: Vec<String>,
    /// Take the [load], [health] and [bgp] knobs from this daemon config file (default:
    /// the daemon's defaults).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write every scenario's figures as JSON to this file.
    #[arg(long, value_name = "FILE.json")]
    out: Option<PathBuf>,
    /// Write one SVG plot per scenario (load vs target per site) into this directory.
    #[arg(long, value_name = "DIR")]
    svg: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Probability that one poll of a sibling's report is lost.
    #[arg(long, default_value_t = 0.01)]
    report_loss: f64,
    /// Relative noise of each measured rate per interval.
    #[arg(long, default_value_t = 0.02)]
    noise: f64,
    /// Every host decides alone on its own counters (as the daemon did before sites of
    /// several hosts), instead of its site's first host deciding on the sum of the site's.
    #[arg(long)]
    per_host: bool,
    /// Simulated seconds run before each scenario's 0 s, recorded nowhere (default: the
    /// scenario's own; 0: every controller starts cold at 0 s, all flows kept).
    #[arg(long, value_name = "SECONDS")]
    warm_up: Option<f64>,
    /// Print every decision of the site of this name on stderr (e.g. eu-078: the sites
    /// are named for their region and numbered).
    #[arg(long, value_name = "SITE")]
    trace: Option<String>,
    /// Scenarios run at once (default: one per CPU).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
}

/// The daemon's config for a site with every steering section at its defaults.
const DEFAULTS: &str = r#"
[local]
interfaces = ["sim0"]
tunnel_v4 = "192.0.2.1"
[[sites]]
name = "sim"
local = true
capacity = 1
[load]
[health]
[bgp]
deprefer_med = 100
"#;

fn params(cli: &Cli) -> Result<Params> {
    let defaults = Config::parse(DEFAULTS, "defaults").context("the built-in config")?;
    let given = match &cli.config {
        Some(path) => Some(Config::load(path)?),
        None => None,
    };
    let pick = |f: fn(&Config) -> bool| given.as_ref().filter(|c| f(c)).unwrap_or(&defaults);
    let load = pick(|c| c.load.is_some()).load.clone().context("[load]")?;
    let health = pick(|c| c.health.is_some()).health.clone().context("[health]")?;
    let bgp = pick(|c| c.bgp.is_some()).bgp.clone().context("[bgp]")?;
    if !(0.0..1.0).contains(&cli.report_loss) || !(0.0..1.0).contains(&cli.noise) {
        bail!("--report-loss and --noise are in [0, 1)");
    }
    if cli.warm_up.is_some_and(|w| !(0.0..=3600.0).contains(&w)) {
        bail!("--warm-up is in [0, 3600] s");
    }
    // Per site, every host installs each decision a lead time after it, as the daemon's
    // hosts of a site do (and its policy knows); per host, at once.
    let lead = anycast_user::steering::install::lead_time(pick(|c| c.load.is_some()));
    let knobs = match cli.per_host {
        true => Knobs::of(&load),
        false => Knobs::of(&load).with_lead(lead, load.interval),
    };
    Ok(Params {
        knobs,
        lead: if cli.per_host { 0.0 } else { lead.as_secs_f64() },
        interval: load.interval.as_secs_f64(),
        smoothing: load.smoothing,
        stale: load.stale.as_secs_f64(),
        health_interval: health.interval.as_secs_f64(),
        health_rise: health.rise,
        health_fall: health.fall,
        bgp_interval: bgp.interval.as_secs_f64(),
        pacing: Pacing::of(&bgp),
        dt: 0.1,
        noise: cli.noise,
        report_loss: cli.report_loss,
        deprefer_shift: 0.5,
        convergence: 30.0,
        maglev_size: 65537,
        steering: if cli.per_host { Steering::PerHost } else { Steering::PerSite },
        seed: cli.seed,
        trace: cli.trace.clone(),
    })
}

/// The bytes of one load report as the daemon serves it: the JSON body and its signature
/// header.
fn report_bytes() -> usize {
    let r = LoadReport {
        site: "eu-042".into(),
        capacity: 300000.0,
        served: 123456.789,
        utilisation: 0.41152263,
        target: 0.8,
        drained: false,
        attached: true,
        overloaded: false,
        no_headroom: false,
        epoch: 1_764_580_000_000,
        seq: 123_456,
        measured_at: 1_764_640_000_000,
        // A shedder's wants: its few nearest siblings.
        claims: (0..3).map(|i| (format!("eu-{i:03}"), Claim { wants: 12345.678, sends: 9876.543 })).collect(),
        // What other sites poll: the site's figures (a host's own and its site's decision
        // travel between the hosts of one site only).
        host: None,
        host_load: None,
        decisions: Vec::new(),
        deciding_host: None,
    };
    let signed = Published::new(r, Some(&PeerKey::from_bytes(&[7; 32])));
    signed.body.len() + signed.signature.map_or(0, |s| SIGNATURE_HEADER.len() + 4 + s.len())
}

/// A scenario's figures and the summary printed for them.
type Ran = (Figures, String);

/// Runs scenario `s`: its figures and their summary, and its plot if asked for.
fn run(cli: &Cli, p: &Params, s: &Scenario) -> Result<Ran> {
    let name = s.name;
    let started = Instant::now();
    let rec = Sim::new(s, p).run();
    let took = started.elapsed();
    let steering = if cli.per_host { "per host" } else { "per site" };
    let figures = rec.finish(s, p, report_bytes(), cli.hosts as usize, steering);
    if let Some(dir) = &cli.svg {
        let path = dir.join(format!("{name}.svg"));
        let svg = plot::timeline(s, &rec, &figures, p.dt, p.knobs.target, p.knobs.high).svg()?;
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    let printed = format!(
        "{}   ({:.1} s of simulated time, {:.0} s of warm-up before it, in {:.2} s)",
        figures.summary(),
        s.duration,
        s.warm_up,
        took.as_secs_f64()
    );
    Ok((figures, printed))
}

/// What running `s` costs, roughly: its simulated seconds times its sites.
fn cost(s: &Scenario) -> f64 {
    (s.warm_up + s.duration) * s.world.len() as f64
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let p = params(&cli)?;
    let names: Vec<&str> = if cli.scenarios.is_empty() {
        NAMES.to_vec()
    } else {
        cli.scenarios.iter().map(String::as_str).collect()
    };
    if let Some(dir) = &cli.svg {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let scenarios = names
        .iter()
        .map(|&name| {
            let s = Scenario::named(name, cli.sites as usize, cli.hosts as usize, cli.seed)
                .context("scenario")?;
            Ok(Scenario { warm_up: cli.warm_up.unwrap_or(s.warm_up), ..s })
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(name) = &cli.trace {
        if !scenarios.iter().any(|s| s.world.sites.iter().any(|x| &x.name == name)) {
            let example = scenarios.first().and_then(|s| s.world.sites.first()).map_or("", |x| &x.name);
            bail!(
                "--trace {name}: no site of that name in the scenarios run (their sites are named like {example})"
            );
        }
    }
    // The scenarios are independent: run on `--jobs` threads, printed in their order. The
    // longest (simulated seconds × sites) start first: the others fill the other threads
    // meanwhile, instead of the longest starting last and running alone.
    let mut order: Vec<usize> = (0..scenarios.len()).collect();
    order.sort_by(|&a, &b| cost(&scenarios[b]).total_cmp(&cost(&scenarios[a])));
    let next = AtomicUsize::new(0);
    let jobs =
        cli.jobs.map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()), usize::from);
    let done: Mutex<Vec<Option<Result<Ran>>>> = Mutex::new((0..names.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(names.len()) {
            scope.spawn(|| {
                while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let figures = run(&cli, &p, &scenarios[i]);
                    done.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(figures);
                }
            });
        }
    });
    let mut all = Vec::new();
    for result in done.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().flatten() {
        let (figures, printed) = result?;
        println!("{printed}");
        all.push(figures);
    }
    if let Some(out) = &cli.out {
        let json = serde_json::to_string_pretty(&all)?;
        std::fs::write(out, json).with_context(|| format!("writing {}", out.display()))?;
        println!("figures written to {}", out.display());
    }
    Ok(())
}
