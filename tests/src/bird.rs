//! Real BIRD 2 daemons for the BGP tests: one per namespace, each with its own config,
//! control socket, pid file and log in a directory of its own, killed and removed when the
//! [`Bird`] value is dropped (also when the test panics). Never the system's BIRD.
//!
//! Why these choices:
//! - `bird -f` (foreground): the child process *is* the daemon, so the test can kill and
//!   reap it; `-c`, `-s`, `-P` keep config, socket and pid file out of /etc and /run.
//! - The daemon joins its namespace with `setns(CLONE_NEWNET)` between fork and exec (as
//!   [`testkit::daemon`] does) and gets `PR_SET_PDEATHSIG = SIGKILL`, so a test killed without
//!   unwinding does not leave BGP speakers behind.
//! - Routes are read with `birdc -s SOCKET show route PREFIX all`, what an operator types.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use testkit::{daemon, netns::Netns, teardown};

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
    #[error("BIRD did not {waiting_for} within {timeout:?}; its log:\n{log}")]
    Timeout { waiting_for: String, timeout: Duration, log: String },
}

pub type Result<T, E = BirdError> = std::result::Result<T, E>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BirdError {
    let path = path.to_owned();
    move |source| BirdError::Io { what, path, source }
}

/// A route as a BGP peer learned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    /// AS numbers of `BGP.as_path`, nearest first.
    pub as_path: Vec<u32>,
    pub med: Option<u32>,
    /// `BGP.local_pref`, as this router's import set it.
    pub local_pref: Option<u32>,
    /// `BGP.community` pairs.
    pub communities: Vec<(u32, u32)>,
}

/// One BIRD daemon in a namespace.
pub struct Bird {
    dir: PathBuf,
    child: Option<Child>,
}

impl Bird {
    /// A directory for a BIRD daemon's files (`tag` names it in listings); the config may
    /// refer to files in it (e.g. an include) before [`Bird::start`].
    pub fn dir_for(tag: &str) -> Result<PathBuf> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Named like every test's work directory, so that what a killed test leaves is swept
        // and what a failed one leaves is found at the end of the suite (testkit::teardown).
        let dir =
            std::env::temp_dir().join(format!("{}{}-bird-{n}-{tag}", daemon::PREFIX, std::process::id()));
        fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        Ok(dir)
    }

    /// Writes `config` to `dir`/bird.conf, checks it with `bird -p`, starts `bird -f` in
    /// `ns` and waits until its control socket answers.
    pub fn start(ns: &Netns, dir: PathBuf, config: &str) -> Result<Bird> {
        let conf = dir.join("bird.conf");
        fs::write(&conf, config).map_err(io("writing", &conf))?;
        let out = Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&conf)
            .output()
            .map_err(io("running bird -p", &conf))?;
        if !out.status.success() {
            return Err(BirdError::Command {
                command: format!("bird -p -c {}", conf.display()),
                output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let log = dir.join("bird.log");
        let log_file = fs::File::create(&log).map_err(io("creating", &log))?;
        let err = log_file.try_clone().map_err(io("duplicating", &log))?;
        let mut cmd = Command::new("bird");
        cmd.arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(dir.join("bird.ctl"))
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err);
        let child = ns.spawn(&mut cmd).map_err(io("starting bird with", &conf))?;
        let bird = Bird { dir, child: Some(child) };
        bird.wait_for("answer on its control socket", Duration::from_secs(10), |b| {
            b.birdc(&["show", "status"]).is_ok_and(|s| s.contains("Daemon is up"))
        })?;
        Ok(bird)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// `birdc -s SOCKET ARGS`; its output.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(io("running birdc on", &self.socket()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(BirdError::Command {
                command: format!("birdc -s {} {}", self.socket().display(), args.join(" ")),
                output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
            });
        }
        Ok(stdout)
    }

    /// Whether BGP protocol `name` is Established.
    pub fn established(&self, name: &str) -> bool {
        self.birdc(&["show", "protocols", name])
            .is_ok_and(|out| out.lines().any(|l| l.starts_with(name) && l.contains("Established")))
    }

    /// The route for exactly `prefix` in this BIRD's table, with its BGP attributes; `None`
    /// if there is none.
    pub fn route(&self, prefix: &str) -> Result<Option<Learned>> {
        match self.birdc(&["show", "route", prefix, "all"]) {
            Ok(out) => Ok(parse_route(&out, prefix)),
            // birdc exits with an error status on BIRD's "8001 Network not found".
            Err(BirdError::Command { output, .. }) if output.contains("Network not found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Polls `done` every 20 ms until it holds; the time it took.
    pub fn wait_for(
        &self,
        waiting_for: &str,
        timeout: Duration,
        done: impl Fn(&Bird) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if done(self) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(BirdError::Timeout {
                    waiting_for: waiting_for.to_owned(),
                    timeout,
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            teardown::warn(format_args!("removing {}: {e}", self.dir.display()));
        }
    }
}

/// The route for `prefix` in `birdc show route PREFIX all` output:
///
/// ```text
/// Table master4:
/// 10.200.0.1/32        unicast [site 21:30:31.709] * (100) [AS65001i]
///         via 10.9.0.1 on u0
///         BGP.as_path: 65001 65001 65001
///         BGP.med: 500
///         BGP.local_pref: 0
///         BGP.community: (65535,0)
/// ```
fn parse_route(out: &str, prefix: &str) -> Option<Learned> {
    let mut lines = out.lines().skip_while(|l| !l.starts_with(&format!("{prefix} ")));
    lines.next()?;
    let mut learned = Learned { as_path: Vec::new(), med: None, local_pref: None, communities: Vec::new() };
    // The attributes of the first (best) route, up to the next route or table.
    for line in lines.take_while(|l| l.starts_with(char::is_whitespace)) {
        let line = line.trim();
        if let Some(path) = line.strip_prefix("BGP.as_path:") {
            learned.as_path = path.split_whitespace().filter_map(|a| a.parse().ok()).collect();
        } else if let Some(med) = line.strip_prefix("BGP.med:") {
            learned.med = med.trim().parse().ok();
        } else if let Some(pref) = line.strip_prefix("BGP.local_pref:") {
            learned.local_pref = pref.trim().parse().ok();
        } else if let Some(list) = line.strip_prefix("BGP.community:") {
            learned.communities = list
                .split_whitespace()
                .filter_map(|c| {
                    let (a, b) = c.strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
                    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
                })
                .collect();
        }
    }
    Some(learned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bgp_parses_birdc_route_output() {
        let out = "BIRD 2.0.12 ready.\nTable master4:\n10.200.0.1/32        unicast [site 21:30:31.709] * (100) [AS65001i]\n\
                   \tvia 10.9.0.1 on u0\n\tType: BGP univ\n\tBGP.origin: IGP\n\tBGP.as_path: 65001 65001 65001\n\
                   \tBGP.next_hop: 10.9.0.1\n\tBGP.med: 500\n\tBGP.local_pref: 0\n\tBGP.community: (65535,0) (64512,7)\n";
        assert_eq!(
            parse_route(out, "10.200.0.1/32"),
            Some(Learned {
                as_path: vec![65001, 65001, 65001],
                med: Some(500),
                local_pref: Some(0),
                communities: vec![(65535, 0), (64512, 7)]
            })
        );
        assert_eq!(parse_route(out, "10.200.0.2/32"), None);
    }
}
