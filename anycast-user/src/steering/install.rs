//! The installer: the one task that hands the steering loop's weights to the data-path
//! owner. A site of one host installs each decision at once. In a site of several hosts
//! every host (the deciding one included) installs each decision of the deciding host at
//! the moment it names, so that their Maglev tables are alike at every instant; a host
//! that follows another polls it every [`site_poll`] for its decisions.
//!
//! Apart from the steering task because that one waits on the network every tick (peer
//! polls up to `peer_timeout`, health probes up to their timeout): a decision due during
//! such a wait would be installed late on one host and on time on the others. Here
//! nothing waits but the owner's apply.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
    time::{Instant, sleep, sleep_until},
};

use super::{
    peers::{self, Expect, PeerError, PeerKey},
    policy,
    schedule::Schedule,
    timing::{stale, tick_of, unix_ms},
};
use crate::{
    config::Config,
    model::{DataPathView, LoadReport, SiteDecision},
    owner::{OwnerError, actor::OwnerHandle},
    reconcile::Dynamic,
};

/// How often a host polls its site's deciding host, and how long it waits for it: a
/// quarter of the tick (the hosts of a site are near each other), never below 10 ms.
pub fn site_poll(config: &Config) -> Duration {
    (tick_of(config) / 4).max(Duration::from_millis(10))
}

/// How far ahead a site's decision is to be installed: a decision published at `t` is
/// fetched by the poll that starts by `t + p` and ends by `t + 2p`, or else (that one
/// lost) by the next, which ends by `t + 3p` — `p` being [`site_poll`]. A report carries
/// every decision not installed yet, so one lost poll loses no decision. The hosts'
/// clocks must agree to well within this (NTP on a LAN: a few ms).
pub fn lead_time(config: &Config) -> Duration {
    3 * site_poll(config)
}

/// What the steering task asks for.
pub enum Command {
    /// Install at once (a site of one host), logged with `note`.
    Now { dynamic: Dynamic, note: String },
    /// A decision of this site's deciding host (this one's, or polled from it), to be
    /// installed at its moment.
    Decided(SiteDecision),
}

/// The host of this site whose decisions this one follows.
#[derive(Clone, Debug, PartialEq)]
pub struct Leader {
    pub site: String,
    pub host: String,
    pub addr: SocketAddr,
    /// The site's capacity in our config (a report never claims more).
    pub capacity: f64,
}

/// The steering task's ends of the installer's channels.
pub struct Handle {
    pub commands: mpsc::Sender<Command>,
    /// `None` while this host decides (or its site has one host).
    pub leader: watch::Sender<Option<Leader>>,
    /// Changes applied since the start.
    pub changes: watch::Receiver<u64>,
}

/// What the installer works with.
pub struct Inputs {
    pub owner: OwnerHandle,
    pub datapath: watch::Receiver<Arc<DataPathView>>,
    pub key: Option<PeerKey>,
    commands: mpsc::Receiver<Command>,
    leader: watch::Receiver<Option<Leader>>,
    changes: watch::Sender<u64>,
}

/// The installer's inputs and the steering task's handle on it.
pub fn channels(
    owner: OwnerHandle,
    datapath: watch::Receiver<Arc<DataPathView>>,
    key: Option<PeerKey>,
) -> (Inputs, Handle) {
    let (commands_tx, commands) = mpsc::channel(16);
    let (leader_tx, leader) = watch::channel(None);
    let (changes, changes_rx) = watch::channel(0);
    let inputs = Inputs { owner, datapath, key, commands, leader, changes };
    (inputs, Handle { commands: commands_tx, leader: leader_tx, changes: changes_rx })
}

type Polled = (Leader, Result<peers::Fetched, PeerError>);

/// Runs until the steering task or the owner is gone.
pub async fn run(mut i: Inputs) {
    let mut schedule = Schedule::default();
    let mut polls: JoinSet<Polled> = JoinSet::new();
    let mut next_poll = Instant::now();
    // The (epoch, seq) of the deciding host's last report taken in, and whose.
    let mut last: Option<(String, (u64, u64))> = None;
    loop {
        let due = schedule.next_at().map(|at| Duration::from_millis(at.saturating_sub(unix_ms())));
        let leader = i.leader.borrow().clone();
        let result = tokio::select! {
            cmd = i.commands.recv() => match cmd {
                None => return,
                Some(Command::Now { dynamic, note }) => install(&i, dynamic, &note, worth).await,
                Some(Command::Decided(d)) => {
                    schedule.push(d);
                    Ok(())
                }
            },
            _ = sleep_until(next_poll), if leader.is_some() && polls.is_empty() => {
                let period = site_poll(&i.datapath.borrow().config);
                next_poll = Instant::now() + period;
                if let Some(l) = leader {
                    polls.spawn(async move {
                        let fetched = peers::fetch(l.addr, period).await;
                        (l, fetched)
                    });
                }
                Ok(())
            }
            Some(joined) = polls.join_next() => {
                match joined {
                    // A poll of a host no longer followed is dropped.
                    Ok((polled, fetched)) if leader.as_ref() == Some(&polled) => {
                        let seen = last.as_ref().filter(|(h, _)| *h == polled.host).map(|(_, s)| *s);
                        match fetched.and_then(|f| accepted(&i, &polled, &f, seen)) {
                            Ok(report) => {
                                last = Some((polled.host.clone(), (report.epoch, report.seq)));
                                for d in report.decisions {
                                    schedule.push(d);
                                }
                            }
                            // The steering task's own polls of it log and count failures.
                            Err(e) => log::debug!("steering: following {}: {e}", polled.host),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => log::error!("steering: a poll of the deciding host failed: {e}"),
                }
                Ok(())
            }
            _ = sleep(due.unwrap_or(Duration::ZERO)), if due.is_some() => {
                activate(&i, &mut schedule).await
            }
            changed = i.leader.changed() => match changed {
                // The steering task is gone.
                Err(_) => return,
                Ok(()) => Ok(()),
            },
        };
        if let Err(OwnerError::Gone) = result {
            return;
        }
    }
}

/// The deciding host's report, checked as any peer's.
fn accepted(
    i: &Inputs,
    leader: &Leader,
    f: &peers::Fetched,
    seen: Option<(u64, u64)>,
) -> Result<LoadReport, PeerError> {
    let max_age = stale(&i.datapath.borrow().config);
    let expect = Expect {
        site: &leader.site,
        host: Some(&leader.host),
        capacity: leader.capacity,
        key: i.key.as_ref(),
        now_ms: unix_ms(),
        max_age,
    };
    peers::accept(f, &expect, seen)
}

/// Installs the latest decision that is due (the earlier ones are past).
async fn activate(i: &Inputs, schedule: &mut Schedule) -> Result<(), OwnerError> {
    let now = unix_ms();
    let Some(d) = schedule.take_due(now) else { return Ok(()) };
    let late = now.saturating_sub(d.at);
    if late > site_poll(&i.datapath.borrow().config).as_millis() as u64 {
        log::warn!("steering: installing {}'s decision {late} ms late", d.by);
    }
    let note = format!(" (decided by {})", d.by);
    // Exactly as decided, however small the change: whether a change is worth a rebuild
    // was the deciding host's call (`worth`, against what it decided before), and a host
    // that judged it against its own tables — one just restarted holds older ones — would
    // end up with another table than its site's.
    install(i, Dynamic { weights: d.weights, down: d.down }, &note, |a, b| !same(a, b)).await
}

/// Hands `dynamic` to the owner if `wanted` says so against what is applied.
async fn install(
    i: &Inputs,
    dynamic: Dynamic,
    note: &str,
    wanted: fn(&Dynamic, &Dynamic) -> bool,
) -> Result<(), OwnerError> {
    let dp = i.datapath.borrow().clone();
    let applied = Dynamic { weights: dp.load_weights.clone(), down: dp.down.clone() };
    if !wanted(&dynamic, &applied) {
        return Ok(());
    }
    match i.owner.apply(dynamic.clone(), dp.generation).await {
        Ok(a) => {
            i.changes.send_modify(|n| *n += 1);
            log::info!("{}", describe(&dynamic, note, a.writes));
            Ok(())
        }
        // A reload came in between: the next tick decides against the new config.
        Err(OwnerError::Stale(..)) => Ok(()),
        Err(OwnerError::Gone) => Err(OwnerError::Gone),
        Err(e) => {
            log::error!("steering: applying weights: {e}; the previous weights stay");
            Ok(())
        }
    }
}

/// Whether `next` is worth a Maglev rebuild over `applied`.
pub fn worth(next: &Dynamic, applied: &Dynamic) -> bool {
    next.down != applied.down
        || match (&next.weights, &applied.weights) {
            (Some(a), Some(b)) => policy::worth_applying(pairs(a, b)),
            (a, b) => a.is_some() != b.is_some(),
        }
}

/// Whether `a` and `b` make the same tables.
fn same(a: &Dynamic, b: &Dynamic) -> bool {
    a.down == b.down
        && match (&a.weights, &b.weights) {
            (Some(x), Some(y)) => pairs(x, y).all(|(p, q)| p == q),
            (x, y) => x.is_none() && y.is_none(),
        }
}

/// The two weights of every site named in either (a site missing from one gets 0 there).
fn pairs<'a>(
    a: &'a BTreeMap<String, u32>,
    b: &'a BTreeMap<String, u32>,
) -> impl Iterator<Item = (u32, u32)> + 'a {
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let weight = |m: &BTreeMap<String, u32>, n: &String| m.get(n).copied().unwrap_or(0);
    names.into_iter().map(move |n| (weight(a, n), weight(b, n)))
}

/// The log line of one applied change.
fn describe(d: &Dynamic, note: &str, writes: usize) -> String {
    let mut line = String::from("steering:");
    if let Some(w) = &d.weights {
        let list: Vec<String> = w.iter().map(|(n, w)| format!("{n}={w}")).collect();
        line += &format!(" weights {}", list.join(" "));
    }
    line += note;
    if !d.down.is_empty() {
        line += &format!(" down: {}", d.down.iter().cloned().collect::<Vec<_>>().join(","));
    }
    line + &format!("; {writes} map writes")
}
