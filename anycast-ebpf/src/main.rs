#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::{map, xdp}, maps::PerCpuArray, programs::XdpContext};
use anycast_common::Exception;

#[map]
static EXCEPTIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Exception::COUNT, 0);

#[xdp]
pub fn anycast(_ctx: XdpContext) -> u32 {
    if let Some(c) = EXCEPTIONS.get_ptr_mut(0) {
        unsafe { *c += 1 };
    }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
