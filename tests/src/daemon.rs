//! The `anycast` controller binary under test: a daemon (`anycast run --config`) started
//! inside a test's network namespace, with a config, a pin directory and a state directory
//! of its own, and everything it leaves behind removed when the [`Daemon`] value is dropped
//! (also when the test panics): the process is killed, the pins are removed with
//! `anycast detach` (which takes the program off its interfaces), the files deleted.
//!
//! Why these choices:
//! - The binary is the one of this build: [`anycast_bin`] runs `cargo build -p anycast-user
//!   --bin anycast` once per test process, into the target directory and profile of the
//!   running test (a test can only name the binaries of its own package, and `cargo test`
//!   of this package does not build another package's binary). Cargo releases its build
//!   lock before it runs the tests, so the nested build does not wait on the outer one, and
//!   it is a no-op when the binary is fresh.
//! - The daemon enters the namespace with `setns(CLONE_NEWNET)` between fork and exec, like
//!   `nsenter --net=/run/netns/NAME`, and unlike `ip netns exec`, which also gives the
//!   command a private mount namespace with a fresh /sys: a bpffs mounted there would die
//!   with the command, and the pinned data path with it (docs/controller.md).
//! - Pins live under `/sys/fs/bpf/anycast-test-<pid>-<n>`, files under
//!   `$TMPDIR/anycast-test-<pid>-<n>`, unique per daemon of every test process; those of
//!   test processes that no longer exist are removed when the first daemon is created.
//! - The daemon gets `PR_SET_PDEATHSIG = SIGKILL`: if the test process dies without
//!   unwinding (SIGKILL), its daemons die with it instead of running on.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Once, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anycast_user::datapath::maps::{DataPathMaps, MapsError};
use aya::programs::links::{FdLink, LinkError, PinnedLink};

use crate::netns::Netns;

/// Where every test daemon's admin and metrics server listens, inside its namespace.
pub const ADMIN_LISTEN: &str = "127.0.0.1:9100";
/// What the daemon logs once the data path is attached and reconciled and its HTTP listener
/// bound (anycast-user/src/cli/daemon.rs): from then on `/metrics` answers.
pub const READY: &str = "metrics and admin on http://";
/// Flow table entries: the default (262144, preallocated by the kernel) would cost every
/// test tens of MB of kernel memory for nothing; 16384 is far more than any test's flows.
const FLOW_TABLE_SIZE: u32 = 16384;
/// A start loads and verifies the XDP program: ~1 s on the reference VM; leave room for a
/// loaded CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
const PIN_PREFIX: &str = "anycast-test-";
const BPFFS: &str = "/sys/fs/bpf";

static COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("building the anycast binary: {0}")]
    Build(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the daemon is not running")]
    NotRunning,
    #[error("the daemon exited ({status}) while waiting for {waiting_for:?}; its log:\n{log}")]
    Exited { status: ExitStatus, waiting_for: String, log: String },
    #[error("no {waiting_for:?} in the daemon's log within {timeout:?}; its log:\n{log}")]
    Timeout { waiting_for: String, timeout: Duration, log: String },
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("pinned link {path}: {source}")]
    Link { path: PathBuf, source: LinkError },
}

pub type Result<T, E = DaemonError> = std::result::Result<T, E>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_owned();
    move |source| DaemonError::Io { what, path, source }
}

/// The `anycast` binary of this build, built on first use (see the module docs).
pub fn anycast_bin() -> Result<&'static Path> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(build_anycast) {
        Ok(path) => Ok(path),
        Err(e) => Err(DaemonError::Build(e.clone())),
    }
}

fn build_anycast() -> Result<PathBuf, String> {
    // A test executable is <target dir>/<profile dir>/deps/<name>-<hash>.
    let exe = std::env::current_exe().map_err(|e| format!("locating the test executable: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in <target>/<profile>/deps", exe.display()))?;
    let target_dir =
        profile_dir.parent().ok_or_else(|| format!("no target directory above {}", exe.display()))?;
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace");
    // `cargo test` sets CARGO for what it runs; the cargo that built this test otherwise.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--quiet", "--package", "anycast-user", "--bin", "anycast", "--target-dir"])
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    let bin = profile_dir.join("anycast");
    if !bin.exists() {
        return Err(format!("{cmd:?} succeeded but {} does not exist", bin.display()));
    }
    Ok(bin)
}

/// Removes the pins and files of test processes that no longer exist (killed before their
/// `Drop` ran), once per process: their links would otherwise stay attached to interfaces
/// that are gone and their maps stay allocated. (Their daemons died with them:
/// `PR_SET_PDEATHSIG`.)
fn sweep_stale(bin: &Path) {
    fn stale(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
        entries
            .flatten()
            .filter(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pid = name.strip_prefix(PIN_PREFIX).and_then(|r| r.split('-').next());
                pid.is_some_and(|pid| pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists())
            })
            .map(|entry| entry.path())
            .collect()
    }
    SWEEP.call_once(|| {
        for pins in stale(Path::new(BPFFS)) {
            detach(bin, &pins);
        }
        for files in stale(&std::env::temp_dir()) {
            let _ = fs::remove_dir_all(files);
        }
    });
}

/// `anycast detach --pin-dir DIR`; a failure is reported, not raised (used in teardown).
fn detach(bin: &Path, pin_dir: &Path) {
    match Command::new(bin).arg("detach").arg("--pin-dir").arg(pin_dir).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "warning: anycast detach --pin-dir {}: {}",
            pin_dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("warning: running anycast detach: {e}"),
    }
}

/// One controller of one site: its files, its pins and, while started, its process.
pub struct Daemon<'ns> {
    ns: &'ns Netns,
    bin: &'static Path,
    /// Config, state directory and logs.
    dir: PathBuf,
    pin_dir: PathBuf,
    child: Option<Child>,
    /// Log of the current (or last) process: one file per start.
    log: PathBuf,
    starts: u32,
    /// `[admin] peer_listen`, when the sibling sites poll this one.
    peer_listen: Option<std::net::SocketAddr>,
    /// `[datapath] flow_table_size` of the configs written from now on.
    flow_table_size: u32,
}

impl<'ns> Daemon<'ns> {
    /// A daemon for namespace `ns`, not started yet. Write its config with
    /// [`Daemon::write_config`] first.
    pub fn new(ns: &'ns Netns) -> Result<Daemon<'ns>> {
        let bin = anycast_bin()?;
        sweep_stale(bin);
        let id = format!("{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(format!("{PIN_PREFIX}{id}"));
        let state = dir.join("state");
        fs::create_dir_all(&state).map_err(io("creating", &state))?;
        Ok(Daemon {
            ns,
            bin,
            log: dir.join("anycast-0.log"),
            dir,
            pin_dir: Path::new(BPFFS).join(format!("{PIN_PREFIX}{id}")),
            child: None,
            starts: 0,
            peer_listen: None,
            flow_table_size: FLOW_TABLE_SIZE,
        })
    }

    /// Adds `peer_listen = ADDR` to the `[admin]` section of the configs written from now on.
    pub fn set_peer_listen(&mut self, addr: std::net::SocketAddr) {
        self.peer_listen = Some(addr);
    }

    /// Sets `[datapath] flow_table_size` of the configs written from now on.
    pub fn set_flow_table_size(&mut self, entries: u32) {
        self.flow_table_size = entries;
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("anycast.toml")
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Writes the config file: `body` (`[local]`, `[[sites]]`, `[[vips]]`: no `[datapath]`
    /// or `[admin]`) followed by the `[datapath]` and `[admin]` sections that keep this
    /// daemon's pins, state and listener to itself. They come last so that the line
    /// numbers of `body` are the file's.
    pub fn write_config(&self, body: &str) -> Result<()> {
        self.write_config_to("anycast.toml", body).map(drop)
    }

    /// [`Daemon::write_config`] to another file of this daemon's directory (a config for
    /// another `anycast` command); returns its path.
    pub fn write_config_to(&self, name: &str, body: &str) -> Result<PathBuf> {
        let mut text = format!(
            "{body}\n\n[datapath]\nflow_table_size = {}\npin_dir = \"{}\"\n\n\
             [admin]\nlisten = \"{ADMIN_LISTEN}\"\nstate_dir = \"{}\"\n",
            self.flow_table_size,
            self.pin_dir.display(),
            self.dir.join("state").display()
        );
        if let Some(addr) = self.peer_listen {
            text += &format!("peer_listen = \"{addr}\"\n");
        }
        let path = self.dir.join(name);
        fs::write(&path, text).map_err(io("writing", &path))?;
        Ok(path)
    }

    /// `anycast ARGS` as a command, to be spawned inside the namespace with
    /// [`Netns::spawn`].
    fn command(&self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Command {
        let mut cmd = Command::new(self.bin);
        cmd.args(args).env("RUST_LOG", "info").stdin(Stdio::null());
        cmd
    }

    /// Starts `anycast run --config` in the namespace and waits until it serves
    /// `/metrics`. Returns its log up to then.
    ///
    /// Call it from the test's own thread: the daemon is killed when the thread that
    /// started it ends (`PR_SET_PDEATHSIG` follows the parent *thread*).
    pub fn start(&mut self) -> Result<String> {
        self.start_with(&[])
    }

    /// [`Daemon::start`] with more arguments for `anycast run`, e.g. `--object FILE`.
    pub fn start_with(&mut self, extra: &[&OsStr]) -> Result<String> {
        if self.running() {
            panic!("Daemon::start: the daemon is already running");
        }
        self.starts += 1;
        self.log = self.dir.join(format!("anycast-{}.log", self.starts));
        let log = fs::File::create(&self.log).map_err(io("creating", &self.log))?;
        let err = log.try_clone().map_err(io("duplicating", &self.log))?;
        let config = self.config_path();
        let mut cmd =
            self.command([OsStr::new("run"), OsStr::new("--config"), config.as_os_str()].iter().chain(extra));
        cmd.stdout(log).stderr(err);
        let child = self.ns.spawn(&mut cmd).map_err(io("starting", self.bin))?;
        self.child = Some(child);
        self.wait_for_log(0, READY, START_TIMEOUT)
    }

    /// Runs `anycast ARGS` once inside the namespace, with `env` added to its environment,
    /// and returns its output. Killed if it runs longer than `timeout`.
    pub fn cli(
        &self,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Output> {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = self.ns.spawn(&mut cmd).map_err(io("starting", self.bin))?;
        let deadline = Instant::now() + timeout;
        while child.try_wait().map_err(io("waiting for", self.bin))?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Kills it if still running (a no-op once it has exited), so that the output can be
        // collected in any case.
        let _ = child.kill();
        child.wait_with_output().map_err(io("waiting for", self.bin))
    }

    /// The process id of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the daemon.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if !self.running() {
            return Err(DaemonError::NotRunning);
        }
        let pid = self.pid().ok_or(DaemonError::NotRunning)? as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child,
        // so it cannot have been reused by another process.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(io("signalling", self.bin)(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// SIGKILL (no cleanup in the daemon at all: the harshest restart) and reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().ok_or(DaemonError::NotRunning)?;
        child.kill().map_err(io("killing", self.bin))?;
        child.wait().map_err(io("waiting for", self.bin))
    }

    /// The log of the current (or last) process so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Length of the log so far: a mark for [`Daemon::wait_for_log`] to look only at what
    /// comes after, e.g. after a signal.
    pub fn log_mark(&self) -> usize {
        self.log().len()
    }

    /// Waits until `needle` appears in the log after byte `mark`; returns the log from
    /// `mark` on. Fails at once if the daemon exits.
    pub fn wait_for_log(&mut self, mark: usize, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            let after = log.get(mark..).unwrap_or_default();
            if after.contains(needle) {
                return Ok(after.to_owned());
            }
            let exited = match &mut self.child {
                Some(child) => child.try_wait().map_err(io("waiting for", self.bin))?,
                None => return Err(DaemonError::NotRunning),
            };
            if let Some(status) = exited {
                self.child = None;
                return Err(DaemonError::Exited { status, waiting_for: needle.to_owned(), log: self.log() });
            }
            if Instant::now() >= deadline {
                return Err(DaemonError::Timeout { waiting_for: needle.to_owned(), timeout, log });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` from the daemon's HTTP server (from a thread inside its namespace, where
    /// its 127.0.0.1 is); returns the body of a 2xx reply.
    pub fn get(&self, path: &str) -> Result<String> {
        let url = format!("http://{ADMIN_LISTEN}{path}");
        self.ns.run(|| {
            // No proxy from the environment: the daemon is only reachable from here.
            let agent = ureq::Agent::new_with_config(
                ureq::Agent::config_builder().proxy(None).timeout_global(Some(HTTP_TIMEOUT)).build(),
            );
            agent
                .get(&url)
                .call()
                .and_then(|mut reply| reply.body_mut().read_to_string())
                .map_err(|e| DaemonError::Http { url: url.clone(), message: e.to_string() })
        })
    }

    /// The data path's maps, opened from the pins (what the daemon reads and writes).
    pub fn maps(&self) -> Result<DataPathMaps> {
        Ok(DataPathMaps::from_pins(&self.pin_dir)?)
    }

    /// Kernel id of the program that the pinned link of `iface` runs: a restart that adopts
    /// the running instance leaves it unchanged, a reload of the program changes it.
    pub fn link_program_id(&self, iface: &str) -> Result<u32> {
        let path = self.pin_dir.join("links").join(iface);
        let link_err = |source| DaemonError::Link { path: path.clone(), source };
        let link = FdLink::from(PinnedLink::from_pin(&path).map_err(link_err)?);
        Ok(link.info().map_err(link_err)?.program_id())
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.pin_dir.exists() {
            detach(self.bin, &self.pin_dir);
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }
}

/// The value of one series of a Prometheus text exposition, e.g.
/// `metric(text, r#"anycast_vip_packets_total{vip="dns"}"#)`; `None` if absent or not an
/// integer (counters and the gauges of this project are integers).
pub fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn metric_finds_exact_series() {
        let text = "# TYPE a_total counter\na_total{x=\"1\"} 7\na_total{x=\"10\"} 9\nb 3\nc 0.5\n";
        assert_eq!(metric(text, "a_total{x=\"1\"}"), Some(7));
        assert_eq!(metric(text, "a_total{x=\"10\"}"), Some(9));
        assert_eq!(metric(text, "b"), Some(3));
        assert_eq!(metric(text, "a_total"), None, "a prefix of a series is not the series");
        assert_eq!(metric(text, "c"), None);
        assert_eq!(metric(text, "d"), None);
    }
}
