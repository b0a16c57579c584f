//! Per-CPU token buckets (`RATE`) for what the data path would otherwise do without bound:
//! ICMP replies (RFC 4443 §2.4(f) MUST rate-limit; the kernel's own icmp_ratelimit never
//! sees them) and flow-table pins (each a ~600 ns kernel LRU insert, and the one way a
//! flood could push established flows out of the table). Per CPU so that no packet waits
//! on another CPU and no atomics are needed; the configured rates are per CPU.

use anycast_common::config::Limit;
use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::maps::RATE;

/// Takes one event from bucket `slot` under `limit`; whether it is allowed. A missing
/// bucket (cannot happen: the array is preallocated) allows nothing.
#[inline(always)]
pub fn allow(slot: u32, limit: &Limit) -> bool {
    if limit.cost_ns == 0 {
        return true;
    }
    let Some(bucket) = RATE.get_ptr_mut(slot) else { return false };
    // SAFETY: plain helper call; this CPU's bucket, which nothing else writes while we run.
    unsafe { (*bucket).take(limit, bpf_ktime_get_ns()) }
}
