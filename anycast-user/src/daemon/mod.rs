//! `anycast run --config FILE`: the daemon, wired together (ARCHITECTURE.md).
//!
//! Start order, each step refusing before the next one touches anything:
//! 1. signal handlers, first thing: a SIGHUP that comes during the start (config
//!    management often starts and then reloads) is queued, not fatal;
//! 2. the config, and the pin directory's lock: a second daemon on the same directory
//!    refuses here, before it touches the maps;
//! 3. the listeners (Unix admin socket, TCP metrics, peer): a taken address refuses here;
//! 4. the data path loaded, attached and reconciled (the owner, on its own thread);
//! 5. the tasks, under supervision; `READY=1` to systemd.
//!
//! Then: SIGHUP re-reads the file (a bad one is refused, the running state kept); SIGTERM
//! and SIGINT stop the controller and *leave the data path running* (link and maps are
//! pinned, the next start adopts them). If any task ends, the daemon exits non-zero so that
//! systemd restarts it: the data path forwards meanwhile. `WATCHDOG=1` is sent only while
//! the owner answers and the steering task ticks, so a hung loop is restarted too.

pub mod preflight;
pub mod sampler;

use std::{
    io,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::JoinSet,
};

use crate::{
    api::{
        Handles,
        listener::{self, Gate},
        server,
    },
    bgp,
    config::{Config, ConfigError},
    datapath::{
        counters::{Counters, Samples},
        loader::{self, LoaderError},
        maps::MapsError,
        pin_lock::{LockError, PinDirLock},
    },
    model::{NextHops, SteeringView},
    neighbours,
    owner::{Owner, OwnerError, Started, actor},
    steering::{
        self,
        peers::{KeyError, PeerKey, Published},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("installing the signal handlers: {0}")]
    Signals(io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("reading the XDP object {path}: {source}")]
    Object { path: PathBuf, source: io::Error },
    #[error(transparent)]
    PinDir(#[from] LoaderError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("listening on {what} ({where_}): {source}")]
    Listen { what: &'static str, where_: String, source: io::Error },
    #[error("another daemon answers on {0}: two daemons cannot share an admin socket")]
    SocketInUse(PathBuf),
    #[error("[admin] socket_group {0:?}: no such group")]
    NoGroup(String),
    #[error("starting the data path: {0}")]
    Start(#[from] OwnerError),
    #[error("starting the data path: {0}")]
    StartPanicked(tokio::task::JoinError),
    #[error("opening the counters: {0}")]
    Counters(#[from] MapsError),
    #[error("starting the owner thread: {0}")]
    Thread(io::Error),
    #[error(
        "refusing to start: an interface does not forward what the remote sites need (see above); fix it, or start \
         with --allow-no-forwarding to run anyway"
    )]
    NoForwarding,
    #[error("the {0} task ended; exiting so that the service manager restarts the controller")]
    TaskEnded(&'static str),
}

/// How long after a task's end the supervisor looks for a panic that caused it.
const CAUSE_WINDOW: Duration = Duration::from_millis(200);

/// Counter samples for rates (`anycast status`) and the flow-table count.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// An XDP object file to run instead of the embedded one (hidden `--object`).
    pub object: Option<PathBuf>,
    /// Start even if an interface does not forward what the remote sites need (warn).
    pub allow_no_forwarding: bool,
}

/// Runs the daemon until SIGTERM/SIGINT (`Ok`) or until a task dies (`Err`).
pub async fn run(config_path: &Path, options: &Options) -> Result<(), DaemonError> {
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;

    let config = Config::load(config_path)?;
    let findings = preflight::forwarding_findings(&config);
    for f in &findings {
        log::warn!("{}; fix: {}", f.problem, f.fix);
    }
    if !findings.is_empty() && !options.allow_no_forwarding {
        return Err(DaemonError::NoForwarding);
    }
    let object = options.object.as_deref();
    let object = match object {
        Some(file) => {
            std::fs::read(file).map_err(|source| DaemonError::Object { path: file.into(), source })?
        }
        None => crate::datapath::object::ANYCAST.to_vec(),
    };
    let pin_dir = loader::resolve_pin_dir(&config.datapath.pin_dir)?;
    let lock = PinDirLock::acquire(&pin_dir)?;
    let key = config.admin.peer_key_file.as_deref().map(PeerKey::load).transpose()?;
    let listen = |what, addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| DaemonError::Listen {
            what,
            where_: addr.to_string(),
            source,
        })
    };
    let metrics_listener = listen("[admin] listen", config.admin.listen).await?;
    let peer_listener = match config.admin.peer_listen {
        Some(addr) => Some(listen("[admin] peer_listen", addr).await?),
        None => None,
    };
    let admin_listener = bind_socket(&config.admin.socket, config.admin.socket_group.as_deref()).await?;

    let socket = config.admin.socket.clone();
    let listen_addr = config.admin.listen;
    let Started { owner, links, applied } =
        tokio::task::spawn_blocking(move || Owner::start(config, &object))
            .await
            .map_err(DaemonError::StartPanicked)??;
    for (iface, outcome) in links {
        log::info!("{iface}: {outcome}");
    }
    log::info!("maps reconciled: {} writes, {} Maglev tables", applied.writes, applied.tables);
    let counters = Arc::new(Counters::open(owner.pin_dir())?);
    let actor::Thread { handle: owner, view: datapath, ended } =
        actor::spawn(owner).map_err(DaemonError::Thread)?;

    let (steering_tx, steering_rx) = watch::channel(Arc::new(SteeringView::default()));
    let (report_tx, report_rx) = watch::channel(Arc::new(Published::default()));
    let (bgp_tx, bgp_rx) = watch::channel(None);
    let (samples_tx, samples_rx) = watch::channel(Arc::new(Samples::default()));
    let (next_hops_tx, next_hops_rx) = watch::channel(Arc::new(NextHops::default()));
    let metrics_gate = Gate::new("metrics", listener::TCP);
    let peer_gate = peer_listener.as_ref().map(|_| Gate::new("peer", listener::TCP));
    let admin_gate = Gate::new("admin", listener::ADMIN);
    let handles = Handles {
        owner: owner.clone(),
        datapath: datapath.clone(),
        steering: steering_rx.clone(),
        bgp: bgp_rx,
        samples: samples_rx,
        next_hops: next_hops_rx,
        report: report_rx,
        counters: counters.clone(),
        gates: [admin_gate.clone(), metrics_gate.clone()].into_iter().chain(peer_gate.clone()).collect(),
        config_path: config_path.to_owned(),
    };

    let mut tasks = Tasks::default();
    tasks.spawn("data-path owner", async move {
        let _ = ended.await;
    });
    let app = server::admin_router(handles.clone());
    tasks.spawn("admin API", listener::serve(admin_listener, app, admin_gate));
    log::info!("admin API on {} (unix socket)", socket.display());
    let app = server::metrics_router(handles.clone());
    tasks.spawn("metrics server", listener::serve(metrics_listener, app, metrics_gate));
    log::info!("metrics on http://{listen_addr}/metrics");
    if let (Some(peer_listener), Some(peer_gate)) = (peer_listener, peer_gate) {
        if let Ok(addr) = peer_listener.local_addr() {
            log::info!("load reports for peers on http://{addr}/load");
        }
        let app = server::peer_router(handles.clone());
        tasks.spawn("peer API", listener::serve(peer_listener, app, peer_gate));
    }
    let (installer, install_handle) =
        steering::install::channels(owner.clone(), datapath.clone(), key.clone());
    let inputs = steering::task::Inputs {
        installer: install_handle,
        datapath: datapath.clone(),
        counters: counters.clone(),
        key,
        view: steering_tx,
        report: report_tx,
    };
    tasks.spawn("installer", steering::install::run(installer));
    tasks.spawn("steering", steering::task::run(inputs));
    // Idle without [bgp]; follows reloads that add, change or remove it.
    tasks.spawn("BGP", bgp::run(datapath.clone(), steering_rx.clone(), bgp_tx));
    tasks.spawn("neighbour keeper", neighbours::run(datapath.clone(), next_hops_tx));
    tasks.spawn("sampler", sampler::run(counters, datapath.clone(), samples_tx, SAMPLE_EVERY));

    notify(&[sd_notify::NotifyState::Ready]);
    log::info!("ready: data path attached and reconciled");
    let watchdog = sd_notify::watchdog_enabled();
    let mut pet = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| w / 2));
    let mut last_ticks = 0;
    let result = loop {
        tokio::select! {
            name = tasks.first_ended() => break Err(DaemonError::TaskEnded(name)),
            _ = sighup.recv() => {
                let h = handles.clone();
                // The reload waits for the owner: run it aside, so that signals keep flowing.
                tokio::spawn(async move {
                    let _ = server::reload_file(&h, "SIGHUP").await;
                });
            }
            _ = pet.tick(), if watchdog.is_some() => {
                let ticks = steering_rx.borrow().ticks;
                let period = watchdog.unwrap_or_default() / 2;
                let owner_alive = tokio::time::timeout(period, owner.ping()).await.is_ok_and(|r| r.is_ok());
                if owner_alive && ticks > last_ticks {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                } else {
                    log::error!(
                        "watchdog: {}; not telling systemd we are alive",
                        if owner_alive { "the steering task has not ticked" } else { "the data-path owner does not answer" }
                    );
                }
                last_ticks = ticks;
            }
            _ = sigterm.recv() => break Ok(()),
            _ = sigint.recv() => break Ok(()),
        }
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    tasks.set.abort_all();
    let _ = std::fs::remove_file(&socket);
    log::info!(
        "controller stopped; the data path keeps running (pinned under {}); `anycast detach` removes it",
        pin_dir.display()
    );
    drop(lock);
    result
}

/// Tells systemd (when it started us with a notify socket); a failure is only logged.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        log::warn!("sd_notify: {e}");
    }
}

/// The admin socket: its directory made, a stale file of a dead daemon replaced (one that
/// answers is refused), mode 0660 and group `group`.
async fn bind_socket(path: &Path, group: Option<&str>) -> Result<UnixListener, DaemonError> {
    let err =
        |source| DaemonError::Listen { what: "[admin] socket", where_: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(DaemonError::SocketInUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    if let Some(name) = group {
        let gid = nix::unistd::Group::from_name(name)
            .map_err(|e| err(e.into()))?
            .ok_or_else(|| DaemonError::NoGroup(name.to_owned()))?
            .gid;
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| err(e.into()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

/// The daemon's tasks, each under its name: none of them is meant to end, and the one that
/// does (or panics) is named when it ends the daemon.
#[derive(Default)]
struct Tasks {
    set: JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Tasks {
    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.set.spawn(task).id();
        self.names.insert(id, name);
    }

    /// The name of the task whose end ends the daemon (a panic is logged). A task that ends
    /// because another died (the installer, when the steering task's channel closes) may be
    /// joined before it: a panic joined within [`CAUSE_WINDOW`] of the first end is the
    /// cause and is named instead.
    async fn first_ended(&mut self) -> &'static str {
        let Some(first) = self.set.join_next_with_id().await else { return "last" };
        let mut ended = vec![first];
        if ended[0].is_ok() {
            let more = async {
                while let Some(r) = self.set.join_next_with_id().await {
                    let panicked = r.is_err();
                    ended.push(r);
                    if panicked {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(CAUSE_WINDOW, more).await;
        }
        let mut name = None;
        for r in &ended {
            if let Err(e) = r {
                let task = self.names.get(&e.id()).copied().unwrap_or("unknown");
                log::error!("the {task} task panicked: {e}");
                name = name.or(Some(task));
            }
        }
        let first = match &ended[0] {
            Ok((id, ())) => *id,
            Err(e) => e.id(),
        };
        name.unwrap_or_else(|| self.names.get(&first).copied().unwrap_or("unknown"))
    }
}
