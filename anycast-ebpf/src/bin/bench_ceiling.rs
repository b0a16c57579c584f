//! Benchmark ceiling: what XDP_TX costs on this platform with nothing else to do. Swaps the
//! Ethernet addresses and sends the frame back out of the interface it came in on: the
//! least any XDP forwarder does. The throughput benchmark reports anycast's forwarding rate
//! as a fraction of this program's, measured the same way in the same run.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn bench_ceiling(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 12 > end {
        return xdp_action::XDP_ABORTED;
    }
    let p = data as *mut [u8; 12];
    // SAFETY: the 12 bytes were checked against data_end above.
    unsafe {
        let m = *p;
        *p = [m[6], m[7], m[8], m[9], m[10], m[11], m[0], m[1], m[2], m[3], m[4], m[5]];
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
