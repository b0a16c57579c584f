//! The systemd unit a host installs (deploy/anycast.service; README.md, "Deploy"):
//!
//! 1. `deploy_unit_verifies`: `systemd-analyze verify` accepts it as it is shipped (its
//!    commands pointed at the binary of this build), without a warning.
//! 2. `deploy_unit_descriptor_limit_covers_the_caps`: its `LimitNOFILE` is at least twice
//!    what the daemon may hold open at once, summed from the listeners' caps and the maps'
//!    sizing (a raised cap that the unit does not follow fails here).

use std::process::Command;

use anycast_common::maps::MAX_VIPS;
use anycast_user::api::listener::{ADMIN, TCP};
use testkit::{
    daemon::anycast_bin,
    require::{SYSTEMD_ANALYZE, require},
};

const UNIT: &str = include_str!("../../deploy/anycast.service");
/// Where the unit expects the binary (its install instructions).
const INSTALLED: &str = "/usr/local/bin/anycast";

#[test]
fn deploy_unit_verifies() {
    if !require("deploy_unit_verifies", &[SYSTEMD_ANALYZE]) {
        return;
    }
    // verify checks that every command is executable: the installed path, here this build's.
    let bin = anycast_bin().unwrap().to_str().expect("a UTF-8 binary path").to_owned();
    let dir = std::env::temp_dir().join(format!("anycast-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("anycast.service");
    std::fs::write(&unit, UNIT.replace(INSTALLED, &bin)).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "systemd-analyze verify ({}):\n{stdout}{stderr}",
        out.status
    );
}

#[test]
fn deploy_unit_descriptor_limit_covers_the_caps() {
    let limit: usize = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("the unit sets LimitNOFILE")
        .trim()
        .parse()
        .expect("LimitNOFILE is a number");
    // Served connections on the two TCP listeners and the admin socket, and the 3 sockets.
    let listeners = 2 * TCP.connections + ADMIN.connections + 3;
    // One connection per peer poll, each on tokio's blocking pool (512 threads by default).
    let polls = 512;
    // A reconcile builds every changed VIP's new Maglev table before it swaps them in.
    let tables = MAX_VIPS as usize;
    // ~25 pinned maps (the owner's and the counters' handles), the program, a link per
    // interface, probe and netlink sockets, the runtime's epoll and event descriptors.
    let rest = 64;
    let worst = listeners + polls + tables + rest;
    assert!(limit >= 2 * worst, "LimitNOFILE={limit}, the daemon may hold {worst} descriptors at once");
}
