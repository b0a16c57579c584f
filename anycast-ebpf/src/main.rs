//! The anycast XDP program: docs/datapath.md, section by section.
//!
//! `anycast` → [`try_anycast`] → an XDP action. Every way off the normal path is an
//! [`Exception`]: counted (and logged only in debug mode), then PASS (or DROP for a broken
//! tunnel packet).
#![no_std]
#![no_main]

mod counters;
mod csum;
mod decap;
mod encap;
mod frame;
mod icmp;
mod maps;
mod parse;
mod route;
mod steer;

use anycast_common::{
    Exception,
    addr::filter::{TUNNEL, VIP},
    site::SITE_LOCAL,
};
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

use crate::frame::Frame;

#[xdp]
pub fn anycast(ctx: XdpContext) -> u32 {
    match try_anycast(&ctx) {
        Ok(action) => action,
        Err(e) => {
            counters::exception(&ctx, e);
            match e {
                // The outer headers said "tunnel to us" but the inner packet is garbage:
                // there is nothing sane to hand to the stack.
                Exception::DecapBadInner => xdp_action::XDP_DROP,
                _ => xdp_action::XDP_PASS,
            }
        }
    }
}

#[inline(always)]
fn try_anycast(ctx: &XdpContext) -> Result<u32, Exception> {
    let frame = Frame::new(ctx);
    let Some(eth) = parse::ethernet(&frame)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    // The host's other traffic stops here.
    let filter = parse::prefilter(&frame, eth)?;
    if filter == 0 {
        return Ok(xdp_action::XDP_PASS);
    }

    let mut pkt = parse::Packet::default();
    parse::packet(&frame, eth, &mut pkt)?;
    if pkt.fragment {
        counters::exception(ctx, Exception::Fragment);
    }
    if filter & TUNNEL != 0 {
        if let Some(action) = decap::decap(ctx, frame, &pkt)? {
            return Ok(action);
        }
    }
    if filter & VIP == 0 {
        return Ok(xdp_action::XDP_PASS);
    }
    let Some(vip) = steer::vip(&pkt.key) else {
        return Ok(xdp_action::XDP_PASS);
    };
    counters::vip(vip, frame.len());

    let site = steer::site(ctx, &pkt, vip)?;
    if site.info.flags & SITE_LOCAL != 0 {
        let bytes = frame.len() as u64;
        counters::site(site.index, |c| {
            c.local_packets += 1;
            c.local_bytes += bytes;
        });
        return Ok(xdp_action::XDP_PASS);
    }
    encap::forward(ctx, frame, &pkt, &site)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
