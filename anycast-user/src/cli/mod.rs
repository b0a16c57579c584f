//! The subcommands of the `anycast` binary: orchestration and user-facing messages
//! (anyhow), on top of the library modules (typed errors).
pub mod admin;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod logging;
pub mod top;

use std::{path::Path, process::ExitCode};

use anycast_user::{
    api::client::ClientError,
    config::{Config, ConfigError},
};

use crate::Output;

/// Exit codes beyond 0 (success) and 2 (usage, from clap), for scripts.
pub mod exit {
    /// Any other failure.
    pub const FAILURE: u8 = 1;
    /// No daemon answers (and the command needs one).
    pub const NO_DAEMON: u8 = 3;
    /// A config file is invalid.
    pub const CONFIG: u8 = 4;
    /// The daemon refused the command (unknown site, a reload it could not apply, ...).
    pub const REFUSED: u8 = 5;
}

/// The daemon answered with an error status.
#[derive(Debug, thiserror::Error)]
#[error("the daemon refused ({status}): {message}")]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

/// The exit code for an error that ended a command.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<ConfigError>().is_some() {
        exit::CONFIG
    } else if matches!(e.downcast_ref::<ClientError>(), Some(ClientError::NoDaemon { .. })) {
        exit::NO_DAEMON
    } else if e.downcast_ref::<Refused>().is_some() {
        exit::REFUSED
    } else {
        exit::FAILURE
    }
}

/// `anycast check-config FILE`: every problem on stderr (or as JSON on stdout), exit 4 if any.
pub fn check_config(file: &Path, output: Output) -> ExitCode {
    let result = Config::load(file);
    if output == Output::Json {
        let problems = match &result {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { problems, .. }) => problems.clone(),
            Err(e @ ConfigError::Read { .. }) => {
                vec![anycast_user::config::Problem { line: 0, column: 0, message: e.to_string() }]
            }
        };
        let json = serde_json::json!({ "file": file.display().to_string(), "ok": result.is_ok(), "problems": problems });
        println!("{json:#}");
    }
    match result {
        Ok(c) => {
            if output == Output::Text {
                println!(
                    "{}: OK ({} interfaces, {} sites, {} VIPs)",
                    file.display(),
                    c.local.interfaces.len(),
                    c.sites.len(),
                    c.vips.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if output == Output::Text {
                eprintln!("{e}");
            }
            ExitCode::from(exit::CONFIG)
        }
    }
}
