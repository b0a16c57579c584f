//! `anycast status | plan | reload | drain | undrain | detach` (and the readings of `anycast
//! top`): talk to the running daemon over its admin socket.
//!
//! One writer of the maps: when no daemon listens on the socket, a command that reads or
//! writes the maps does so itself only after taking the pin directory's lock, which a
//! running daemon holds for its whole life. A daemon that is slow, or refuses, is never
//! gone around: only "nothing listens on the socket" and a free lock let the CLI work on the
//! maps directly, with the run-time state they hold (load weights and sites down stay).

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anycast_user::{
    api::{
        client::{self, ClientError},
        server::{DrainReply, ReloadReply},
        status,
    },
    bgp,
    config::{Config, DEFAULT_SOCKET},
    datapath::{
        counters::{Counters, Samples},
        layout::{self, Pinned},
        loader,
        pin_lock::PinDirLock,
    },
    model::{NextHops, SteeringView, status::Status},
    owner::Owner,
    reconcile::preview::Preview,
};
use anyhow::{Context, Result, bail};
use hyper::Method;
use serde::de::DeserializeOwned;

use super::Refused;
use crate::Output;

/// A read answers at once (views are published); a change may wait behind a reconcile.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(150);

/// Where to find the daemon and its files, and how to print.
pub struct Target {
    pub config: PathBuf,
    pub socket: Option<PathBuf>,
    pub output: Output,
}

impl Target {
    pub fn load_config(&self) -> Result<Config> {
        Ok(Config::load(&self.config)?)
    }

    /// The socket: --socket, else the config's, else the default (a missing config is
    /// fine as long as the socket is where the default says).
    fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .or_else(|| Config::load(&self.config).ok().map(|c| c.admin.socket))
            .unwrap_or_else(|| DEFAULT_SOCKET.into())
    }

    pub fn json(&self) -> bool {
        self.output == Output::Json
    }
}

/// One request to the daemon; `Err(ClientError::NoDaemon)` only when nothing listens.
async fn call<T: DeserializeOwned>(
    target: &Target,
    method: Method,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<Result<T, ClientError>> {
    match client::request(&target.socket(), method, path, body, timeout).await {
        Ok(r) if r.status < 300 => {
            Ok(Ok(serde_json::from_str(&r.body).with_context(|| format!("the daemon's {path} reply"))?))
        }
        Ok(r) => Err(Refused { status: r.status, message: r.body.trim().to_owned() }.into()),
        Err(e @ ClientError::NoDaemon { .. }) => Ok(Err(e)),
        Err(e) => Err(e.into()),
    }
}

/// The config for working without a daemon; if it cannot be read, the error is that no
/// daemon answers (exit code 3), with why the fallback cannot help.
fn offline_config(target: &Target, why: ClientError, what: &str) -> Result<(Config, ClientError)> {
    match target.load_config() {
        Ok(c) => Ok((c, why)),
        Err(e) => Err(anyhow::Error::new(why).context(format!("{what} needs the config: {e:#}"))),
    }
}

/// The pin directory's lock, for working on the maps without a daemon; refused while a
/// daemon holds it.
fn lock(config: &Config, why: &ClientError) -> Result<(PathBuf, PinDirLock)> {
    let pin_dir = loader::resolve_pin_dir(&config.datapath.pin_dir)?;
    let lock = PinDirLock::acquire(&pin_dir).with_context(|| {
        format!(
            "{why}, but a process holds {}: a daemon that does not answer on its socket",
            pin_dir.display()
        )
    })?;
    Ok((pin_dir, lock))
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// What `anycast status` and `anycast top` show: from the daemon's `GET /status`, else
/// (nothing listens, the lock is free) from the pinned maps, with the reason for that
/// fallback (callers decide how often to warn: `top` reads every interval).
pub async fn fetch_status(target: &Target) -> Result<(Status, Option<String>)> {
    match call::<Status>(target, Method::GET, "/status", None, READ_TIMEOUT).await? {
        Ok(s) => Ok((s, None)),
        Err(why) => {
            let (config, why) = offline_config(target, why, "reading the pinned maps")?;
            let (pin_dir, _lock) = lock(&config, &why)?;
            let owner = Owner::open_pinned(config)?;
            let counters = Counters::open(&pin_dir)?;
            let view = owner.view();
            let snap =
                counters.snapshot(view.sites.iter().map(|(_, i)| *i), view.vips.iter().map(|(_, i)| *i))?;
            let samples = Samples { flow_entries: counters.flow_count() as u64, ..Samples::default() };
            let s =
                status::build(&view, &SteeringView::default(), &snap, &samples, &NextHops::default(), None);
            Ok((s, Some(format!("{why}; reading the pinned maps"))))
        }
    }
}

pub async fn status(target: &Target) -> Result<()> {
    let (status, fallback) = fetch_status(target).await?;
    if let Some(why) = fallback {
        log::warn!("{why}");
    }
    if target.json() {
        print_json(&status)
    } else {
        print!("{}", status.table());
        Ok(())
    }
}

pub async fn drain(target: &Target, site: &str, drained: bool) -> Result<()> {
    let verb = if drained { "drain" } else { "undrain" };
    // The site goes into the path: one percent-encoded segment whatever it holds.
    let path = format!("/{verb}/{}", encode_segment(site));
    let reply = match call::<DrainReply>(target, Method::POST, &path, None, CHANGE_TIMEOUT).await? {
        Ok(r) => r,
        Err(why) => {
            let (config, why) = offline_config(target, why, "applying it to the pinned maps")?;
            let (_, _lock) = lock(&config, &why)?;
            log::warn!("{why}; applying to the pinned maps");
            let weight = Owner::open_pinned(config)?.set_drained(site, drained)?;
            DrainReply { site: site.to_owned(), drained, weight }
        }
    };
    if target.json() {
        return print_json(&reply);
    }
    println!(
        "site {}: {} (weight {})",
        reply.site,
        if reply.drained { "drained: no new flows, established flows stay" } else { "undrained" },
        reply.weight
    );
    Ok(())
}

fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `anycast reload`: the daemon re-reads its file; the outcome (or every problem) printed.
/// A file with errors is reported here (exit 4) and the daemon is not asked: it would refuse
/// it whole, and the file may be where its admin socket is named.
pub async fn reload(target: &Target) -> Result<()> {
    target.load_config()?;
    match call::<ReloadReply>(target, Method::POST, "/reload", None, CHANGE_TIMEOUT).await? {
        Ok(r) if target.json() => print_json(&r),
        Ok(r) => {
            println!("reloaded: {} map writes, {} Maglev tables", r.writes, r.tables);
            Ok(())
        }
        Err(why) => Err(why.into()),
    }
}

/// `anycast plan FILE`: the daemon (or, without one, the pinned maps) compares FILE with
/// what runs.
pub async fn plan(target: &Target, file: &Path) -> Result<()> {
    // Validated here first: the problems then name FILE and its lines.
    let new = Config::load(file)?;
    // Maps of an older layout (this build not running yet): what a start would migrate.
    let pin_dir = loader::resolve_pin_dir(&new.datapath.pin_dir)?;
    if let Pinned::Older { .. } = layout::inspect_only(&pin_dir)? {
        let steps = layout::describe(&pin_dir)?;
        if target.json() {
            return print_json(&serde_json::json!({ "upgrade": steps }));
        }
        for step in steps {
            println!("upgrade: {step}");
        }
        return Ok(());
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let preview = match call::<Preview>(target, Method::POST, "/plan", Some(text), CHANGE_TIMEOUT).await? {
        Ok(p) => p,
        Err(why) => {
            let (running, why) = offline_config(target, why, "planning against the pinned maps (--config)")?;
            let (_, _lock) = lock(&running, &why)?;
            log::warn!("{why}; planning against the pinned maps and {}", target.config.display());
            Owner::open_pinned(running)?.preview(&new)?
        }
    };
    if target.json() {
        print_json(&preview)
    } else {
        print!("{}", preview.render());
        Ok(())
    }
}

/// `anycast detach`: refused while a daemon runs (it holds the links: unpinning would not
/// detach anything until it exits, and it would withdraw BGP meanwhile). Otherwise, with
/// the lock held: every VIP withdrawn from BGP (confirmed by BIRD) first — after its
/// graceful shutdown unless `no_graceful` — then the pins.
pub async fn detach(target: &Target, pin_dir: Option<&Path>, no_bgp: bool, no_graceful: bool) -> Result<()> {
    if let Ok(r) = client::request(&target.socket(), Method::GET, "/load", None, READ_TIMEOUT).await {
        bail!(
            "a daemon is running (it answers on {}, status {}): stop it first (`systemctl stop anycast`), then detach",
            target.socket().display(),
            r.status
        );
    }
    let config = target.load_config().ok();
    let pin_dir = match (pin_dir, &config) {
        (Some(p), _) => p.to_owned(),
        (None, Some(c)) => c.datapath.pin_dir.clone(),
        (None, None) => bail!("no config at {}: give --pin-dir DIR", target.config.display()),
    };
    let resolved = loader::resolve_pin_dir(&pin_dir)?;
    let _lock = PinDirLock::acquire(&resolved)?;
    // Withdraw first: a detached data path must not keep attracting traffic. If BIRD does
    // not confirm, nothing is detached (the VIPs would be announced with nobody serving).
    // The graceful shutdown waits here, the data path still forwarding (detach is planned
    // maintenance, and the daemon is stopped: nothing else waits on this command), so that
    // the withdraw moves no traffic. Interrupted, it leaves the routes in graceful shutdown
    // with the data path attached: detach again (it keeps the time left), or start the
    // daemon (a healthy site cancels it).
    let why = "withdrawing the VIPs from BIRD before detaching; nothing detached (fix BIRD, or detach with --no-bgp)";
    match config.as_ref().and_then(|c| Some((c, c.bgp.as_ref()?))) {
        Some((config, bgp)) if !no_bgp => {
            if !no_graceful && let Some(until) = bgp::shut_down_all(config, bgp).context(why)? {
                let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
                println!(
                    "BGP: every announced VIP exported with GRACEFUL_SHUTDOWN (65535:0); withdrawing in {:.1} s \
                     (the data path forwards meanwhile; --no-graceful withdraws at once)",
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
            }
            bgp::withdraw_all(config, bgp).context(why)?;
            println!("BGP: every VIP withdrawn ({} rewritten, BIRD reconfigured)", bgp.include.display());
        }
        Some(_) => println!("BGP: left as it is (--no-bgp)"),
        None => {}
    }
    let ifaces = loader::detach(&pin_dir)?;
    if ifaces.is_empty() {
        println!("nothing attached under {}; pins removed", pin_dir.display());
    } else {
        println!("detached from {}; pins under {} removed", ifaces.join(", "), pin_dir.display());
    }
    Ok(())
}
