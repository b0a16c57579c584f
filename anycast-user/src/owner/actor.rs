//! The owner on its own thread. Map writes are blocking syscalls (a Maglev swap waits for
//! running programs, ~8 ms per batch), so they never run on the async runtime's workers:
//! the thread takes one command at a time from a channel, applies it and publishes the new
//! [`DataPathView`]. Between commands it re-checks the links. The thread ends when every
//! [`OwnerHandle`] is gone, or by a panic; [`Thread::ended`] tells the supervisor either way.

use std::{
    sync::{Arc, mpsc},
    time::Duration,
};

use tokio::sync::{oneshot, watch};

use super::{
    Owner, OwnerError,
    sweep::{Found, Job},
};
use crate::{
    config::Config,
    datapath::maps::MapsError,
    model::DataPathView,
    reconcile::{Applied, Dynamic, preview::Preview},
};

/// How often the owner re-checks that the program still runs on every interface when no
/// command comes.
const LINK_CHECK: Duration = Duration::from_secs(1);

type Reply<T> = oneshot::Sender<Result<T, OwnerError>>;

enum Command {
    Apply {
        dynamic: Dynamic,
        generation: u64,
        reply: Reply<Applied>,
    },
    Reload {
        config: Box<Config>,
        reply: Reply<Applied>,
    },
    Drain {
        site: String,
        drained: bool,
        reply: Reply<u32>,
    },
    Preview {
        config: Box<Config>,
        reply: Reply<Preview>,
    },
    /// A reload refused before it reached the owner (the file does not parse).
    Refused {
        message: String,
    },
    Ping {
        reply: Reply<()>,
    },
}

/// The way to the owner: cheap to clone, one per task or handler.
#[derive(Clone)]
pub struct OwnerHandle {
    tx: mpsc::Sender<Command>,
}

/// The running thread: its published view, and a future that completes when it ends.
pub struct Thread {
    pub handle: OwnerHandle,
    pub view: watch::Receiver<Arc<DataPathView>>,
    pub ended: oneshot::Receiver<()>,
}

/// Moves `owner` to a thread of its own.
pub fn spawn(owner: Owner) -> std::io::Result<Thread> {
    let (tx, rx) = mpsc::channel();
    let (view_tx, view) = watch::channel(Arc::new(owner.view()));
    let (ended_tx, ended) = oneshot::channel();
    std::thread::Builder::new().name("anycast-owner".into()).spawn(move || {
        // Dropped when the thread ends, by a return or by a panic unwinding.
        let _ended = ended_tx;
        run(owner, rx, view_tx);
    })?;
    Ok(Thread { handle: OwnerHandle { tx }, view, ended })
}

fn run(mut owner: Owner, rx: mpsc::Receiver<Command>, view: watch::Sender<Arc<DataPathView>>) {
    // The sweep of the check flags in flight, if any: its result comes back here.
    let mut sweeping: Option<mpsc::Receiver<Result<Found, MapsError>>> = None;
    loop {
        match rx.recv_timeout(LINK_CHECK) {
            Ok(command) => handle(&mut owner, command, &view),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if let Some(result) = sweeping.as_ref().map(mpsc::Receiver::try_recv) {
            match result {
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    log::warn!("check flags: the sweep ended without a result");
                    sweeping = None;
                }
                Ok(found) => {
                    sweeping = None;
                    swept(&mut owner, found, &view);
                }
            }
        }
        if sweeping.is_none() {
            match owner.sweep_job() {
                Ok(Some(job)) => sweeping = sweep(job),
                Ok(None) => {}
                Err(e) => log::warn!("check flags: sweep failed: {e}"),
            }
        }
        let links_changed = owner.check_links();
        if links_changed && !owner.attached {
            log::warn!(
                "the data path is not attached on every configured interface (a link is missing or defunct)"
            );
        }
        if links_changed {
            publish(&owner, &view);
        }
    }
}

/// Runs a sweep on a thread of its own; its result comes back on the channel returned.
fn sweep(job: Job) -> Option<mpsc::Receiver<Result<Found, MapsError>>> {
    let (tx, rx) = mpsc::channel();
    match std::thread::Builder::new().name("anycast-sweep".into()).spawn(move || {
        // The owner may have ended meanwhile: nobody to tell.
        let _ = tx.send(job.run());
    }) {
        Ok(_) => Some(rx),
        Err(e) => {
            log::warn!("check flags: starting the sweep: {e}");
            None
        }
    }
}

/// Writes what a sweep found.
fn swept(owner: &mut Owner, found: Result<Found, MapsError>, view: &watch::Sender<Arc<DataPathView>>) {
    match found.map_err(OwnerError::from).and_then(|f| owner.swept(f)) {
        Ok(s) if s.cleared > 0 => {
            log::info!(
                "check flags: cleared {} of {} flagged buckets ({} kept by pins that may be alive; {} pins read in {:.0} ms, off the owner's thread; written in {:.0} ms)",
                s.cleared,
                s.flagged,
                s.kept_by_pins,
                s.pins,
                s.took.as_secs_f64() * 1e3,
                s.wrote.as_secs_f64() * 1e3
            );
            publish(owner, view);
        }
        // Every sweep_interval while a bucket is flagged: at info it would repeat forever
        // for a bucket that a long-lived pin keeps.
        Ok(s) => log::debug!(
            "check flags: none of {} flagged buckets cleared ({} kept by pins that may be alive; {} pins read in {:.0} ms, off the owner's thread)",
            s.flagged,
            s.kept_by_pins,
            s.pins,
            s.took.as_secs_f64() * 1e3
        ),
        Err(e) => log::warn!("check flags: sweep failed: {e}"),
    }
}

/// Every command may have changed something; publishing an equal view costs one Arc swap.
fn publish(owner: &Owner, view: &watch::Sender<Arc<DataPathView>>) {
    view.send_replace(Arc::new(owner.view()));
}

/// Applies `command`, publishes the view it leaves, and only then replies: whoever reads a
/// view after a command's answer (`anycast drain X && anycast status`) sees the change.
fn handle(owner: &mut Owner, command: Command, view: &watch::Sender<Arc<DataPathView>>) {
    // A reply nobody waits for any more (the HTTP client went away) is dropped: the change
    // itself is done and published.
    fn answer<T>(
        owner: &Owner,
        view: &watch::Sender<Arc<DataPathView>>,
        reply: Reply<T>,
        result: Result<T, OwnerError>,
    ) {
        publish(owner, view);
        let _ = reply.send(result);
    }
    match command {
        Command::Apply { dynamic, generation, reply } => {
            let result = owner.set_dynamic(dynamic, generation);
            answer(owner, view, reply, result);
        }
        Command::Reload { config, reply } => {
            let result = owner.reload(*config);
            answer(owner, view, reply, result);
        }
        Command::Drain { site, drained, reply } => {
            let result = owner.set_drained(&site, drained);
            if let Ok(weight) = &result {
                log::info!(
                    "site {site}: {} (weight {weight})",
                    if drained { "drained" } else { "undrained" }
                );
            }
            answer(owner, view, reply, result);
        }
        Command::Preview { config, reply } => {
            let result = owner.preview(&config);
            answer(owner, view, reply, result);
        }
        Command::Refused { message } => {
            owner.refused(message);
            publish(owner, view);
        }
        Command::Ping { reply } => answer(owner, view, reply, Ok(())),
    }
}

impl OwnerHandle {
    async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, OwnerError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(command(reply)).map_err(|_| OwnerError::Gone)?;
        answer.await.map_err(|_| OwnerError::Gone)?
    }

    /// Applies run-time weights and sites down decided against config `generation`.
    pub async fn apply(&self, dynamic: Dynamic, generation: u64) -> Result<Applied, OwnerError> {
        self.ask(|reply| Command::Apply { dynamic, generation, reply }).await
    }

    pub async fn reload(&self, config: Config) -> Result<Applied, OwnerError> {
        self.ask(|reply| Command::Reload { config: Box::new(config), reply }).await
    }

    pub async fn drain(&self, site: String, drained: bool) -> Result<u32, OwnerError> {
        self.ask(|reply| Command::Drain { site, drained, reply }).await
    }

    pub async fn preview(&self, config: Config) -> Result<Preview, OwnerError> {
        self.ask(|reply| Command::Preview { config: Box::new(config), reply }).await
    }

    /// Records a reload that was refused before it reached the owner (a file with errors),
    /// so that the published outcome says the file and the running state differ.
    pub fn refused(&self, message: String) {
        // Gone: the daemon is stopping, nobody will read the outcome.
        let _ = self.tx.send(Command::Refused { message });
    }

    /// Answers once the owner has taken every command sent before: it is alive and not stuck.
    pub async fn ping(&self) -> Result<(), OwnerError> {
        self.ask(|reply| Command::Ping { reply }).await
    }
}
