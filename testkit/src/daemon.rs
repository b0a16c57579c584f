//! The `anycast` controller binary as a daemon (`anycast run --config`) started inside a
//! network namespace of a test or of the lab, with a config, a pin directory and a state
//! directory of its own, and everything it leaves behind removed when the [`Daemon`] value
//! is dropped (also when the test panics): the process is killed, the pins are removed with
//! `anycast detach` (which takes the program off its interfaces), the files deleted; a step
//! that fails is reported ([`crate::teardown`]).
//!
//! Why these choices:
//! - The binary is the one of this build: `cargo xtask test` builds it once before the tests
//!   and passes its path in [`BIN_ENV`]. Under a plain `cargo test` [`anycast_bin`] builds it
//!   (`cargo build -p anycast-user --bin anycast`, into the target directory and profile of
//!   the running test, bounded by [`BUILD_TIMEOUT`]): a test can only name the binaries of its
//!   own package, and `cargo test` of the tests does not build another package's binary.
//! - The daemon enters the namespace with `setns(CLONE_NEWNET)` between fork and exec, like
//!   `nsenter --net=/run/netns/NAME`, and unlike `ip netns exec`, which also gives the
//!   command a private mount namespace with a fresh /sys: a bpffs mounted there would die
//!   with the command, and the pinned data path with it (docs/controller.md).
//! - Pins live under `/sys/fs/bpf/anycast-test-<pid>-<n>`, files under
//!   `$TMPDIR/anycast-test-<pid>-<n>`, unique per daemon of every process; those of
//!   processes that no longer exist are removed when the first daemon is created.
//! - The daemon gets `PR_SET_PDEATHSIG = SIGKILL` ([`Netns::spawn`]): if the test process
//!   dies without unwinding (SIGKILL), its daemons die with it instead of running on.

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

use crate::{metrics, netns::Netns, teardown};

/// Where every test daemon's metrics listener (`[admin] listen`) is, inside its namespace.
pub const ADMIN_LISTEN: &str = "127.0.0.1:9100";
/// What the daemon logs once the data path is attached and reconciled and every listener
/// bound (anycast-user/src/daemon/mod.rs): from then on the admin socket and `/metrics`
/// answer.
pub const READY: &str = "ready: data path attached and reconciled";
/// The peer key of every test daemon: the sites of one test are one deployment.
pub const PEER_KEY: &str = "anycast-test-peer-key-0123456789";
/// Flow table entries: the default (262144, preallocated by the kernel) would cost every
/// test tens of MB of kernel memory for nothing; 16384 is far more than any test's flows.
const FLOW_TABLE_SIZE: u32 = 16384;
/// `[datapath] hash_key` of every test daemon: the flow hash key under which the tests
/// predict where a flow goes (anycast-tests' `reference` module).
pub const HASH_KEY: [u8; 16] = *b"anycast-test-key";

/// [`HASH_KEY`] as the config's 32 hexadecimal digits.
pub fn hash_key_hex() -> String {
    HASH_KEY.iter().map(|b| format!("{b:02x}")).collect()
}
/// A start loads and verifies the XDP program: ~1 s on the reference VM; leave room for a
/// loaded CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// `anycast detach` only unpins and detaches: immediate.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Prefix of every pin directory (under [`BPFFS`]) and work directory (under $TMPDIR).
pub const PREFIX: &str = "anycast-test-";
pub const BPFFS: &str = "/sys/fs/bpf";
/// The environment variable by which `cargo xtask test` gives the tests the `anycast`
/// binary it built (and `cargo xtask run` takes one instead of building it).
pub const BIN_ENV: &str = "ANYCAST_BIN";
/// The longest a fallback build of the binary may take (a cold build is a few minutes).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

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
    #[error("`anycast {args}` did not finish within {timeout:?}; killed. Its output:\n{output}")]
    CliTimeout { args: String, timeout: Duration, output: String },
}

pub type Result<T, E = DaemonError> = std::result::Result<T, E>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_owned();
    move |source| DaemonError::Io { what, path, source }
}

/// The `anycast` binary of this build: [`BIN_ENV`] if set, else built on first use (see the
/// module docs).
pub fn anycast_bin() -> Result<&'static Path> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let bin = BIN.get_or_init(|| match std::env::var_os(BIN_ENV) {
        Some(path) => Ok(PathBuf::from(path)),
        None => build_anycast(),
    });
    match bin {
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
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ is in the workspace");
    // `cargo test` sets CARGO for what it runs; the cargo that built this crate otherwise.
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
    // Cargo releases its build lock before it runs the tests, so this build does not wait on
    // the outer one; it is a no-op when the binary is fresh.
    let out = output_within(&mut cmd, BUILD_TIMEOUT).map_err(|e| format!("running {cmd:?}: {e}"))?;
    let Some(out) = out else {
        return Err(format!("{cmd:?} did not finish within {BUILD_TIMEOUT:?}; killed"));
    };
    if !out.status.success() {
        return Err(format!("{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    let bin = profile_dir.join("anycast");
    if !bin.exists() {
        return Err(format!("{cmd:?} succeeded but {} does not exist", bin.display()));
    }
    Ok(bin)
}

/// Runs `cmd` to completion and returns its output, or `None` (after killing it) if it takes
/// longer than `timeout`.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> std::io::Result<Option<Output>> {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let (output, finished) = wait_within(child, timeout)?;
    Ok(finished.then_some(output))
}

/// Waits for `child` (stdout and stderr piped) at most `timeout`, reading its output
/// meanwhile (a full pipe would block it), and kills it if it is still running then.
/// Returns its output and whether it finished by itself.
pub fn wait_within(mut child: Child, timeout: Duration) -> std::io::Result<(Output, bool)> {
    fn read_all(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    }
    let (stdout, stderr) = (read_all(child.stdout.take()), read_all(child.stderr.take()));
    let deadline = Instant::now() + timeout;
    let mut finished = true;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            finished = false;
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait()?;
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    Ok((Output { status, stdout, stderr }, finished))
}

/// Removes the pins and files of processes that no longer exist (killed before their `Drop`
/// ran), once per process: their links would otherwise stay attached to interfaces that are
/// gone and their maps stay allocated. (Their daemons died with them: `PR_SET_PDEATHSIG`.)
fn sweep_stale(bin: &Path) {
    fn stale(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
        entries
            .flatten()
            .filter(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pid = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next());
                pid.is_some_and(|pid| pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists())
            })
            .map(|entry| entry.path())
            .collect()
    }
    SWEEP.call_once(|| {
        for pins in stale(Path::new(BPFFS)) {
            if let Err(e) = detach(bin, &pins) {
                teardown::warn(format_args!("pins of a process that is gone: {e}"));
            }
        }
        for files in stale(&std::env::temp_dir()) {
            if let Err(e) = fs::remove_dir_all(&files) {
                teardown::warn(format_args!("removing {} of a process that is gone: {e}", files.display()));
            }
        }
    });
}

/// `anycast detach --pin-dir DIR`: the program off its interfaces, the pins removed.
pub fn detach(bin: &Path, pin_dir: &Path) -> Result<(), String> {
    let out = output_within(Command::new(bin).arg("detach").arg("--pin-dir").arg(pin_dir), DETACH_TIMEOUT)
        .map_err(|e| format!("running {} detach: {e}", bin.display()))?
        .ok_or_else(|| format!("anycast detach --pin-dir {} hung; killed", pin_dir.display()))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "anycast detach --pin-dir {}: {}",
            pin_dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// One controller of one site: its files, its pins and, while started, its process.
pub struct Daemon<'ns> {
    ns: &'ns Netns,
    bin: PathBuf,
    /// Config, state directory and logs.
    dir: PathBuf,
    pin_dir: PathBuf,
    child: Option<Child>,
    /// Log of the current (or last) process: one file per start.
    log: PathBuf,
    starts: u32,
    /// `[admin] peer_listen`, when the sibling sites poll this one.
    peer_listen: Option<std::net::SocketAddr>,
    /// `[admin] listen` (/metrics): [`ADMIN_LISTEN`] unless a test scrapes it from elsewhere.
    listen: std::net::SocketAddr,
    /// `[admin] socket_group`.
    socket_group: Option<String>,
    /// `[datapath] flow_table_size` of the configs written from now on.
    flow_table_size: u32,
    /// Whether the configs written from now on carry the options of this build that a
    /// previous release does not know (and would refuse): `[datapath] hash_key`, `[admin]
    /// socket` and `peer_key_file`.
    current_options: bool,
    /// The log line that says the daemon is up (another release may say it otherwise).
    ready: &'static str,
    /// Environment added to the next starts (fault injection).
    env: Vec<(String, String)>,
    /// More `[datapath]` lines for the configs written from now on.
    datapath: String,
    /// Configs without `[datapath] hash_key`: the controller generates one into its state
    /// directory.
    generated_key: bool,
}

impl<'ns> Daemon<'ns> {
    /// A daemon for namespace `ns`, not started yet, of the binary of this build
    /// ([`anycast_bin`]). Write its config with [`Daemon::write_config`] first.
    pub fn new(ns: &'ns Netns) -> Result<Daemon<'ns>> {
        Daemon::with_binary(ns, anycast_bin()?)
    }

    /// [`Daemon::new`] with `config` written and the daemon started ([`Daemon::start`]: call
    /// it from the test's own thread).
    pub fn started(ns: &'ns Netns, config: &str) -> Result<Daemon<'ns>> {
        let mut daemon = Daemon::new(ns)?;
        daemon.write_config(config)?;
        daemon.start()?;
        Ok(daemon)
    }

    /// [`Daemon::new`] with the binary `bin`.
    pub fn with_binary(ns: &'ns Netns, bin: &Path) -> Result<Daemon<'ns>> {
        sweep_stale(bin);
        let id = format!("{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(format!("{PREFIX}{id}"));
        let state = dir.join("state");
        fs::create_dir_all(&state).map_err(io("creating", &state))?;
        let key = dir.join("peer.key");
        fs::write(&key, PEER_KEY).map_err(io("writing", &key))?;
        // The controller refuses to start on a host that does not forward what its remote
        // sites need: the test's hosts forward.
        ns.enable_forwarding().map_err(|e| DaemonError::Io {
            what: "enabling forwarding in",
            path: ns.name().into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(Daemon {
            ns,
            bin: bin.to_owned(),
            log: dir.join("anycast-0.log"),
            dir,
            pin_dir: Path::new(BPFFS).join(format!("{PREFIX}{id}")),
            child: None,
            starts: 0,
            peer_listen: None,
            listen: ADMIN_LISTEN.parse().expect("ADMIN_LISTEN is an address"),
            socket_group: None,
            flow_table_size: FLOW_TABLE_SIZE,
            current_options: true,
            ready: READY,
            env: Vec::new(),
            datapath: String::new(),
            generated_key: false,
        })
    }

    /// Writes the configs from now on without `[datapath] hash_key`: the controller then
    /// generates one into `state/hash_key` of this daemon's directory.
    pub fn generate_hash_key(&mut self) {
        self.generated_key = true;
    }

    /// Runs `bin` from the next start on (another release of the controller on the same
    /// pins, state and config), which says it is up with `ready`; `current_options`: whether
    /// its configs carry this build's new options.
    pub fn set_binary(&mut self, bin: &Path, ready: &'static str, current_options: bool) {
        self.bin = bin.to_owned();
        self.ready = ready;
        self.current_options = current_options;
    }

    /// Sets (or with `None` removes) an environment variable of the next starts.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_owned(), v.to_owned()));
        }
    }

    /// Adds `socket_group = GROUP` to the `[admin]` section of the configs written from now
    /// on: the admin socket's group.
    pub fn set_socket_group(&mut self, group: &str) {
        self.socket_group = Some(group.to_owned());
    }

    /// Adds `peer_listen = ADDR` to the `[admin]` section of the configs written from now on.
    pub fn set_peer_listen(&mut self, addr: std::net::SocketAddr) {
        self.peer_listen = Some(addr);
    }

    /// Sets `[admin] listen` (the /metrics listener) of the configs written from now on, e.g.
    /// `0.0.0.0:9100` for a Prometheus in another namespace; [`Daemon::get`] follows it.
    pub fn set_listen(&mut self, addr: std::net::SocketAddr) {
        self.listen = addr;
    }

    /// Sets `[datapath] flow_table_size` of the configs written from now on.
    /// Adds `line` (e.g. `icmp_rate = 50`) to the `[datapath]` section of the configs
    /// written from now on.
    pub fn add_datapath_option(&mut self, line: &str) {
        self.datapath += line;
        self.datapath.push('\n');
    }

    /// Forgets the lines [`Daemon::add_datapath_option`] added (for the next config written).
    pub fn clear_datapath_options(&mut self) {
        self.datapath.clear();
    }

    pub fn set_flow_table_size(&mut self, entries: u32) {
        self.flow_table_size = entries;
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("anycast.toml")
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The daemon's admin socket (`[admin] socket`).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// Its work directory: config, state directory, logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the config file: `body` (`[local]`, `[[sites]]`, `[[vips]]`: no `[datapath]`
    /// or `[admin]`) followed by the `[datapath]` and `[admin]` sections that keep this
    /// daemon's pins, state and listener to itself, and give it the suite's flow hash key
    /// ([`HASH_KEY`], so that tests predict where a flow goes). They come last so that the line
    /// numbers of `body` are the file's.
    pub fn write_config(&self, body: &str) -> Result<()> {
        self.write_config_to("anycast.toml", body).map(drop)
    }

    /// [`Daemon::write_config`] to another file of this daemon's directory (a config for
    /// another `anycast` command); returns its path.
    pub fn write_config_to(&self, name: &str, body: &str) -> Result<PathBuf> {
        // The options this build added, which a previous release would refuse.
        let (key, admin) = if self.current_options {
            (
                if self.generated_key {
                    String::new()
                } else {
                    format!("hash_key = \"{}\"\n", hash_key_hex())
                },
                format!(
                    "socket = \"{}\"\npeer_key_file = \"{}\"\n",
                    self.socket().display(),
                    self.dir.join("peer.key").display()
                ),
            )
        } else {
            (String::new(), String::new())
        };
        let mut text = format!(
            "{body}\n\n[datapath]\nflow_table_size = {}\npin_dir = \"{}\"\n{key}{}\n\
             [admin]\nlisten = \"{}\"\nstate_dir = \"{}\"\n{admin}",
            self.flow_table_size,
            self.pin_dir.display(),
            self.datapath,
            self.listen,
            self.dir.join("state").display(),
        );
        if let Some(addr) = self.peer_listen {
            text += &format!("peer_listen = \"{addr}\"\n");
        }
        if let Some(group) = &self.socket_group {
            text += &format!("socket_group = \"{group}\"\n");
        }
        let path = self.dir.join(name);
        fs::write(&path, text).map_err(io("writing", &path))?;
        Ok(path)
    }

    /// `anycast ARGS` as a command, to be spawned inside the namespace with
    /// [`Netns::spawn`].
    fn command(&self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Command {
        let mut cmd = Command::new(&self.bin);
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
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = self.ns.spawn(&mut cmd).map_err(io("starting", &self.bin))?;
        self.child = Some(child);
        self.wait_for_log(0, self.ready, START_TIMEOUT)
    }

    /// Runs `anycast ARGS` once inside the namespace, with `env` added to its environment,
    /// and returns its output. An error if it runs longer than `timeout` (it is killed): a
    /// command that hangs must not pass for one that failed.
    pub fn cli(
        &self,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Output> {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut cmd = self.command(&args);
        cmd.envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = self.ns.spawn(&mut cmd).map_err(io("starting", &self.bin))?;
        let (output, finished) = wait_within(child, timeout).map_err(io("waiting for", &self.bin))?;
        if !finished {
            return Err(DaemonError::CliTimeout {
                args: args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
                timeout,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        Ok(output)
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
            return Err(io("signalling", &self.bin)(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Sends `signal`, waits up to `grace` for the daemon to exit, then SIGKILLs it. Returns
    /// how it ended, and whether it exited by itself.
    pub fn stop(&mut self, signal: i32, grace: Duration) -> Result<(ExitStatus, bool)> {
        let mut child = self.child.take().ok_or(DaemonError::NotRunning)?;
        if let Some(status) = child.try_wait().map_err(io("waiting for", &self.bin))? {
            return Ok((status, true));
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().map_err(io("waiting for", &self.bin))? {
                return Ok((status, true));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().map_err(io("killing", &self.bin))?;
        Ok((child.wait().map_err(io("waiting for", &self.bin))?, false))
    }

    /// The exit status, if the process has exited (reaped).
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().map_err(io("waiting for", &self.bin)),
            None => Err(DaemonError::NotRunning),
        }
    }

    /// SIGKILL (no cleanup in the daemon at all: the harshest restart) and reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().ok_or(DaemonError::NotRunning)?;
        child.kill().map_err(io("killing", &self.bin))?;
        child.wait().map_err(io("waiting for", &self.bin))
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
                Some(child) => child.try_wait().map_err(io("waiting for", &self.bin))?,
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

    /// `GET path` from the daemon's TCP listener (from a thread inside its namespace, where
    /// its 127.0.0.1 is): `/metrics`, the only thing it serves; returns the body of a 2xx
    /// reply. The admin API is on [`Daemon::socket`].
    pub fn get(&self, path: &str) -> Result<String> {
        let mut at = self.listen;
        if at.ip().is_unspecified() {
            at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let url = format!("http://{at}{path}");
        metrics::get(self.ns, &url, &[], HTTP_TIMEOUT).map_err(|message| DaemonError::Http { url, message })
    }

    /// The log of the current (or last) process: where it is.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.pin_dir.exists() {
            if let Err(e) = detach(&self.bin, &self.pin_dir) {
                teardown::warn(e);
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            teardown::warn(format_args!("removing {}: {e}", self.dir.display()));
        }
    }
}
