//! Network-namespace labs: named namespaces joined by veth pairs with IPv4 addresses,
//! made with iproute2 and always removed. Names carry the xtask pid, so two labs can run at
//! once and a lab left behind by a killed xtask is recognised and removed by the next one.
//!
//! Deleting a namespace destroys the veth ends inside it, and destroying one end of a veth
//! destroys its peer, so removing the namespaces removes every link the lab made. Links are
//! created directly inside their namespaces (`ip link add ... netns A peer ... netns B`), so
//! no interface ever appears in the host's namespace.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::{self, JoinHandle},
};

use anyhow::{Context, Result, bail};

use crate::toolchain;

const PREFIX: &str = "anycast-lab-";
/// Where `ip netns add` bind-mounts namespaces.
const NETNS_DIR: &str = "/run/netns";

/// The namespaces of one lab; dropping it deletes them all.
pub struct Lab {
    id: String,
    namespaces: Vec<Netns>,
}

/// A named network namespace.
#[derive(Clone, Debug)]
pub struct Netns {
    name: String,
}

/// One end of a veth pair: the namespace it lives in, its name there, its address.
pub struct End<'a> {
    pub netns: &'a Netns,
    pub iface: &'a str,
    pub addr: Ipv4Addr,
}

impl Lab {
    pub fn new() -> Result<Lab> {
        remove_stale()?;
        Ok(Lab { id: format!("{PREFIX}{}-", std::process::id()), namespaces: Vec::new() })
    }

    /// Creates namespace `<lab id><role>` with loopback up.
    pub fn netns(&mut self, role: &str) -> Result<Netns> {
        let netns = Netns { name: format!("{}{role}", self.id) };
        ip(&["netns", "add", &netns.name])?;
        self.namespaces.push(netns.clone());
        ip(&["-n", &netns.name, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// A veth pair between `a` and `b`, both up, addressed in one /`prefix_len` subnet.
    pub fn veth(&mut self, a: End<'_>, b: End<'_>, prefix_len: u8) -> Result<()> {
        ip(&[
            "link",
            "add",
            a.iface,
            "netns",
            &a.netns.name,
            "type",
            "veth",
            "peer",
            "name",
            b.iface,
            "netns",
            &b.netns.name,
        ])?;
        for end in [a, b] {
            let cidr = format!("{}/{prefix_len}", end.addr);
            ip(&["-n", &end.netns.name, "addr", "add", &cidr, "dev", end.iface])?;
            ip(&["-n", &end.netns.name, "link", "set", end.iface, "up"])?;
        }
        Ok(())
    }

    pub fn names(&self) -> Vec<String> {
        self.namespaces.iter().map(|n| n.name.clone()).collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for netns in self.namespaces.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &netns.name]) {
                eprintln!("lab: could not delete namespace {}: {e:#}", netns.name);
            }
        }
    }
}

impl Netns {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` run inside this namespace with `nsenter --net`, which (unlike `ip netns
    /// exec`) keeps the host's mount namespace: a controller pins under the host's
    /// /sys/fs/bpf, so its data path outlives the command (docs/controller.md). nsenter
    /// execs the program, so the child's pid is the program's own and signals reach it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", Path::new(NETNS_DIR).join(&self.name).display())).arg(program);
        cmd
    }

    /// `program ARGS` inside this namespace, run to completion; its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        output(self.command(program).args(args))
    }

    /// `ip ARGS` inside this namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip_output(&all)
    }

    /// Writes a sysctl of this namespace, e.g. `net/ipv4/conf/all/forwarding`. /proc/sys/net
    /// resolves to the namespace of the task that opens it, so the write runs on a thread
    /// inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = Path::new("/proc/sys").join(key);
        let value = value.to_owned();
        self.spawn(move || {
            std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("sysctl thread panicked"))?
    }

    /// The MAC address of `iface` (from `ip -o link`: /sys/class/net shows the namespace
    /// that mounted sysfs, not the caller's).
    pub fn mac(&self, iface: &str) -> Result<String> {
        let out = self.ip(&["-o", "link", "show", "dev", iface])?;
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_owned)
            .with_context(|| format!("no MAC address for {iface} in {}", self.name))
    }

    /// `ip -d link show dev IFACE` inside this namespace, e.g. to see an attached XDP program.
    pub fn link_details(&self, iface: &str) -> Result<String> {
        ip_output(&["-n", &self.name, "-d", "link", "show", "dev", iface])
    }

    /// Runs `f` on a new thread that has entered this namespace: sockets it opens belong to
    /// the namespace (a socket keeps the namespace it was created in), while the rest of
    /// the process stays in the host's. setns(CLONE_NEWNET) changes only the calling thread.
    pub fn spawn<T, F>(&self, f: F) -> JoinHandle<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let path = Path::new(NETNS_DIR).join(&self.name);
        thread::spawn(move || {
            enter(&path)?;
            f()
        })
    }
}

fn enter(path: &PathBuf) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns only reads the fd, which `file` keeps open for the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("entering {}", path.display()));
    }
    Ok(())
}

/// Namespaces of labs whose xtask process is gone (killed with SIGKILL, or a power cut).
fn remove_stale() -> Result<()> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = lab_pid(&name) else { continue };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            eprintln!("lab: removing namespace {name} left by an earlier lab (pid {pid} is gone)");
            ip(&["netns", "del", &name])?;
        }
    }
    Ok(())
}

/// The pid in a lab namespace name `anycast-lab-<pid>-<role>`.
fn lab_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split_once('-')?.0.parse().ok()
}

/// Namespaces of this lab naming scheme that exist now (for leak checks).
pub fn existing_lab_namespaces() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| lab_pid(n).is_some())
                .collect()
        })
        .unwrap_or_default()
}

fn ip(args: &[&str]) -> Result<()> {
    ip_output(args).map(drop)
}

fn ip_output(args: &[&str]) -> Result<String> {
    output(Command::new("ip").args(args))
}

fn output(cmd: &mut Command) -> Result<String> {
    cmd.stdin(Stdio::null());
    let out = cmd.output().with_context(|| format!("running `{}`", toolchain::describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            toolchain::describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use std::{
        net::{SocketAddr, UdpSocket},
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        time::Duration,
    };

    use testkit::require::{Need, require};

    use super::*;

    #[test]
    fn lab_pid_parses_only_lab_names() {
        assert_eq!(lab_pid("anycast-lab-4242-client"), Some(4242));
        assert_eq!(lab_pid("anycast-lab-x-client"), None);
        assert_eq!(lab_pid("other-4242-client"), None);
    }

    /// Builds a two-namespace lab, sends one datagram across its veth, and checks that
    /// dropping the lab leaves neither namespace behind.
    #[test]
    fn lab_netns_veth_carries_traffic_and_is_torn_down() -> Result<()> {
        if !require("lab_netns_veth_carries_traffic_and_is_torn_down", &[Need::Kernel]) {
            return Ok(());
        }
        let mut lab = Lab::new()?;
        let left = lab.netns("t-left")?;
        let right = lab.netns("t-right")?;
        let (left_addr, right_addr) = (Ipv4Addr::new(10, 250, 0, 1), Ipv4Addr::new(10, 250, 0, 2));
        lab.veth(
            End { netns: &left, iface: "veth-l", addr: left_addr },
            End { netns: &right, iface: "veth-r", addr: right_addr },
            24,
        )?;
        let names = lab.names();
        assert!(names.iter().all(|n| Path::new(NETNS_DIR).join(n).exists()));

        let dst = SocketAddr::from((right_addr, 9));
        let received = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&received);
        let receiver = right.spawn(move || {
            let socket = UdpSocket::bind(dst)?;
            socket.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = [0u8; 16];
            let result = socket.recv_from(&mut buf);
            done.store(true, Ordering::Relaxed);
            let (n, from) = result?;
            Ok((buf[..n].to_vec(), from))
        });
        // The receiver binds asynchronously: resend, bounded, until it has one.
        let sender = left.spawn(move || {
            let socket = UdpSocket::bind((left_addr, 0))?;
            for _ in 0..250 {
                if received.load(Ordering::Relaxed) {
                    break;
                }
                socket.send_to(b"lab", dst)?;
                thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        });
        let (payload, from) = receiver.join().expect("receiver thread")?;
        sender.join().expect("sender thread")?;
        assert_eq!(payload, b"lab");
        assert_eq!(from.ip(), left_addr);

        drop(lab);
        for name in names {
            assert!(!Path::new(NETNS_DIR).join(&name).exists(), "{name} survived teardown");
        }
        Ok(())
    }
}
