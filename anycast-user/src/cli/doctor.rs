//! `anycast doctor`: every prerequisite of this host, each with what was found and, when
//! it is missing, the fix. Reads only: it changes nothing on the host.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, ExitCode},
};

use anycast_user::{
    config::{Config, NeighbourMode, SiteKind},
    daemon::preflight,
    datapath::{kernel, pin_lock::PinDirLock},
    neighbours::netlink::{Rtnl, state_name},
};
use anyhow::Result;
use serde::Serialize;

use super::admin::Target;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Ok,
    /// Works, but not as well as it could (generic XDP, a stale neighbour).
    Warn,
    /// Missing: the data path or the controller will not work as configured.
    Fail,
}

#[derive(Debug, Serialize)]
struct Check {
    name: String,
    verdict: Verdict,
    found: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn check(name: impl Into<String>, verdict: Verdict, found: impl Into<String>, fix: Option<String>) -> Check {
    Check { name: name.into(), verdict, found: found.into(), fix }
}

/// `ip -j ARGS`, parsed.
fn ip_json(args: &[&str]) -> Option<serde_json::Value> {
    let out = Command::new("ip").arg("-j").args(args).output().ok().filter(|o| o.status.success())?;
    serde_json::from_slice(&out.stdout).ok()
}

pub async fn run(target: &Target) -> Result<ExitCode> {
    let mut checks = vec![kernel(), btf(), privileges(), bpffs()];
    match Config::load(&target.config) {
        Err(e) => checks.push(check(
            "config",
            Verdict::Fail,
            e.to_string(),
            Some(format!(
                "write {} (see deploy/anycast.toml), or give --config FILE",
                target.config.display()
            )),
        )),
        Ok(config) => {
            checks.push(check("config", Verdict::Ok, format!("{} is valid", target.config.display()), None));
            checks.extend(interfaces(&config));
            checks.extend(forwarding(&config));
            checks.extend(neighbours(&config));
            checks.push(pin_dir(&config));
            checks.extend(admin(&config));
            if let Some(c) = bird(&config) {
                checks.push(c);
            }
        }
    }
    let failed = checks.iter().any(|c| c.verdict == Verdict::Fail);
    if target.json() {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            let mark = match c.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            println!("{mark} {:<22} {}", c.name, c.found);
            if let Some(fix) = &c.fix {
                println!("     {:<22} fix: {fix}", "");
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The running kernel against the data path's floor (`datapath::kernel`, which the daemon
/// checks at start too).
fn kernel() -> Check {
    let release = kernel::release();
    let floor = format!("{}.{}", kernel::FLOOR.0, kernel::FLOOR.1);
    match kernel::check(&release) {
        Ok(()) => check("kernel", Verdict::Ok, format!("{release} (floor {floor})"), None),
        Err(e) => check("kernel", Verdict::Fail, e.to_string(), Some(format!("run Linux {floor} or newer"))),
    }
}

fn btf() -> Check {
    let path = "/sys/kernel/btf/vmlinux";
    if Path::new(path).exists() {
        check("BTF", Verdict::Ok, format!("{path} present"), None)
    } else {
        check(
            "BTF",
            Verdict::Fail,
            format!("{path} missing"),
            Some("a kernel built with CONFIG_DEBUG_INFO_BTF=y".into()),
        )
    }
}

/// Root, or the capabilities the systemd unit grants (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON,
/// CAP_NET_RAW).
fn privileges() -> Check {
    const NEEDED: [(u32, &str); 4] =
        [(39, "CAP_BPF"), (12, "CAP_NET_ADMIN"), (38, "CAP_PERFMON"), (13, "CAP_NET_RAW")];
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_owned())))
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> =
        NEEDED.iter().filter(|(bit, _)| eff & (1 << bit) == 0).map(|(_, n)| *n).collect();
    if missing.is_empty() {
        check("privileges", Verdict::Ok, "CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_NET_RAW", None)
    } else {
        check(
            "privileges",
            Verdict::Fail,
            format!("missing {}", missing.join(", ")),
            Some("run as root, or under the systemd unit (AmbientCapabilities)".into()),
        )
    }
}

fn bpffs() -> Check {
    let fs = rustix::fs::statfs("/sys/fs/bpf");
    // BPF_FS_MAGIC from linux/magic.h.
    match fs {
        Ok(s) if s.f_type == 0xcafe_4a11 => check("bpffs", Verdict::Ok, "/sys/fs/bpf is bpffs", None),
        _ => check(
            "bpffs",
            Verdict::Warn,
            "/sys/fs/bpf is not bpffs (the daemon mounts it)",
            Some("mount -t bpf bpf /sys/fs/bpf (systemd does at boot)".into()),
        ),
    }
}

/// Per interface: exists, and the XDP mode the kernel runs it in.
fn interfaces(config: &Config) -> Vec<Check> {
    config
        .local
        .interfaces
        .iter()
        .map(|iface| {
            let name = format!("XDP on {iface}");
            let Some(link) = ip_json(&["-d", "link", "show", "dev", iface]) else {
                return check(
                    name,
                    Verdict::Fail,
                    "no such interface",
                    Some(format!("create {iface}, or fix [local] interfaces")),
                );
            };
            let xdp = &link[0]["xdp"];
            // IFLA_XDP_ATTACHED: 1 driver (native), 2 generic (skb), 3 offloaded.
            match xdp["mode"].as_u64() {
                Some(1) => check(name, Verdict::Ok, "attached, native (driver) mode", None),
                Some(3) => check(name, Verdict::Ok, "attached, offloaded to the NIC", None),
                Some(2) => check(
                    name,
                    Verdict::Warn,
                    "attached in generic (skb) mode: works, several times slower",
                    Some(format!("a driver with native XDP for {iface} (see `ethtool -i {iface}`)")),
                ),
                _ => {
                    check(name, Verdict::Ok, "exists; no program attached now (`anycast run` attaches)", None)
                }
            }
        })
        .collect()
}

fn forwarding(config: &Config) -> Vec<Check> {
    let findings = preflight::forwarding_findings(config);
    if findings.is_empty() {
        let any_remote = config.sites.iter().any(|s| matches!(s.kind, SiteKind::Remote { .. }));
        let found =
            if any_remote { "every interface forwards what the remote sites need" } else { "no remote site" };
        return vec![check("forwarding", Verdict::Ok, found, None)];
    }
    findings.into_iter().map(|f| check("forwarding", Verdict::Fail, f.problem, Some(f.fix))).collect()
}

/// The next hops towards each remote site's endpoint (every path of the route), read the
/// way the daemon's neighbour keeper reads them: `bpf_fib_lookup` forwards only through a
/// resolved one (docs/datapath.md §5). The daemon keeps them resolved (`[local]
/// neighbours`); here they are only read.
fn neighbours(config: &Config) -> Vec<Check> {
    let mut rtnl = match Rtnl::open() {
        Ok(r) => r,
        Err(e) => return vec![check("next hops", Verdict::Fail, e.to_string(), None)],
    };
    let kept = config.local.neighbours != NeighbourMode::Off;
    let mut checks = Vec::new();
    for site in &config.sites {
        let SiteKind::Remote { endpoint, .. } = site.kind else { continue };
        let name = format!("next hop of {}", site.name);
        let hops = match rtnl.route_hops(endpoint) {
            Ok(h) => h,
            Err(e) => {
                checks.push(check(
                    name,
                    Verdict::Fail,
                    e.to_string(),
                    Some(format!("a route to {endpoint} (the site's tunnel endpoint)")),
                ));
                continue;
            }
        };
        for hop in hops {
            let dev = nix::net::if_::if_indextoname(hop.ifindex)
                .map_or_else(|_| format!("ifindex {}", hop.ifindex), |n| n.to_string_lossy().into_owned());
            let at = format!("{} on {dev}", hop.addr);
            checks.push(match rtnl.neighbour(hop) {
                Ok(Some(e)) if e.resolved() => {
                    let how = if e.managed { ", managed" } else { "" };
                    check(&name, Verdict::Ok, format!("{at}: {}{how}", state_name(e.state)), None)
                }
                found => {
                    let state = match found {
                        Ok(Some(e)) => state_name(e.state),
                        Ok(None) => "no neighbour entry".into(),
                        Err(e) => e.to_string(),
                    };
                    let fix = if kept {
                        format!(
                            "the daemon keeps it resolved ([local] neighbours); if it stays unresolved, {} does not answer ARP/ND on {dev}",
                            hop.addr
                        )
                    } else {
                        format!(
                            "[local] neighbours = \"off\": resolve it, or pin it: `ip neigh replace {} lladdr MAC dev {dev} nud permanent`",
                            hop.addr
                        )
                    };
                    check(&name, if kept { Verdict::Warn } else { Verdict::Fail }, format!("{at}: {state}"), Some(fix))
                }
            });
        }
    }
    checks
}

fn pin_dir(config: &Config) -> Check {
    let dir = &config.datapath.pin_dir;
    if !dir.exists() {
        return check(
            "pin directory",
            Verdict::Ok,
            format!("{} not created yet (no data path pinned)", dir.display()),
            None,
        );
    }
    match PinDirLock::held(dir) {
        Ok(true) => {
            check("pin directory", Verdict::Ok, format!("{}: held by a running daemon", dir.display()), None)
        }
        Ok(false) => {
            check("pin directory", Verdict::Ok, format!("{}: no daemon holds it", dir.display()), None)
        }
        Err(e) => check(
            "pin directory",
            Verdict::Fail,
            e.to_string(),
            Some(format!("check the permissions of {}", dir.display())),
        ),
    }
}

fn admin(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(group) = &config.admin.socket_group {
        out.push(match nix::unistd::Group::from_name(group) {
            Ok(Some(_)) => check("admin socket group", Verdict::Ok, format!("{group} exists"), None),
            _ => check(
                "admin socket group",
                Verdict::Fail,
                format!("no group {group}"),
                Some(format!("groupadd --system {group}; add the operators to it")),
            ),
        });
    }
    if let Some(key) = &config.admin.peer_key_file {
        out.push(match std::fs::metadata(key) {
            Err(e) => check(
                "peer key",
                Verdict::Fail,
                format!("{}: {e}", key.display()),
                Some(format!(
                    "install the deployment's key: `openssl rand -hex 32 > {}` on one host, copied to all",
                    key.display()
                )),
            ),
            Ok(m) if m.permissions().mode() & 0o004 != 0 => check(
                "peer key",
                Verdict::Fail,
                format!("{} is readable by every user", key.display()),
                Some(format!("chmod 0640 {}", key.display())),
            ),
            Ok(_) => check("peer key", Verdict::Ok, format!("{} present", key.display()), None),
        });
    }
    out
}

/// BIRD answers on its control socket.
fn bird(config: &Config) -> Option<Check> {
    let bgp = config.bgp.as_ref()?;
    let out = Command::new(&bgp.birdc).arg("-s").arg(&bgp.socket).args(["show", "status"]).output();
    Some(match out {
        Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Daemon is up") => {
            check("BIRD", Verdict::Ok, format!("answers on {}", bgp.socket.display()), None)
        }
        Ok(o) => check(
            "BIRD",
            Verdict::Fail,
            format!(
                "{} -s {}: {}",
                bgp.birdc.display(),
                bgp.socket.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Some("start BIRD 2 (`systemctl start bird`) and check [bgp] socket".into()),
        ),
        Err(e) => check(
            "BIRD",
            Verdict::Fail,
            format!("cannot run {}: {e}", bgp.birdc.display()),
            Some("apt-get install bird2, or set [bgp] birdc".into()),
        ),
    })
}
