//! Network-namespace topologies for tests and the lab: named namespaces, veth pairs,
//! addresses, routes, static neighbours and sysctls, torn down when the [`Netns`] value is
//! dropped (also when the test panics: `Drop` runs during unwinding).
//!
//! Everything is configured with `ip` (iproute2) rather than netlink from Rust: the commands
//! are the ones an operator would type, so a failing setup step prints a command and an
//! error message that can be replayed by hand, and no netlink crate (async, large) is
//! needed for a few dozen configuration calls per test.
//!
//! Names are unique per test: `acy<pid>-<counter>-<tag>`, so tests of one binary (threads)
//! and of concurrent binaries (pids) never collide, and what a killed process left behind is
//! recognised by its pid and removed by the next one. Interfaces are created directly inside
//! their namespaces (`ip -n NS link add ... peer ... netns PEER`), so their names only need
//! to be unique within a namespace; they are still checked against the kernel's 15-byte
//! limit (`IFNAMSIZ` - 1) up front for a clear error.

use std::{
    ffi::CString,
    fs::File,
    os::fd::AsRawFd,
    path::Path,
    process::Command,
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
};

use crate::{frames::PacketSocket, teardown};

/// Prefix of every namespace the tests and the lab create.
pub const PREFIX: &str = "acy";
/// Where `ip netns add` bind-mounts the namespaces it makes.
pub const NETNS_DIR: &str = "/run/netns";
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

static COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("could not run `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("interface name {0:?} is longer than {IFNAME_MAX} bytes")]
    IfName(String),
    #[error("no interface {ifname} in namespace {ns}")]
    NoInterface { ns: String, ifname: String },
    #[error("{what} in namespace {ns}: {source}")]
    Io { ns: String, what: String, source: std::io::Error },
}

pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// Runs `ip ARGS...` and returns its stdout.
fn ip(args: &[&str]) -> Result<String> {
    let cmd = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn { cmd: cmd.clone(), source })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes namespace `name` (and with it every interface in it, and their veth peers).
pub fn delete(name: &str) -> Result<()> {
    ip(&["netns", "del", name]).map(drop)
}

/// Deletes namespaces left behind by test processes that no longer exist (killed before
/// their `Drop` ran), once per process.
fn sweep_stale() {
    SWEEP.call_once(|| {
        let Ok(dir) = std::fs::read_dir(NETNS_DIR) else { return };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                if let Err(e) = delete(&name) {
                    teardown::warn(format_args!("removing namespace {name} of a process that is gone: {e}"));
                }
            }
        }
    });
}

/// A named network namespace, deleted (with every interface in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `acy<pid>-<n>-<tag>` with its loopback up.
    pub fn new(tag: &str) -> Result<Netns> {
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <this namespace> ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Creates a veth pair: `ifname` here, `peer_ifname` in `peer` (which may be `self`),
    /// both up.
    pub fn add_veth(&self, ifname: &str, peer: &Netns, peer_ifname: &str) -> Result<()> {
        for n in [ifname, peer_ifname] {
            if n.len() > IFNAME_MAX {
                return Err(NetnsError::IfName(n.to_string()));
            }
        }
        self.ip(&["link", "add", ifname, "type", "veth", "peer", "name", peer_ifname, "netns", &peer.name])?;
        self.ip(&["link", "set", ifname, "up"])?;
        peer.ip(&["link", "set", peer_ifname, "up"])?;
        Ok(())
    }

    /// Adds `cidr` (e.g. `10.0.0.1/24`, `fd00::1/64`) to `ifname`. IPv6 addresses skip
    /// duplicate address detection so that they (and their prefix route) are usable at once
    /// instead of after DAD's second or so.
    pub fn add_addr(&self, ifname: &str, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", ifname];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    pub fn set_mac(&self, ifname: &str, mac: [u8; 6]) -> Result<()> {
        self.ip(&["link", "set", ifname, "address", &fmt_mac(mac)]).map(drop)
    }

    pub fn set_mtu(&self, ifname: &str, mtu: u32) -> Result<()> {
        self.ip(&["link", "set", ifname, "mtu", &mtu.to_string()]).map(drop)
    }

    /// `ip route add ROUTE...`, e.g. `["198.51.100.0/24", "via", "10.0.0.2"]`.
    pub fn add_route(&self, route: &[&str]) -> Result<()> {
        let mut args = vec!["route", "add"];
        args.extend_from_slice(route);
        self.ip(&args).map(drop)
    }

    /// A PERMANENT neighbour entry: the FIB (and `bpf_fib_lookup`) resolves `addr` to `mac`
    /// without ARP/ND, which a test topology without real hosts behind it cannot answer.
    pub fn add_neigh(&self, ifname: &str, addr: &str, mac: [u8; 6]) -> Result<()> {
        self.ip(&["neigh", "replace", addr, "lladdr", &fmt_mac(mac), "dev", ifname, "nud", "permanent"])
            .map(drop)
    }

    /// Writes a sysctl of this namespace, e.g. `("net/ipv4/conf/all/forwarding", "1")`.
    /// `/proc/sys/net` resolves to the namespace of the task that opens it, so the write
    /// runs on a thread inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = Path::new("/proc/sys").join(key);
        self.run(|| std::fs::write(&path, value)).map_err(|source| NetnsError::Io {
            ns: self.name.clone(),
            what: format!("sysctl {key}={value}"),
            source,
        })
    }

    /// Turns on IPv4 and IPv6 forwarding for every interface, present and future.
    /// `bpf_fib_lookup` answers FWD_DISABLED on an ingress device without forwarding.
    pub fn enable_forwarding(&self) -> Result<()> {
        for key in [
            "net/ipv4/conf/all/forwarding",
            "net/ipv4/conf/default/forwarding",
            "net/ipv6/conf/all/forwarding",
            "net/ipv6/conf/default/forwarding",
        ] {
            self.sysctl(key, "1")?;
        }
        Ok(())
    }

    /// The ifindex of `ifname` in this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let name = CString::new(ifname).map_err(|_| NetnsError::IfName(ifname.to_string()))?;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let index = self.run(|| unsafe { libc::if_nametoindex(name.as_ptr()) });
        if index == 0 {
            return Err(NetnsError::NoInterface { ns: self.name.clone(), ifname: ifname.to_string() });
        }
        Ok(index)
    }

    /// The MAC address of `ifname`.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        // /sys/class/net shows the interfaces of the namespace that mounted sysfs, not of
        // the reading thread, so ask `ip` instead.
        let out = self.ip(&["-o", "link", "show", "dev", ifname])?;
        let mac =
            out.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).and_then(parse_mac).ok_or_else(
                || NetnsError::NoInterface { ns: self.name.clone(), ifname: ifname.to_string() },
            )?;
        Ok(mac)
    }

    /// Checksums in software for what `ifname` sends (`ethtool -K IFNAME tx off`): a veth
    /// pair hands its peer a CHECKSUM_PARTIAL skb whose UDP or TCP checksum holds only the
    /// pseudo-header sum, which is wrong once XDP has turned the packet into a frame
    /// (redirect, encap) and a new skb without that note is built.
    pub fn software_checksums(&self, ifname: &str) -> Result<()> {
        let cmd = format!("ethtool -K {ifname} tx off");
        // A child forked from a thread inside the namespace is in it.
        let out = self
            .run(|| Command::new("ethtool").args(["-K", ifname, "tx", "off"]).output())
            .map_err(|source| NetnsError::Spawn { cmd: cmd.clone(), source })?;
        if !out.status.success() {
            return Err(NetnsError::Command {
                cmd,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// Sends `frame` (a whole Ethernet frame, e.g. with VLAN tags that no interface of
    /// this namespace would add) out of `ifname` through a packet socket.
    pub fn send_frame(&self, ifname: &str, frame: &[u8]) -> Result<()> {
        PacketSocket::open(self, ifname)?.send(frame).map_err(|source| NetnsError::Io {
            ns: self.name.clone(),
            what: format!("sending a frame on {ifname}"),
            source,
        })
    }

    /// Spawns `cmd` inside this namespace: the child joins it with setns(2) between fork and
    /// exec (the parent stays where it is), and gets `PR_SET_PDEATHSIG = SIGKILL`, so it dies
    /// with the thread that spawned it even if the test (or the lab) is killed. It runs in a
    /// process group of its own, so a Ctrl-C at the terminal reaches only the test or the
    /// lab, which stops its children in its own time.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<std::process::Child> {
        use std::os::unix::process::CommandExt;
        let netns = File::open(Path::new(NETNS_DIR).join(&self.name))?;
        let fd = netns.as_raw_fd();
        // SAFETY: setns, prctl and setpgid are async-signal-safe system calls, as required
        // between fork and exec; `netns` stays open until the spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::setpgid(0, 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()
    }

    /// Runs `f` on a dedicated thread that has joined this namespace (`setns(CLONE_NEWNET)`
    /// changes only the calling thread's namespace, so the caller's own thread is never
    /// moved). Sockets created inside stay in this namespace, and BPF_PROG_RUN resolves
    /// `ctx_in.ingress_ifindex` (and `bpf_fib_lookup` its FIB) in it. A panic in `f` is
    /// re-raised on the caller's thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new(NETNS_DIR).join(&self.name);
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(s, move || {
                    let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                    // SAFETY: a valid namespace fd; affects only this thread.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns {}: {}", path.display(), std::io::Error::last_os_error());
                    f()
                })
                .expect("spawn netns thread");
            match handle.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its interfaces (and the veth peers elsewhere).
        if let Err(e) = delete(&self.name) {
            teardown::warn(format_args!("deleting namespace {}: {e}", self.name));
        }
    }
}

pub fn fmt_mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::require::{Need, require};

    #[test]
    fn netns_teardown_even_on_panic() {
        if !require("netns_teardown_even_on_panic", &[Need::Kernel]) {
            return;
        }
        let mut name = String::new();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let ns = Netns::new("panic").unwrap();
            ns.add_veth("p0", &ns, "p1").unwrap();
            name = ns.name().to_string();
            // `run` really enters the namespace: p0 exists there and not outside.
            assert!(ns.ifindex("p0").is_ok());
            let c = CString::new("p0").unwrap();
            // SAFETY: valid C string.
            assert_eq!(unsafe { libc::if_nametoindex(c.as_ptr()) }, 0, "p0 leaked into the test's namespace");
            panic!("a test failing inside its topology");
        }));
        assert!(outcome.is_err());
        assert!(!name.is_empty());
        assert!(!Path::new(NETNS_DIR).join(&name).exists(), "{name} survived the panic");
    }

    #[test]
    fn netns_rejects_long_interface_names() {
        if !require("netns_rejects_long_interface_names", &[Need::Kernel]) {
            return;
        }
        let ns = Netns::new("ifname").unwrap();
        let err = ns.add_veth("a-name-of-16-chr", &ns, "b").unwrap_err();
        assert!(matches!(err, NetnsError::IfName(_)), "{err}");
    }

    #[test]
    fn mac_round_trip() {
        let m = [0x02, 0, 0, 0xab, 0xcd, 0x01];
        assert_eq!(parse_mac(&fmt_mac(m)), Some(m));
        assert_eq!(parse_mac("02:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:01:02"), None);
    }
}
