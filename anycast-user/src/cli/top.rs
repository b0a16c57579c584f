//! `anycast top`: the live per-site view of a running deployment. Each refresh reads what
//! `anycast status` reads (daemon, else pinned maps) and shows the rates since the
//! previous reading, and the last minute of each site's load and share as sparklines:
//! redrawn in place on a terminal, appended as plain blocks otherwise
//! (a pipe or a log file gets no escape sequences).

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use anycast_user::api::top;
use anyhow::{Context, Result};

use super::admin::{Target, fetch_status};

/// ANSI: clear the screen, cursor home.
const CLEAR_HOME: &str = "\x1b[2J\x1b[H";

/// `count`: stop after this many refreshes (None: until interrupted).
pub async fn run(target: &Target, interval: Duration, count: Option<u64>) -> Result<()> {
    let tty = std::io::stdout().is_terminal();
    let (mut prev, mut fallback) = fetch_status(target).await?;
    if let Some(why) = &fallback {
        log::warn!("{why}");
    }
    let mut prev_at = Instant::now();
    let started = prev_at;
    let mut refreshes = 0u64;
    let mut history = top::History::new(interval);
    while count.is_none_or(|n| refreshes < n) {
        tokio::time::sleep(interval).await;
        let (cur, now_fallback) = fetch_status(target).await?;
        // Warn when the source changes (daemon gone or back), not at every refresh: on a
        // terminal each warning would scroll the view.
        match (&fallback, &now_fallback) {
            (None, Some(why)) => log::warn!("{why}"),
            (Some(_), None) => log::info!("the daemon answers again"),
            _ => {}
        }
        fallback = now_fallback;
        let now = Instant::now();
        // The measured time between the readings, not the nominal interval: a slow
        // reading (pinned-map fallback, busy daemon) would otherwise inflate the rates.
        let rates = top::rates(&prev, &cur, now.duration_since(prev_at));
        history.push(&rates);
        let mut out = std::io::stdout().lock();
        if target.json() {
            // One JSON object per line and refresh, for scripts that follow the rates.
            writeln!(out, "{}", serde_json::to_string(&rates)?)
        } else if tty {
            let frame = format!("{}\n{}", top::render(&cur, &rates), history.render());
            write!(out, "{CLEAR_HOME}{frame}")
        } else {
            let frame = format!("{}\n{}", top::render(&cur, &rates), history.render());
            write!(out, "-- {:.1}s\n{frame}", now.duration_since(started).as_secs_f64())
        }
        .and_then(|()| out.flush())
        .context("writing to stdout")?;
        (prev, prev_at) = (cur, now);
        refreshes += 1;
    }
    Ok(())
}
