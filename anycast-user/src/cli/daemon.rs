//! `anycast run --config FILE`: the controller daemon.
//!
//! Signals:
//! - SIGHUP re-reads the file; a bad file is refused (every problem logged with its line)
//!   and the running state is kept.
//! - SIGTERM and SIGINT stop the controller and *leave the data path running*: link and
//!   maps are pinned, so forwarding continues and the next start adopts them. This differs
//!   from the `run --iface` demo, which pins nothing and detaches on exit. `anycast detach`
//!   removes a pinned instance.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anycast_user::{
    api::server,
    bgp,
    config::Config,
    datapath::object,
    owner::{Controller, Shared, Started, lock},
    steering,
};
use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

/// Counter samples for rates (`anycast status`) and the flow-table count.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// `object`: an XDP object file to run instead of the embedded one (hidden `--object`).
pub async fn run(path: &Path, object: Option<&Path>) -> Result<()> {
    let config = Config::load(path)?;
    let object = match object {
        Some(file) => std::fs::read(file).with_context(|| format!("reading {}", file.display()))?,
        None => object::ANYCAST.to_vec(),
    };
    let listen = config.admin.listen;
    let pin_dir = config.datapath.pin_dir.clone();
    // The listener first: when the address is taken (typically by a daemon already running
    // on this pin directory), fail before touching the data path, whose maps the running
    // daemon's reconciler believes it knows.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen} ([admin] listen)"))?;
    let peer_listener = match config.admin.peer_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} ([admin] peer_listen)"))?,
        ),
        None => None,
    };
    let Started { controller, links, applied } =
        Controller::start_object(config, &object).context("starting the data path")?;
    for (iface, outcome) in links {
        log::info!("{iface}: {outcome}");
    }
    log::info!("maps reconciled: {} writes, {} Maglev tables", applied.writes, applied.tables);
    let shared: Shared = Arc::new(Mutex::new(controller));

    log::info!("metrics and admin on http://{listen}/metrics");
    let app = server::router(shared.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            log::error!("HTTP server: {e}");
        }
    });
    if let Some(peer_listener) = peer_listener {
        let app = server::peer_router(shared.clone());
        log::info!("load reports for peers on http://{}/load", peer_listener.local_addr()?);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(peer_listener, app).await {
                log::error!("peer HTTP server: {e}");
            }
        });
    }
    tokio::spawn(steering::task::run(shared.clone()));
    // Idle without [bgp]; follows SIGHUP reloads that add, change or remove it.
    tokio::spawn(bgp::run(shared.clone()));

    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = lock(&shared).sample() {
                    log::warn!("sampling counters: {e}");
                }
            }
            _ = sighup.recv() => reload(&shared, path),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    log::info!(
        "controller stopped; the data path keeps running (pinned under {}); `anycast detach` removes it",
        pin_dir.display()
    );
    Ok(())
}

fn reload(shared: &Shared, path: &Path) {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            log::error!("SIGHUP: config refused, the running state is kept:\n{e}");
            return;
        }
    };
    let started = std::time::Instant::now();
    match lock(shared).reload(config) {
        Ok(a) => log::info!(
            "SIGHUP: config applied in {:.1} ms: {} writes, {} Maglev tables",
            started.elapsed().as_secs_f64() * 1e3,
            a.writes,
            a.tables
        ),
        Err(e) => log::error!("SIGHUP: {e}; the running state is kept"),
    }
}
