//! The BGP speaker: the controller drives BIRD 2 to announce, de-prefer or withdraw each VIP
//! from the site's signals (`[bgp]`; README "BGP").
//!
//! States, one per VIP address (VIP entries that share an address share its route):
//! - **announce**: the route is exported as is;
//! - **deprefer**: exported with a higher MED and/or the local AS prepended, so that routers
//!   that can reach another site prefer it; entered when the site is overloaded and no
//!   sibling has headroom (shedding in the data path can do no more);
//! - **withdraw**: not exported; entered when the site is drained or the data path is not
//!   attached on every configured interface;
//! - **graceful_shutdown**: the way to withdraw (RFC 8326), for `graceful_shutdown_ms`: the
//!   route stays exported with the attributes it had, plus the well-known GRACEFUL_SHUTDOWN
//!   community (65535:0) and LOCAL_PREF 0. Routers whose import policy honours the community
//!   (LOCAL_PREF 0, as RFC 8326 asks of receivers) and our iBGP peers (BIRD sends LOCAL_PREF only over iBGP)
//!   move to another site's route while this one is still there, so the withdraw that
//!   follows moves no traffic and leaves nothing black-holed while BGP converges. Wanting
//!   anything but withdraw meanwhile (an undrain) cancels it at once: the route never left
//!   the routers' tables, so it is told as before at the next interval.
//!
//! A state that differs from the current one must be wanted for `fall` consecutive
//! intervals (worse: announce → deprefer → withdraw) or `rise` (better) before it is entered,
//! so that a signal flapping around a watermark does not flap the route (each BGP update
//! moves every client of the prefix, and routers damp flapping prefixes). At the
//! controller's start each VIP resumes the state the include file says BIRD holds (the
//! previous run wrote it), and the first step waits for the steering task's first
//! measurement: a restart announces, de-prefers or withdraws nothing that it did not
//! before. A VIP the file does not name enters the state wanted at once. A route in graceful
//! shutdown resumes it with the time left: the file names the state it came from and when it
//! is withdrawn.
//!
//! Applying: the controller renders the routes into a file that BIRD's config includes
//! (written atomically: a temporary file renamed over it) and runs `birdc -s SOCKET
//! configure`, BIRD's soft reconfiguration: the static protocols add, change or remove
//! routes and the BGP channels re-export what changed; sessions are not reset and BIRD never
//! restarts. The file holds one static protocol per family (`anycast4`, `anycast6`) with a
//! device route per VIP not withdrawn; a de-preferred one carries its MED and prepends. The
//! BGP channels export them with [`EXPORT_FILTER`] (fixed text in bird.conf: it refers to
//! nothing the file defines, so BIRD starts without the file). birdc's numeric reply codes
//! (`-v`) are checked; a refusal is logged, counted (`anycast_bgp_apply_failures_total`)
//! and retried every interval.
//!
//! Safety: why neither a controller crash nor a dead data path is a problem.
//! - The controller stops or crashes: BIRD keeps the routes last written, and the XDP
//!   program keeps forwarding (its link is pinned), so the announcement stays true. No
//!   watchdog withdraws on the controller's death: the data path forwards without the
//!   controller, and a watchdog would turn every controller restart or upgrade into a
//!   withdraw and re-announce of the site.
//! - The data path goes away: only through `anycast detach` (the pinned link holds the
//!   program on the interface), which writes every route withdrawn and reconfigures BIRD
//!   *before* it unpins (after its graceful shutdown: the data path still forwards while the
//!   community moves the traffic away), and refuses to detach if BIRD does not confirm; or
//!   with its interface, and each route is a device route bound to the first configured
//!   interface, which BIRD withdraws when that interface goes down or disappears.
//! - The host reboots: the pins are gone, and so is the file if it lives on a tmpfs (the
//!   default `/run/bird/anycast.conf`). BIRD includes it with a pattern
//!   (`include "/run/bird/anycast*.conf";`), which matches nothing until the controller has
//!   attached the data path and written it: nothing is announced before that.
//! - A running controller that finds a link pin missing (`attached` false: someone removed
//!   the pins behind its back) withdraws after `fall` intervals.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Read as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use std::sync::Arc;

use tokio::sync::watch;

use crate::{
    config::{Bgp, Config},
    model::{BgpView, DataPathView, Route, SiteSignals, SteeringView},
};

/// Names of the static protocols the include file defines, per family.
pub const PROTOCOL_V4: &str = "anycast4";
pub const PROTOCOL_V6: &str = "anycast6";
/// BIRD is asked for a soft reconfiguration, which answers at once; a birdc that runs longer
/// than this is stuck (BIRD hung), and killed.
const BIRDC_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a controller without `[bgp]` looks whether a reload added it.
const IDLE: Duration = Duration::from_secs(1);

/// How fast a route may change, in intervals: `rise` / `fall` consecutive intervals for a
/// better / worse state, at least `deprefer_after` to enter de-prefer, and at least
/// `hold_down` in de-prefer before announcing again — doubled for each de-prefer entered
/// since the route last stayed announced for four hold-downs (exponential backoff, up to
/// 16×). Route changes then come minutes apart: each one moves every client of the prefix,
/// BGP takes seconds to minutes to converge, and routers damp prefixes whose attributes
/// change often (RFC 2439, RFC 7196). Withdrawing (a drain, a detached data path) is not
/// held back, but goes through `graceful_shutdown` intervals of GRACEFUL_SHUTDOWN first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacing {
    pub rise: u32,
    pub fall: u32,
    pub deprefer_after: u32,
    pub hold_down: u32,
    pub graceful_shutdown: u32,
}

impl Pacing {
    pub fn of(bgp: &Bgp) -> Pacing {
        let intervals = |d: Duration| (d.as_secs_f64() / bgp.interval.as_secs_f64().max(1e-3)).ceil() as u32;
        Pacing {
            rise: bgp.rise,
            fall: bgp.fall,
            deprefer_after: intervals(bgp.deprefer_after),
            hold_down: intervals(bgp.hold_down),
            graceful_shutdown: intervals(bgp.graceful_shutdown),
        }
    }
}

/// The largest backoff factor of the hold-down.
const MAX_BACKOFF: u32 = 16;

/// One VIP's state with rise/fall hysteresis and pacing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hysteresis {
    current: Route,
    /// A different state wanted, and for how many consecutive steps.
    pending: Option<(Route, u32)>,
    /// Intervals since the current state was entered.
    held: u32,
    /// De-prefers entered and not yet forgiven.
    entries: u32,
    /// In graceful shutdown: the state it left (whose attributes stay exported, and where a
    /// cancel returns) and the intervals left before the withdraw.
    shutdown: Option<(Route, u32)>,
}

impl Hysteresis {
    /// A route in `current` (announce, deprefer or withdraw).
    pub fn new(current: Route) -> Hysteresis {
        Hysteresis {
            current,
            pending: None,
            held: 0,
            entries: u32::from(current == Route::Deprefer),
            shutdown: None,
        }
    }

    /// A route in graceful shutdown from `from`, withdrawn at the `left`-th step (a restart
    /// resuming it).
    pub fn shutting_down(from: Route, left: u32) -> Hysteresis {
        Hysteresis { current: Route::Shutdown, shutdown: Some((from, left)), ..Hysteresis::new(from) }
    }

    pub fn current(&self) -> Route {
        self.current
    }

    /// In graceful shutdown: the state whose attributes the route keeps.
    pub fn shutting_down_from(&self) -> Option<Route> {
        self.shutdown.map(|(from, _)| from)
    }

    /// One interval's wish; the new state when it is entered.
    pub fn step(&mut self, wanted: Route, pacing: &Pacing) -> Option<Route> {
        self.held = self.held.saturating_add(1);
        if self.current == Route::Announce && self.held >= 4 * pacing.hold_down {
            self.entries = 0;
        }
        if self.current == Route::Shutdown {
            let (from, left) = self.shutdown.unwrap_or((Route::Announce, 0));
            if wanted != Route::Withdraw {
                // Cancelled: the route is still in every table, told as before at once; from
                // there the usual pacing (`held` counts on from the entry into `from`).
                self.current = from;
                self.shutdown = None;
                self.pending = None;
                return Some(from);
            }
            let left = left.saturating_sub(1);
            if left > 0 {
                self.shutdown = Some((from, left));
                return None;
            }
            self.shutdown = None;
            self.current = Route::Withdraw;
            self.held = 0;
            return Some(Route::Withdraw);
        }
        if wanted == self.current {
            self.pending = None;
            return None;
        }
        let count = match self.pending {
            Some((r, n)) if r == wanted => n + 1,
            _ => 1,
        };
        let needed = match (self.current, wanted) {
            (Route::Announce, Route::Deprefer) => pacing.fall.max(pacing.deprefer_after),
            (from, to) if to > from => pacing.rise,
            _ => pacing.fall,
        };
        let backoff = 1u32 << self.entries.saturating_sub(1).min(MAX_BACKOFF.trailing_zeros());
        let held_down = self.current == Route::Deprefer
            && wanted == Route::Announce
            && self.held < pacing.hold_down * backoff;
        if count >= needed && !held_down {
            self.pending = None;
            if wanted == Route::Withdraw && pacing.graceful_shutdown > 0 {
                self.shutdown = Some((self.current, pacing.graceful_shutdown));
                self.current = Route::Shutdown;
                return Some(Route::Shutdown);
            }
            if wanted == Route::Deprefer {
                self.entries += 1;
            }
            self.current = wanted;
            self.held = 0;
            Some(wanted)
        } else {
            self.pending = Some((wanted, count));
            None
        }
    }
}

/// The route of a VIP address: the host prefix.
pub fn prefix(address: IpAddr) -> String {
    match address {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// VIP address → the names of the VIP entries on it.
fn addresses(config: &Config) -> BTreeMap<IpAddr, Vec<String>> {
    let mut out: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for v in &config.vips {
        out.entry(v.address).or_default().push(v.name.clone());
    }
    out
}

/// The BGP export filter BIRD's sessions use, as the README and the include's header give
/// it: only the VIP routes, and the MED re-set because BIRD sends an eBGP peer a MED only
/// when the export filter set it (a static route's own MED would be dropped). Communities
/// (GRACEFUL_SHUTDOWN) pass as the route has them: the filter must not delete them.
pub const EXPORT_FILTER: &str = concat!(
    "export filter {\n",
    "    if proto !~ \"anycast*\" then reject;\n",
    "    if defined(bgp_med) then bgp_med = bgp_med;\n",
    "    accept;\n",
    "};",
);

/// The well-known GRACEFUL_SHUTDOWN community (RFC 8326), as BIRD writes a pair.
pub const GRACEFUL_SHUTDOWN: (u32, u32) = (65535, 0);

/// How the include file exports one route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export {
    pub route: Route,
    /// In graceful shutdown: the state whose attributes the route keeps, and when it is
    /// withdrawn.
    pub shutdown: Option<(Route, SystemTime)>,
}

impl From<Route> for Export {
    fn from(route: Route) -> Export {
        Export { route, shutdown: None }
    }
}

/// A time as the include file writes it: unix seconds with milliseconds, in integers so that
/// it reads back exactly.
fn unix(t: SystemTime) -> String {
    let ms = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

fn parse_unix(text: &str) -> Option<SystemTime> {
    let (s, ms) = text.split_once('.')?;
    let ms = s
        .parse::<u64>()
        .ok()?
        .checked_mul(1000)?
        .checked_add(ms.parse::<u64>().ok().filter(|m| *m < 1000)?)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// The include file for these routes: device routes on `interface` (see the module docs:
/// BIRD withdraws them when it goes down), de-preferred ones with their MED and prepends,
/// ones in graceful shutdown with the attributes they had plus the community and LOCAL_PREF
/// 0. It defines nothing that the rest of bird.conf refers to, so BIRD runs without it.
pub fn render(
    bgp: &Bgp,
    interface: &str,
    names: &BTreeMap<IpAddr, Vec<String>>,
    routes: &BTreeMap<IpAddr, Export>,
) -> String {
    let mut out = format!(
        "# Written by the anycast controller ([bgp] of its config): do not edit, every change\n\
         # rewrites it. bird.conf includes it with a pattern, so that BIRD starts (announcing\n\
         # nothing) while it does not exist:\n\
         #     include \"{}\";\n\
         # and each BGP channel that announces the VIPs exports with:\n",
        include_pattern(&bgp.include)
    );
    for line in EXPORT_FILTER.lines() {
        let _ = writeln!(out, "#     {line}");
    }
    out += "#\n# A route in graceful_shutdown keeps the attributes of the state it came from, with\n\
            # GRACEFUL_SHUTDOWN and LOCAL_PREF 0, until it is withdrawn (unix time):\n";
    for (address, export) in routes {
        let vips = names.get(address).map(|n| n.join(", ")).unwrap_or_default();
        let _ = write!(out, "# {} ({vips}): {}", prefix(*address), export.route.name());
        if let Some((from, until)) = export.shutdown {
            let _ = write!(out, " from {} until {}", from.name(), unix(until));
        }
        out += "\n";
    }
    let mut deprefer = String::new();
    if let Some(med) = bgp.deprefer_med {
        let _ = write!(deprefer, " bgp_med = {med};");
    }
    if let Some(asn) = bgp.local_as {
        for _ in 0..bgp.deprefer_prepend {
            let _ = write!(deprefer, " bgp_path.prepend({asn});");
        }
    }
    let (c, v) = GRACEFUL_SHUTDOWN;
    let shutdown = format!(" bgp_community.add(({c}, {v})); bgp_local_pref = 0;");
    let attributes = |route: Route| match route {
        Route::Deprefer => deprefer.clone(),
        _ => String::new(),
    };
    for (v4, protocol, channel) in [(true, PROTOCOL_V4, "ipv4"), (false, PROTOCOL_V6, "ipv6")] {
        let _ = write!(out, "\nprotocol static {protocol} {{\n    {channel};\n");
        for (address, export) in routes.iter().filter(|(a, _)| a.is_ipv4() == v4) {
            let net = prefix(*address);
            let attributes = match export.route {
                Route::Withdraw => {
                    let _ = writeln!(out, "    # {net} withdrawn");
                    continue;
                }
                Route::Shutdown => {
                    attributes(export.shutdown.map_or(Route::Announce, |(from, _)| from)) + &shutdown
                }
                route => attributes(route),
            };
            let _ = if attributes.is_empty() {
                writeln!(out, "    route {net} via \"{interface}\";")
            } else {
                writeln!(out, "    route {net} via \"{interface}\" {{{attributes} }};")
            };
        }
        out += "}\n";
    }
    out
}

/// The include pattern for bird.conf: the file name with a `*` before its extension, so
/// that a missing file matches nothing instead of failing BIRD's start.
pub fn include_pattern(include: &Path) -> String {
    let name = include.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let pattern = match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}*.{ext}"),
        None => format!("{name}*"),
    };
    include.with_file_name(pattern).display().to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("running {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("`{command}` did not answer within {BIRDC_TIMEOUT:?} (is BIRD hung?)")]
    Timeout { command: String },
    #[error("`{command}` failed: {answer}")]
    Refused { command: String, answer: String },
}

/// Writes `text` to `path` atomically and durably: a reader (BIRD) sees the old file or the
/// new one, also after a power loss. Mode 0644 whatever the umask: BIRD runs as another user
/// (`bird` on Debian) and must read it; it holds nothing secret. The temporary file starts
/// with a dot, so the include pattern never matches it.
pub fn write_include(path: &Path, text: &str) -> Result<(), BirdError> {
    crate::durable::replace(path, text.as_bytes(), Some(0o644))
        .map_err(|source| BirdError::Write { path: path.to_owned(), source })
}

/// `birdc -v -s SOCKET configure`: BIRD re-reads its config (with the include) and applies
/// the difference. Returns BIRD's answer. With `-v`, birdc prints each reply line with
/// BIRD's numeric code: 0xxx success, 8xxx run-time error (8002: the config does not
/// parse), 9xxx parse error of the command (BIRD's doc/reply_codes).
pub fn configure(bgp: &Bgp) -> Result<String, BirdError> {
    let command = format!("{} -v -s {} configure", bgp.birdc.display(), bgp.socket.display());
    let mut child = Command::new(&bgp.birdc)
        .arg("-v")
        .arg("-s")
        .arg(&bgp.socket)
        .arg("configure")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BirdError::Spawn { program: bgp.birdc.display().to_string(), source })?;
    let deadline = Instant::now() + BIRDC_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BirdError::Timeout { command });
            }
            Err(source) => return Err(BirdError::Spawn { program: command, source }),
        }
    };
    // The answers are a few lines: they fit the pipes, so reading after the exit is safe.
    let (mut stdout, mut stderr) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let answer =
        [stdout.trim(), stderr.trim()].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join("\n");
    let failed = answer.lines().any(|l| l.starts_with('8') || l.starts_with('9'));
    // Only the codes that say the new config is in force: 0003 "Reconfigured", 0018
    // "Reconfiguration confirmed", 0019 "Nothing to do". 0002 "Reading configuration" is
    // printed before every outcome, and 0004 "Reconfiguration in progress" (queued behind
    // another one) is not applied yet.
    let done = answer.lines().any(|l| ["0003", "0018", "0019"].iter().any(|c| l.starts_with(c)));
    if !status.success() || failed || !done {
        return Err(BirdError::Refused { command, answer: answer.replace('\n', " | ") });
    }
    Ok(answer)
}

/// Writes the include and has BIRD apply it. Refused, the previous file is put back (or
/// removed if there was none), so that the file says what BIRD holds: a restart resumes
/// that, and a graceful shutdown BIRD never had is not taken for one in progress.
pub fn apply(bgp: &Bgp, text: &str) -> Result<(), BirdError> {
    let before = std::fs::read(&bgp.include).ok();
    write_include(&bgp.include, text)?;
    configure(bgp).map(drop).inspect_err(|_| {
        let restored = match &before {
            Some(b) => crate::durable::replace(&bgp.include, b, Some(0o644)),
            None => std::fs::remove_file(&bgp.include),
        };
        if let Err(e) = restored {
            log::warn!("bgp: putting {} back after BIRD refused it: {e}", bgp.include.display());
        }
    })
}

/// `anycast detach`, first: every route the include file exports is put in graceful
/// shutdown for `graceful_shutdown` (one already in it keeps its time, if sooner), confirmed
/// by BIRD; when the last is due to be withdrawn. `None` (nothing written) when no route is
/// exported or graceful shutdown is off.
pub fn shut_down_all(config: &Config, bgp: &Bgp) -> Result<Option<SystemTime>, BirdError> {
    if bgp.graceful_shutdown.is_zero() {
        return Ok(None);
    }
    let held = std::fs::read_to_string(&bgp.include).map(|t| parse_states(&t)).unwrap_or_default();
    let names = addresses(config);
    let routes = shut_down(&held, &names, SystemTime::now() + bgp.graceful_shutdown);
    let last = routes.values().filter_map(|e| e.shutdown.map(|(_, at)| at)).max();
    if last.is_some() {
        apply(bgp, &render(bgp, interface(config), &names, &routes))?;
    }
    Ok(last)
}

/// The routes of `names` in graceful shutdown until `until` from the states `held`: what
/// is exported goes into it, what is in it keeps its time if sooner, the rest is withdrawn.
fn shut_down(
    held: &BTreeMap<String, Export>,
    names: &BTreeMap<IpAddr, Vec<String>>,
    until: SystemTime,
) -> BTreeMap<IpAddr, Export> {
    names
        .keys()
        .map(|a| {
            let export = match held.get(&prefix(*a)).copied() {
                Some(Export { route: Route::Shutdown, shutdown: Some((from, at)) }) => {
                    Export { route: Route::Shutdown, shutdown: Some((from, at.min(until))) }
                }
                Some(Export { route: from @ (Route::Announce | Route::Deprefer), .. }) => {
                    Export { route: Route::Shutdown, shutdown: Some((from, until)) }
                }
                _ => Route::Withdraw.into(),
            };
            (*a, export)
        })
        .collect()
}

/// `anycast detach`: every VIP withdrawn, confirmed by BIRD, before the data path goes.
pub fn withdraw_all(config: &Config, bgp: &Bgp) -> Result<(), BirdError> {
    let names = addresses(config);
    let routes = names.keys().map(|a| (*a, Route::Withdraw.into())).collect();
    apply(bgp, &render(bgp, interface(config), &names, &routes))
}

fn interface(config: &Config) -> &str {
    config.local.interfaces.first().map_or("", String::as_str)
}

/// The states an include file says BIRD holds: its `# PREFIX (NAMES): STATE` lines, a
/// graceful shutdown with `from STATE until UNIX_TIME`.
pub fn parse_states(text: &str) -> BTreeMap<String, Export> {
    let route = |name: &str| Route::ALL.into_iter().find(|r| r.name() == name);
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("# ")?;
            let (prefix, rest) = rest.split_once(' ')?;
            let mut state = rest.strip_prefix('(')?.rsplit_once("): ")?.1.split(' ');
            let export = match route(state.next()?)? {
                Route::Shutdown => match (state.next(), state.next(), state.next(), state.next()) {
                    (Some("from"), Some(from), Some("until"), Some(at)) => Export {
                        route: Route::Shutdown,
                        shutdown: Some((route(from).filter(|f| *f > Route::Shutdown)?, parse_unix(at)?)),
                    },
                    _ => return None,
                },
                r => r.into(),
            };
            (prefix.contains('/') && state.next().is_none()).then(|| (prefix.to_owned(), export))
        })
        .collect()
}

/// The speaker's memory between intervals.
#[derive(Default)]
pub struct Speaker {
    vips: BTreeMap<IpAddr, Hysteresis>,
    /// What the include file said at the start, per prefix: where each VIP resumes.
    resumed: BTreeMap<String, Export>,
    /// The include text BIRD confirmed last.
    applied: Option<String>,
    /// The last failure's message and how many in a row: a BIRD that stays down is logged
    /// once per new message, not once per interval.
    failing: Option<(String, u64)>,
    view: BgpView,
}

impl Speaker {
    /// A speaker that carries on from the include file the previous run left (BIRD runs
    /// with it): each VIP it names resumes its state, and BIRD is not asked to re-apply an
    /// identical file.
    pub fn resume(bgp: &Bgp) -> Speaker {
        let text = std::fs::read_to_string(&bgp.include).ok();
        Speaker {
            resumed: text.as_deref().map(parse_states).unwrap_or_default(),
            applied: text,
            ..Speaker::default()
        }
    }

    /// One interval: steps every VIP's state machine (one log line per transition) and
    /// returns the include text when it differs from what BIRD confirmed last.
    pub fn step(&mut self, config: &Config, bgp: &Bgp, signals: &SiteSignals) -> Option<String> {
        let names = addresses(config);
        let (wanted, why) = Route::wanted(signals);
        let pacing = Pacing::of(bgp);
        let now = SystemTime::now();
        self.vips.retain(|a, _| names.contains_key(a));
        self.view.vips.retain(|p, _| names.keys().any(|a| &prefix(*a) == p));
        self.view.withdraw_at.retain(|p, _| names.keys().any(|a| &prefix(*a) == p));
        for (address, vips) in &names {
            let label = prefix(*address);
            let vips = vips.join(", ");
            let entry = self.view.vips.entry(label.clone()).or_insert((wanted, BTreeMap::new()));
            let h = match self.vips.entry(*address) {
                std::collections::btree_map::Entry::Occupied(h) => h.into_mut(),
                std::collections::btree_map::Entry::Vacant(slot) => match self.resumed.remove(&label) {
                    // Resumed: the transitions from there take rise/fall like any other, a
                    // graceful shutdown the time it had left.
                    Some(was) => {
                        log::info!(
                            "bgp: {label} ({vips}): {} (as BIRD holds it; wanted: {})",
                            was.route.name(),
                            wanted.name()
                        );
                        entry.0 = was.route;
                        slot.insert(match was.shutdown {
                            Some((from, until)) => {
                                // At most the whole time from now: the clock may have jumped.
                                let until = until.min(now + bgp.graceful_shutdown);
                                self.view.withdraw_at.insert(label.clone(), until);
                                let left = until.duration_since(now).unwrap_or_default();
                                // The first step is now: one more, so that the withdraw comes
                                // at `until` or the interval after.
                                let left =
                                    (left.as_secs_f64() / bgp.interval.as_secs_f64()).ceil() as u32 + 1;
                                Hysteresis::shutting_down(from, left)
                            }
                            None => Hysteresis::new(was.route),
                        })
                    }
                    None => {
                        slot.insert(Hysteresis::new(wanted));
                        entry.0 = wanted;
                        log::info!("bgp: {label} ({vips}): {} ({why})", wanted.name());
                        continue;
                    }
                },
            };
            let from = h.current();
            let Some(to) = h.step(wanted, &pacing) else { continue };
            let how = match (from, to) {
                (_, Route::Shutdown) => {
                    let until = now + bgp.interval * pacing.graceful_shutdown;
                    self.view.withdraw_at.insert(label.clone(), until);
                    format!(
                        "{why}, {} interval{}; withdrawn in {:?}",
                        bgp.fall,
                        if bgp.fall == 1 { "" } else { "s" },
                        bgp.interval * pacing.graceful_shutdown
                    )
                }
                (Route::Shutdown, Route::Withdraw) => format!("{why}, after its graceful shutdown"),
                (Route::Shutdown, _) => format!("{why}: the withdraw cancelled"),
                _ => {
                    let n = if to > from { bgp.rise } else { bgp.fall };
                    format!("{why}, {n} interval{}", if n == 1 { "" } else { "s" })
                }
            };
            if to != Route::Shutdown {
                self.view.withdraw_at.remove(&label);
            }
            log::info!("bgp: {label} ({vips}): {} → {} ({how})", from.name(), to.name());
            entry.0 = to;
            *entry.1.entry(to).or_default() += 1;
        }
        let routes = self
            .vips
            .iter()
            .map(|(a, h)| {
                let until = self.view.withdraw_at.get(&prefix(*a)).copied().unwrap_or(now);
                (
                    *a,
                    Export { route: h.current(), shutdown: h.shutting_down_from().map(|from| (from, until)) },
                )
            })
            .collect();
        let text = render(bgp, interface(config), &names, &routes);
        self.view.in_sync = self.applied.as_ref() == Some(&text);
        (!self.view.in_sync).then_some(text)
    }

    /// BIRD's answer to applying `text`.
    pub fn applied(&mut self, text: String, outcome: Result<(), BirdError>, bgp: &Bgp) {
        match outcome {
            Ok(()) => {
                let after = match self.failing.take() {
                    Some((_, n)) => format!(", after {n} failed attempt{}", if n == 1 { "" } else { "s" }),
                    None => String::new(),
                };
                log::info!("bgp: BIRD applied {} ({}{after})", bgp.include.display(), self.summary());
                self.applied = Some(text);
                self.view.in_sync = true;
            }
            Err(e) => {
                self.view.apply_failures += 1;
                let message = e.to_string();
                match &mut self.failing {
                    Some((last, n)) if *last == message => {
                        *n += 1;
                        log::debug!("bgp: {message} (failure {n} in a row)");
                    }
                    _ => {
                        log::error!("bgp: {message}; retrying every {:?}", bgp.interval);
                        self.failing = Some((message, 1));
                    }
                }
            }
        }
    }

    fn summary(&self) -> String {
        let mut counts: BTreeMap<Route, usize> = BTreeMap::new();
        for h in self.vips.values() {
            *counts.entry(h.current()).or_default() += 1;
        }
        let parts: Vec<String> =
            Route::ALL.iter().filter_map(|r| counts.get(r).map(|n| format!("{n} {}", r.name()))).collect();
        if parts.is_empty() { "no VIPs".to_owned() } else { parts.join(", ") }
    }

    pub fn view(&self) -> &BgpView {
        &self.view
    }
}

/// The daemon's BGP task: every `[bgp] interval`, the site's signals → the VIPs' states →
/// BIRD, when something changed or the last apply failed. The signals come from the owner's
/// view (attached, drained) and the steering task's (overloaded, no headroom); the first
/// step waits for the steering task's first measurement. Follows config reloads: a changed
/// `[bgp]` re-renders (and re-applies if the routes' text changes); a removed one stops
/// driving BIRD, which keeps the routes last written.
pub async fn run(
    datapath: watch::Receiver<Arc<DataPathView>>,
    mut steering: watch::Receiver<Arc<SteeringView>>,
    view: watch::Sender<Option<Arc<BgpView>>>,
) {
    if steering.wait_for(|v| v.report.is_some()).await.is_err() {
        return;
    }
    let mut speaker: Option<Speaker> = None;
    loop {
        let dp = datapath.borrow().clone();
        let config = &dp.config;
        let Some(bgp) = config.bgp.clone() else {
            if speaker.take().is_some() {
                log::warn!("bgp: [bgp] removed from the config: BIRD keeps the routes last written");
                view.send_replace(None);
            }
            tokio::time::sleep(IDLE).await;
            continue;
        };
        let s = speaker.get_or_insert_with(|| Speaker::resume(&bgp));
        let signals = {
            let sv = steering.borrow();
            SiteSignals {
                attached: dp.attached,
                drained: config.local_site().is_some_and(|l| dp.drained.contains(&l.name)),
                overloaded: sv.overloaded,
                no_headroom: sv.no_headroom,
            }
        };
        if let Some(text) = s.step(config, &bgp, &signals) {
            let (b, t) = (bgp.clone(), text.clone());
            let outcome = tokio::task::spawn_blocking(move || apply(&b, &t)).await.unwrap_or_else(|e| {
                Err(BirdError::Spawn {
                    program: "birdc".into(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
            s.applied(text, outcome, &bgp);
        }
        view.send_replace(Some(Arc::new(s.view().clone())));
        tokio::time::sleep(bgp.interval).await;
    }
}

#[cfg(test)]
mod tests;
