//! The config file (`anycast run --config`, `check-config`, SIGHUP): any bytes an operator or
//! a broken deploy could put there. `Config::parse` must not panic, and a refusal must point
//! into the text: every problem on a line and column that exist (a message naming line 0,
//! or a line past the end, would send the operator looking in the wrong place).

#![no_main]

use anycast_user::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, "fuzz.toml") {
        Ok(config) => {
            // A config that is accepted has what every start needs.
            assert!(!config.sites.is_empty(), "accepted without a site");
            assert!(!config.local.interfaces.is_empty(), "accepted without an interface");
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty(), "refused without a reason");
            let lines: Vec<&str> = text.split('\n').collect();
            for p in &problems {
                assert!(
                    p.line >= 1 && p.line <= lines.len(),
                    "line {} of {}: {}",
                    p.line,
                    lines.len(),
                    p.message
                );
                let width = lines[p.line - 1].chars().count();
                assert!(
                    p.column >= 1 && p.column <= width + 1,
                    "{}:{} of width {width}: {}",
                    p.line,
                    p.column,
                    p.message
                );
                assert!(!p.message.trim().is_empty(), "an empty message at {}:{}", p.line, p.column);
            }
        }
        Err(e @ ConfigError::Read { .. }) => panic!("parse read a file: {e}"),
    }
});
