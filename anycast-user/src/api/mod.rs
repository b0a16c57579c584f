//! What the controller shows the outside world: the HTTP endpoints, the Prometheus
//! exposition and the rendering of `anycast top`.

pub mod metrics;
pub mod server;
pub mod top;
