//! The daemon's three HTTP surfaces (axum), each serving only what its audience needs:
//! - [`admin_router`], on a Unix socket (`[admin] socket`, mode 0660, group
//!   `[admin] socket_group`): the operator's commands. The socket file's permissions are the
//!   access control, as for BIRD's and systemd's control sockets: no TCP port, so neither
//!   another local user nor a browser (DNS rebinding) can reach it.
//! - [`metrics_router`], on TCP (`[admin] listen`): `GET /metrics`, read-only; any other
//!   method or path is refused.
//! - [`peer_router`], on TCP (`[admin] peer_listen`): `GET /load` for the sibling sites,
//!   signed (`steering/peers.rs`).
//!
//! No handler waits for the data-path owner unless it asks for a change: reads come from
//! the published views and the read-only counters.

use std::time::Duration;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, FromRequest as _, Path, Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};

use super::{
    Handles,
    metrics::{self, ListenerCounts, Process, Scrape},
    status,
};
use crate::{
    config::Config,
    datapath::counters::Snapshot,
    owner::OwnerError,
    reconcile::{Applied, preview::Preview},
    steering::peers::SIGNATURE_HEADER,
};

/// Reply of the drain endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReply {
    pub site: String,
    pub drained: bool,
    pub weight: u32,
}

/// Reply of `POST /reload`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    pub writes: usize,
    pub tables: usize,
}

/// A request that takes longer than this is answered 503 (the command still runs to its
/// end in the owner): the CLI then says the daemon is busy instead of waiting forever.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The admin API's largest request body (`POST /plan`'s config file; a larger one is
/// answered 413). A config at the maps' limits (1024 sites, 256 VIPs) written out is a few
/// hundred KB.
pub const ADMIN_BODY_LIMIT: usize = 1 << 20;

/// How long a request body may take to arrive (`POST /plan`; answered 408 past it). The
/// largest takes milliseconds over the local socket: past this the client is stuck or
/// trickling on purpose, and would hold one of the socket's few slots until the
/// connection's own bound (`COMMAND_TIMEOUT` + 10 s).
pub const ADMIN_BODY_TIMEOUT: Duration = Duration::from_secs(5);

pub fn admin_router(h: Handles) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/load", get(load))
        .route("/metrics", get(metrics))
        .route("/drain/{site}", post(drain))
        .route("/undrain/{site}", post(undrain))
        .route("/reload", post(reload))
        .route("/plan", post(plan))
        .layer(DefaultBodyLimit::max(ADMIN_BODY_LIMIT))
        .with_state(h)
}

/// The TCP listener's router: nothing but `GET /metrics` (axum answers 405 to another
/// method and 404 to another path).
pub fn metrics_router(h: Handles) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(h)
}

/// The read-only router of `[admin] peer_listen`.
pub fn peer_router(h: Handles) -> Router {
    Router::new().route("/load", get(load)).with_state(h)
}

fn error(e: OwnerError) -> Response {
    let code = match e {
        OwnerError::UnknownSite(_) => StatusCode::NOT_FOUND,
        OwnerError::Plan(_) | OwnerError::NeedsRestart(_) | OwnerError::NoInterface(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        OwnerError::Gone => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, format!("{e}\n")).into_response()
}

async fn command<T>(f: impl Future<Output = Result<T, OwnerError>>) -> Result<T, Response> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(e)),
        Err(_) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the data-path owner did not finish within {COMMAND_TIMEOUT:?}; the command still runs\n"
            ),
        )
            .into_response()),
    }
}

/// `GET /load`: the report as the steering task signed it, byte for byte.
async fn load(State(h): State<Handles>) -> Response {
    let published = h.report.borrow().clone();
    if published.report.is_none() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not measured yet\n").into_response();
    }
    let mut res = ([(header::CONTENT_TYPE, "application/json")], published.body.clone()).into_response();
    if let Some(sig) = published.signature.as_deref().and_then(|s| HeaderValue::from_str(s).ok()) {
        res.headers_mut().insert(SIGNATURE_HEADER, sig);
    }
    res
}

/// The counters of the current slots, read through the read-only handle off the runtime.
async fn snapshot(h: &Handles) -> Result<Snapshot, Response> {
    let dp = h.datapath.borrow().clone();
    let counters = h.counters.clone();
    let sites: Vec<u32> = dp.sites.iter().map(|(_, i)| *i).collect();
    let vips: Vec<u32> = dp.vips.iter().map(|(_, i)| *i).collect();
    match tokio::task::spawn_blocking(move || counters.snapshot(sites, vips)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            Err((StatusCode::INTERNAL_SERVER_ERROR, format!("reading the counters: {e}\n")).into_response())
        }
        Err(e) => {
            Err((StatusCode::INTERNAL_SERVER_ERROR, format!("reading the counters: {e}\n")).into_response())
        }
    }
}

/// Everything `/metrics` shows, from the published views and `snap`.
pub fn scrape(h: &Handles, snap: &Snapshot) -> Scrape {
    let dp = h.datapath.borrow().clone();
    let steering = h.steering.borrow().clone();
    Scrape {
        sites: dp
            .sites
            .iter()
            .filter_map(|(name, i)| Some((name.clone(), (*snap.sites.get(i)?, dp.weights[name]))))
            .collect(),
        vips: dp.vips.iter().filter_map(|(name, i)| Some((name.clone(), *snap.vips.get(i)?))).collect(),
        exceptions: snap.exceptions.to_vec(),
        events: snap.events.to_vec(),
        flow_entries: h.samples.borrow().flow_entries,
        flow_capacity: dp.flow_capacity,
        checked_buckets: dp.checked_buckets,
        process: Process::read(),
        steering: (*steering).clone(),
        bgp: h.bgp.borrow().as_deref().cloned(),
        reload: dp.reload.clone(),
        next_hops: (*h.next_hops.borrow().clone()).clone(),
        listeners: h
            .gates
            .iter()
            .map(|g| ListenerCounts { name: g.name, open: g.open() as u64, refused: g.refused() })
            .collect(),
    }
}

async fn metrics(State(h): State<Handles>) -> Response {
    let snap = match snapshot(&h).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let text = metrics::render(scrape(&h, &snap)).expect("writing to a String cannot fail");
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

async fn status(State(h): State<Handles>) -> Response {
    let snap = match snapshot(&h).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let dp = h.datapath.borrow().clone();
    let steering = h.steering.borrow().clone();
    let samples = h.samples.borrow().clone();
    let next_hops = h.next_hops.borrow().clone();
    let bgp = h.bgp.borrow().clone();
    Json(status::build(&dp, &steering, &snap, &samples, &next_hops, bgp.as_deref())).into_response()
}

async fn set_drained(h: Handles, site: String, drained: bool) -> Response {
    match command(h.owner.drain(site.clone(), drained)).await {
        Ok(weight) => Json(DrainReply { site, drained, weight }).into_response(),
        Err(r) => r,
    }
}

async fn drain(State(h): State<Handles>, Path(site): Path<String>) -> Response {
    set_drained(h, site, true).await
}

async fn undrain(State(h): State<Handles>, Path(site): Path<String>) -> Response {
    set_drained(h, site, false).await
}

/// Re-reads the config file and applies it; a bad file is refused (422) with every problem.
/// `trigger` starts the log lines ("SIGHUP", "reload").
pub async fn reload_file(h: &Handles, trigger: &str) -> Result<Applied, Response> {
    let path = h.config_path.clone();
    let config = match tokio::task::spawn_blocking(move || Config::load(&path)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            log::error!("{trigger}: config refused, the running state is kept:\n{e}");
            h.owner.refused(e.to_string());
            return Err((StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response());
        }
        Err(e) => return Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()),
    };
    let started = std::time::Instant::now();
    let result = command(h.owner.reload(config)).await;
    match &result {
        Ok(a) => log::info!(
            "{trigger}: config applied in {:.1} ms: {} writes, {} Maglev tables",
            started.elapsed().as_secs_f64() * 1e3,
            a.writes,
            a.tables
        ),
        Err(r) => log::error!("{trigger}: refused ({}); the running state is kept", r.status()),
    }
    result
}

async fn reload(State(h): State<Handles>) -> Response {
    match reload_file(&h, "reload").await {
        Ok(a) => Json(ReloadReply { writes: a.writes, tables: a.tables }).into_response(),
        Err(r) => r,
    }
}

/// `POST /plan` with a config file's text: what a reload of it would change.
async fn plan(State(h): State<Handles>, request: Request) -> Response {
    let body = match tokio::time::timeout(ADMIN_BODY_TIMEOUT, String::from_request(request, &h)).await {
        Ok(Ok(b)) => b,
        Err(_) => {
            let why =
                format!("the submitted config did not arrive within {} s\n", ADMIN_BODY_TIMEOUT.as_secs());
            return (StatusCode::REQUEST_TIMEOUT, [(header::CONNECTION, "close")], why).into_response();
        }
        // Past ADMIN_BODY_LIMIT: 413; not UTF-8: 400.
        Ok(Err(e)) => {
            return (
                e.status(),
                format!("the submitted config: {} (at most {ADMIN_BODY_LIMIT} bytes)\n", e.body_text()),
            )
                .into_response();
        }
    };
    let config = match Config::parse(&body, "the submitted config") {
        Ok(c) => c,
        Err(e) => return (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response(),
    };
    match command(h.owner.preview(config)).await {
        Ok(p) => Json::<Preview>(p).into_response(),
        Err(r) => r,
    }
}
