//! Logging: `tracing`, to the journal when systemd runs us (it adds its own timestamps and
//! keeps the level as the priority), else to stderr. The library logs through the `log`
//! facade, which the subscriber picks up. `RUST_LOG` sets the filter (default `info`).

use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // JOURNAL_STREAM is set when stderr is connected to the journal (systemd.exec(5)).
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    let result = match journald {
        Some(layer) => registry.with(layer).try_init(),
        None => registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).try_init(),
    };
    if let Err(e) = result {
        eprintln!("anycast: logging: {e}");
    }
}
