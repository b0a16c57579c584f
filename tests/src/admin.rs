//! A [`Daemon`]'s admin API (its Unix socket), through the client the CLI uses. (testkit's
//! [`Daemon`] knows only the binary and `/metrics` on TCP.)

use std::time::Duration;

use anycast_user::{
    api::client::{self, ClientError, Method},
    model::status::Status,
};
use testkit::daemon::Daemon;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{path} answered {status}: {body}")]
    Status { path: String, status: u16, body: String },
    #[error("{path}: {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("starting a runtime: {0}")]
    Runtime(std::io::Error),
}

pub trait AdminApi {
    /// `method path` with `body`: the status and the body, whatever the status.
    fn admin(&self, method: Method, path: &str, body: Option<String>) -> Result<(u16, String), AdminError>;

    /// `GET /status`, decoded.
    fn status(&self) -> Result<Status, AdminError> {
        let (status, body) = self.admin(Method::GET, "/status", None)?;
        if status != 200 {
            return Err(AdminError::Status { path: "/status".into(), status, body });
        }
        serde_json::from_str(&body).map_err(|source| AdminError::Json { path: "/status".into(), source })
    }
}

impl AdminApi for Daemon<'_> {
    fn admin(&self, method: Method, path: &str, body: Option<String>) -> Result<(u16, String), AdminError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AdminError::Runtime)?;
        let reply = runtime.block_on(client::request(&self.socket(), method, path, body, TIMEOUT))?;
        Ok((reply.status, reply.body))
    }
}
