//! A long-running child (the `anycast` controller inside a lab namespace) that is always
//! stopped: politely with SIGINT, then with SIGKILL after a grace period. Dropping the guard
//! stops it, so an error or a panic in the lab never leaves a controller running. (A
//! controller run with `--config` leaves its pinned data path behind when it stops: the
//! lab removes that with `anycast detach`.) Also: reading its `/metrics`.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::toolchain;

/// How long a `/metrics` request may take: the server is local, an answer is immediate.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Daemon {
    name: String,
    child: Option<Child>,
}

impl Daemon {
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Daemon> {
        println!("lab: starting {name}: {}", toolchain::describe(cmd));
        // If xtask itself is killed (SIGKILL: no Drop runs), the kernel sends the child
        // SIGINT, so it still exits. PDEATHSIG survives exec (it is only cleared for
        // set-user-ID programs), so it holds for what `nsenter` runs. Its own process group
        // keeps the terminal's Ctrl-C away from it: the lab stops it in its own time, after
        // the last counters have been read.
        // SAFETY: prctl and setpgid are async-signal-safe, as required between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 || libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name} (`{}`): {e}", toolchain::describe(cmd)))?;
        Ok(Daemon { name: name.to_owned(), child: Some(child) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid, while it has not been stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if it has already exited.
    pub fn exited(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }

    /// SIGINT, wait up to `grace`, then SIGKILL. Returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> io::Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else { return Ok(None) };
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let pid = libc::pid_t::try_from(child.id()).expect("pids fit pid_t");
        // SAFETY: kill() has no memory-safety preconditions; the pid is our own unreaped
        // child, so it cannot have been reused by another process.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!("lab: {} did not stop within {grace:?} of SIGINT; killing it", self.name);
        child.kill()?;
        child.wait().map(Some)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop(Duration::from_secs(5)) {
            eprintln!("lab: stopping {}: {e}", self.name);
        }
    }
}

/// `GET path` from the controller's admin server at `addr` (HTTP/1.0: the server closes
/// the connection after the answer, so reading to the end is the whole response). The
/// caller must be in the controller's network namespace: the server binds 127.0.0.1 there.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response).with_context(|| format!("reading the answer of {addr}{path}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("GET http://{addr}{path}: {status}");
    }
    Ok(body.to_owned())
}

/// The value of one Prometheus series, `name{labels}` exactly as exposed; 0 when absent
/// (a counter that has not been exported yet has counted nothing).
pub fn metric(text: &str, series: &str) -> u64 {
    gauge(text, series).map_or(0, |v| v as u64)
}

/// The value of one series as exposed (a ratio, say); `None` when absent.
pub fn gauge(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
}
