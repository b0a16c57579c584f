//! A long-running child (the `anycast` controller inside a lab namespace) that is always
//! stopped: politely with SIGINT (the controller detaches its XDP program on it), then with
//! SIGKILL after a grace period. Dropping the guard stops it, so an error or a panic in the
//! lab never leaves a controller running.

use std::{
    io,
    os::unix::process::CommandExt,
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use crate::toolchain;

pub struct Daemon {
    name: String,
    child: Option<Child>,
}

impl Daemon {
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Daemon> {
        println!("lab: starting {name}: {}", toolchain::describe(cmd));
        // If xtask itself is killed (SIGKILL: no Drop runs), the kernel sends the child
        // SIGINT, so it still detaches and exits. PDEATHSIG survives exec (it is only
        // cleared for set-user-ID programs), so it holds for what `ip netns exec` runs.
        // SAFETY: prctl is async-signal-safe, as required between fork and exec.
        unsafe {
            cmd.pre_exec(|| match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) {
                0 => Ok(()),
                _ => Err(io::Error::last_os_error()),
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
