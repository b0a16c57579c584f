//! Benchmark sink: counts and drops every frame that reaches it. Attached to the far end
//! of the throughput benchmark's veth pair, it is both the receiver that counts forwarded
//! packets and the XDP program that a veth peer needs for XDP_TX frames to arrive at all
//! (without one, veth drops them and counts xdp_tx_errors; see ../shared/TOOLCHAIN.md).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

#[map]
static SINK_PACKETS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn bench_sink(_ctx: XdpContext) -> u32 {
    if let Some(count) = SINK_PACKETS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *count += 1 };
    }
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
