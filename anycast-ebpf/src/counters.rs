//! Per-CPU counters (§9): exceptions (reason × action), events, per VIP, per site. No atomics
//! on the packet path; the controller sums the CPUs. Logging exists only behind
//! `CONFIG_DEBUG_LOG`, at exceptions.

use anycast_common::{
    Action, Event, Exception, SiteCounters, config::CONFIG_DEBUG_LOG, counters::exception_index,
};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use aya_log_ebpf::warn;

use crate::maps::{EVENTS, EXCEPTIONS, SITE_STATS, VIP_STATS, config};

/// How a packet left its normal path: the reason and what was done with it. Counted once
/// per packet, at the entry point.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub reason: Exception,
    pub action: Action,
}

impl Verdict {
    #[inline(always)]
    pub const fn pass(reason: Exception) -> Verdict {
        Verdict { reason, action: Action::Pass }
    }

    #[inline(always)]
    pub const fn drop(reason: Exception) -> Verdict {
        Verdict { reason, action: Action::Drop }
    }

    #[inline(always)]
    pub const fn tx(reason: Exception) -> Verdict {
        Verdict { reason, action: Action::Tx }
    }

    /// The XDP action.
    #[inline(always)]
    pub const fn xdp(self) -> u32 {
        match self.action {
            Action::Pass => xdp_action::XDP_PASS,
            Action::Drop => xdp_action::XDP_DROP,
            Action::Tx => xdp_action::XDP_TX,
        }
    }
}

/// Exceptions of parsing and of the steering decision leave the frame untouched: passed.
impl From<Exception> for Verdict {
    #[inline(always)]
    fn from(reason: Exception) -> Verdict {
        Verdict::pass(reason)
    }
}

#[inline(always)]
pub fn exception(ctx: &XdpContext, v: Verdict) {
    if let Some(c) = EXCEPTIONS.get_ptr_mut(exception_index(v.reason, v.action)) {
        // SAFETY: per-CPU slot, nothing else on this CPU runs the program concurrently.
        unsafe { *c += 1 };
    }
    if config().is_some_and(|c| c.flags & CONFIG_DEBUG_LOG != 0) {
        // Numbers, not names: copying a string into the log record costs a memcpy loop the
        // verifier must walk. `Exception::ALL[n].name()` / `Action::ALL[a].name()` decode it.
        warn!(ctx, "anycast exception {} action {}", v.reason as u32, v.action as u32);
    }
}

#[inline(always)]
pub fn event(e: Event) {
    if let Some(c) = EVENTS.get_ptr_mut(e as u32) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
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

/// A packet handed to the local stack for local site `index`.
#[inline(always)]
pub fn local(index: u32, bytes: usize) {
    site(index, |c| {
        c.local_packets += 1;
        c.local_bytes += bytes as u64;
    });
}
