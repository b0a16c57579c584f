//! The metrics and admin HTTP server (axum): `GET /metrics`, `GET /status`, `GET /load`,
//! `POST /drain/{site}`, `POST /undrain/{site}`. Listens on 127.0.0.1 by default
//! (`[admin] listen`): the admin endpoints have no authentication, so they must not be
//! reachable from outside the host. The sibling sites' controllers read `GET /load` from
//! [`peer_router`], which serves nothing else (`[admin] peer_listen`).

use std::sync::{Arc, Mutex};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};

use crate::controller::{Controller, ControllerError};

pub type Shared = Arc<Mutex<Controller>>;

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

/// The controller, for the HTTP handlers and the daemon's tasks. A panic while holding the
/// lock leaves a state that is still a valid config + maps (every write is applied or not):
/// keep serving.
pub fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Controller> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

async fn metrics(State(shared): State<Shared>) -> Response {
    match lock(&shared).metrics() {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
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
