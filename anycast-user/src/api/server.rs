//! The metrics and admin HTTP server (axum): `GET /metrics`, `GET /status`, `GET /load`,
//! `POST /drain/{site}`, `POST /undrain/{site}`. Listens on 127.0.0.1 by default
//! (`[admin] listen`): the admin endpoints have no authentication, so they must not be
//! reachable from outside the host. The sibling sites' controllers read `GET /load` from
//! [`peer_router`], which serves nothing else (`[admin] peer_listen`).

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};

use crate::{
    api::metrics::{self, Process, Scrape},
    owner::{Controller, ControllerError, Shared, lock},
};

/// Reply of the drain endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReply {
    pub site: String,
    pub drained: bool,
    pub weight: u32,
}

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/load", get(load))
        .route("/drain/{site}", post(drain))
        .route("/undrain/{site}", post(undrain))
        .with_state(shared)
}

/// The read-only router of `[admin] peer_listen`.
pub fn peer_router(shared: Shared) -> Router {
    Router::new().route("/load", get(load)).with_state(shared)
}

async fn load(State(shared): State<Shared>) -> Response {
    Json(lock(&shared).load_report()).into_response()
}

fn error(e: ControllerError) -> Response {
    let code = match e {
        ControllerError::UnknownSite(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, format!("{e}\n")).into_response()
}

/// Everything `/metrics` shows, read now.
pub fn scrape(c: &Controller) -> Result<Scrape, ControllerError> {
    let snap = c.snapshot()?;
    let plan = c.plan();
    let (flow_entries, flow_capacity) = c.flow_table();
    Ok(Scrape {
        sites: plan
            .sites
            .iter()
            .map(|(name, i)| (name.clone(), (snap.sites[i], plan.weights[name])))
            .collect(),
        vips: plan.vips.iter().map(|(name, i)| (name.clone(), snap.vips[i])).collect(),
        exceptions: snap.exceptions.to_vec(),
        events: snap.events.to_vec(),
        flow_entries,
        flow_capacity,
        process: Process::read(),
        steering: c.view().clone(),
        bgp: c.bgp_view().cloned(),
    })
}

async fn metrics(State(shared): State<Shared>) -> Response {
    let scrape = scrape(&lock(&shared));
    match scrape {
        Ok(s) => {
            let text = metrics::render(s).expect("writing to a String cannot fail");
            ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
        }
        Err(e) => error(e),
    }
}

async fn status(State(shared): State<Shared>) -> Response {
    match lock(&shared).status() {
        Ok(s) => Json(s).into_response(),
        Err(e) => error(e),
    }
}

fn set_drained(shared: &Shared, site: String, drained: bool) -> Response {
    match lock(shared).set_drained(&site, drained) {
        Ok(weight) => {
            log::info!("site {site}: {} (weight {weight})", if drained { "drained" } else { "undrained" });
            Json(DrainReply { site, drained, weight }).into_response()
        }
        Err(e) => error(e),
    }
}

async fn drain(State(shared): State<Shared>, Path(site): Path<String>) -> Response {
    set_drained(&shared, site, true)
}

async fn undrain(State(shared): State<Shared>, Path(site): Path<String>) -> Response {
    set_drained(&shared, site, false)
}
