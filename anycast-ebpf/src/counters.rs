//! Per-CPU counters (§9): exceptions, per VIP, per site. No atomics on the packet path; the
//! controller sums the CPUs. Logging exists only behind `CONFIG_DEBUG_LOG`, at exceptions.

use anycast_common::{Exception, SiteCounters, config::CONFIG_DEBUG_LOG};
use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::warn;

use crate::maps::{EXCEPTIONS, SITE_STATS, VIP_STATS, config};

#[inline(always)]
pub fn exception(ctx: &XdpContext, e: Exception) {
    if let Some(c) = EXCEPTIONS.get_ptr_mut(e as u32) {
        // SAFETY: per-CPU slot, nothing else on this CPU runs the program concurrently.
        unsafe { *c += 1 };
    }
    if config().is_some_and(|c| c.flags & CONFIG_DEBUG_LOG != 0) {
        // The number, not the name: copying a string into the log record costs a memcpy
        // loop the verifier must walk. `Exception::ALL[n].name()` decodes it.
        warn!(ctx, "anycast exception {}", e as u32);
    }
}

#[inline(always)]
pub fn vip(index: u32, bytes: usize) {
    if let Some(c) = VIP_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}

/// Updates the counters of site `index` with `f`.
#[inline(always)]
pub fn site(index: u32, f: impl FnOnce(&mut SiteCounters)) {
    if let Some(c) = SITE_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot.
        f(unsafe { &mut *c });
    }
}
