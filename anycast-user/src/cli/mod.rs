//! The subcommands of the `anycast` binary: orchestration and user-facing messages
//! (anyhow), on top of the library modules (typed errors).
pub mod admin;
pub mod daemon;
pub mod demo;
pub mod top;
use std::{path::Path, process::ExitCode};

use anycast_user::config::Config;

/// `anycast check-config FILE`: every problem on stderr, exit 1 if any.
pub fn check_config(file: &Path) -> ExitCode {
    match Config::load(file) {
        Ok(c) => {
            println!(
                "{}: OK ({} interfaces, {} sites, {} VIPs)",
                file.display(),
                c.local.interfaces.len(),
                c.sites.len(),
                c.vips.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
