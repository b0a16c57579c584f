//! The anycast XDP program: docs/datapath.md, section by section.
//!
//! `anycast` → [`try_anycast`] → an XDP action. Every way off the normal path is a
//! [`Verdict`]: an [`anycast_common::Exception`] and the action taken, counted once (and
//! logged only in debug mode).
#![no_std]
#![no_main]

mod addrs;
mod affinity;
mod counters;
mod csum;
mod decap;
mod encap;
mod frame;
mod icmp;
mod limit;
mod maps;
mod parse;
mod route;
mod socket;
mod stack;
mod steer;

use anycast_common::{
    Event,
    addr::filter::{TUNNEL, VIP},
};
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

use crate::{counters::Verdict, encap::Target, frame::Frame, steer::Route};

// Inlined into the entry point the macro generates: the verifier then sees one function
// (no BPF-to-BPF call, whose frames would count against the 512-byte stack together).
#[xdp]
#[inline(always)]
pub fn anycast(ctx: XdpContext) -> u32 {
    match try_anycast(&ctx) {
        Ok(action) => action,
        Err(v) => {
            counters::exception(&ctx, v);
            v.xdp()
        }
    }
}

#[inline(always)]
fn try_anycast(ctx: &XdpContext) -> Result<u32, Verdict> {
    let frame = Frame::new(ctx);
    let Some(eth) = parse::ethernet(&frame)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    // The host's other traffic stops here.
    let slot = parse::prefilter(&frame, eth)?;
    if slot.bits == 0 {
        return Ok(xdp_action::XDP_PASS);
    }
    let mut pkt = parse::Packet::zeroed();
    parse::packet(&frame, eth, &mut pkt)?;
    // After the parse: a malformed packet does not need it.
    let Some(cfg) = maps::config() else { return Ok(xdp_action::XDP_PASS) };
    if slot.bits & TUNNEL != 0 {
        if let Some(action) = decap::decap(ctx, frame, cfg, &pkt)? {
            return Ok(action);
        }
    }
    if slot.bits & VIP == 0 {
        return Ok(xdp_action::XDP_PASS);
    }
    let Some(vip) = steer::vip(&pkt.key, slot) else {
        return Ok(xdp_action::XDP_PASS);
    };
    counters::vip(vip.index, frame.len());
    if pkt.fragment {
        counters::event(Event::Fragment);
    }

    match steer::route(ctx, &frame, cfg, &pkt, &vip)? {
        Route::Local { site } => {
            counters::local(site, frame.len());
            Ok(xdp_action::XDP_PASS)
        }
        Route::Remote { site, info, hash, record, new_flow } => {
            encap::forward(ctx, frame, cfg, &pkt, &Target { site, info, hash, record, new_flow })
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
