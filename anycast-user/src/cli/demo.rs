//! `anycast run --iface IFACE`: the foreground demo. Loads the embedded program without
//! pinning anything, attaches it, prints the counters every interval and detaches when it
//! is interrupted (Ctrl-C or SIGTERM alike: nothing is pinned, so nothing could keep the
//! program attached after this process anyway).

use std::time::Duration;

use anycast_common::maps::{MAGLEV_DEFAULT_SIZE, MAX_SITES, MAX_VIPS, PROGRAM};
use anycast_user::datapath::{
    attach,
    counters::{self, Snapshot},
    ebpf_log,
    maglev::Shape,
    maps::DataPathMaps,
    object,
};
use anyhow::{Context, Result};
use aya::{Ebpf, programs::Xdp};
use tokio::signal::unix::{SignalKind, signal};

pub async fn run(iface: &str, interval: Duration) -> Result<()> {
    let mut ebpf = Ebpf::load(object::ANYCAST).context("loading the embedded XDP object")?;
    ebpf_log::spawn(&mut ebpf);
    let prog: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .with_context(|| format!("the XDP object has no program {PROGRAM}"))?
        .try_into()
        .context("program is not XDP")?;
    prog.load().context("the kernel refused the XDP program")?;
    let (_link, mode) = attach::attach(prog, iface)?;
    // aya made MAGLEV from the object's own template: tables of the default size.
    let maps = DataPathMaps::take(&mut ebpf, Shape::for_size(MAGLEV_DEFAULT_SIZE))
        .context("opening the data path maps")?;
    println!("anycast: attached to {iface} ({} mode); Ctrl-C detaches", mode.name());

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let snap = Snapshot::read(&maps, 0..MAX_SITES, 0..MAX_VIPS)
                    .context("reading the counters")?;
                print!("{}", counters::render_nonzero(&snap, |i| i.to_string()));
                println!("--");
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Dropping the object drops its (unpinned) link, which detaches the program.
    drop(maps);
    drop(ebpf);
    println!("anycast: detached from {iface}");
    Ok(())
}
