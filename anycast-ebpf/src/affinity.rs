//! §6: the state that keeps a flow at its site when the weights change — the flow table
//! (`FLOWS`, pinned flows) and the embryonic table (`EMBRYOS`, forwarded SYNs awaiting their
//! handshake ACK). Written as rarely as the semantics allow: a kernel LRU insert costs
//! ~600 ns and a flood of them is what pushes established flows out.
//!
//! - A forwarded SYN writes one 8-byte word into `EMBRYOS` (a shared array indexed by the
//!   keyed hash: a SYN flood only overwrites other embryos, never a pinned flow).
//! - The handshake's ACK that finds its embryo is *promoted*: pinned in `FLOWS` with
//!   `BPF_NOEXIST`, so a promotion (or a forged packet) never overwrites an existing entry.
//! - Pins are rate-guarded per CPU (`CONFIG.pin`); what the guard skips is counted and the
//!   flow is still steered, unpinned.
//! - A packet that follows a TCP pin to another site and carries FIN or RST marks the flow
//!   closing in `FLOW_SEEN`, with the time; the packets of a closing flow refresh the time
//!   (a store at most about once a second). Any other costs one array load.

use anycast_common::{
    Event, FlowValue, LocalConfig, SiteInfo,
    config::RATE_PIN,
    flow::{
        embryo_entry, embryo_generation, embryo_site, embryo_slot, embryo_tag, seen_of, seen_slot,
        seen_update,
    },
    site::{SITE_CONFIGURED, SITE_UP},
};
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_coarse_ns};

use crate::{
    counters, limit,
    maps::{EMBRYOS, FLOW_SEEN, FLOWS, SITES},
    parse::Packet,
};

/// A site that may take flows: configured and up.
#[inline(always)]
pub fn usable(index: u32) -> Option<&'static SiteInfo> {
    SITES.get(index).filter(|s| s.flags & (SITE_CONFIGURED | SITE_UP) == SITE_CONFIGURED | SITE_UP)
}

/// What the flow table says about a flow.
pub enum Pin {
    /// Pinned to a usable site (with the generation recorded).
    Site(u32, &'static SiteInfo),
    /// Pinned to a site that went down or whose slot was reused: re-steer, and let a new
    /// pin replace the entry.
    Stale,
    None,
}

#[inline(always)]
pub fn pinned(pkt: &Packet) -> Pin {
    match FLOWS.get_ptr(&pkt.key) {
        Some(v) => {
            // SAFETY: copied out at once (an LRU slot may be reused after this).
            let v = unsafe { *v };
            match usable(v.site).filter(|s| s.generation == v.generation) {
                Some(info) => Pin::Site(v.site, info),
                None => {
                    counters::event(Event::StalePin);
                    Pin::Stale
                }
            }
        }
        None => Pin::None,
    }
}

/// Pins `pkt`'s flow to `site` under the rate guard. `replace`: the entry is stale and may
/// be overwritten; otherwise an existing entry is kept (`BPF_NOEXIST`).
#[inline(always)]
pub fn pin(
    cfg: &LocalConfig,
    pkt: &Packet,
    hash: u64,
    site: u32,
    info: &SiteInfo,
    replace: bool,
    what: Event,
) {
    if !limit::allow(RATE_PIN, &cfg.pin) {
        counters::event(Event::PinLimited);
        return;
    }
    let value = FlowValue { site, generation: info.generation };
    let flags = if replace { 0 } else { BPF_NOEXIST as u64 };
    match FLOWS.insert(&pkt.key, &value, flags) {
        Ok(()) => {
            if let Event::Promoted = what {
                // A new connection: whatever the slot said (an earlier connection of the
                // same 4-tuple may have closed) is not about it.
                seen_fresh(hash);
            }
            counters::event(what)
        }
        // -EEXIST: pinned meanwhile (another CPU); anything else: the kernel refused.
        Err(e) if e == -17 => counters::event(Event::PromoteExists),
        Err(_) => counters::event(Event::FlowInsertFailed),
    }
}

/// Records that `pkt` (a SYN) was forwarded to `site`.
#[inline(always)]
pub fn embryo_write(hash: u64, site: u32, info: &SiteInfo) {
    if let Some(e) = EMBRYOS.get_ptr_mut(embryo_slot(hash)) {
        // SAFETY: an 8-byte aligned array value, written with one 8-byte store.
        unsafe { *e = embryo_entry(hash, site, info.generation) };
        counters::event(Event::EmbryoWritten);
    }
}

/// The site an embryo of this flow names, if there is one and the site is still usable
/// with the generation it had.
#[inline(always)]
pub fn embryo(hash: u64) -> Option<(u32, &'static SiteInfo)> {
    // SAFETY: one 8-byte load of an array value.
    let e = unsafe { *EMBRYOS.get_ptr(embryo_slot(hash))? };
    if e == 0 || e & 0xffff_ffff_0000_0000 != embryo_tag(hash) {
        return None;
    }
    let site = embryo_site(e);
    let info = usable(site).filter(|s| s.generation & 0xffff == embryo_generation(e))?;
    Some((site, info))
}

/// Forgets what the liveness slot of a newly promoted TCP flow says about its tag (an
/// earlier connection of the same 4-tuple that closed): the new connection is unknown,
/// i.e. alive, until its client closes.
#[inline(always)]
fn seen_fresh(hash: u64) {
    if let Some(e) = FLOW_SEEN.get_ptr_mut(seen_slot(hash)) {
        // SAFETY: an 8-byte aligned array value, one 8-byte load and at most one store.
        unsafe {
            if seen_of(*e, hash).is_some() {
                *e = 0;
            }
        }
    }
}

/// Notes that a packet of the pinned TCP flow with hash `hash` went to another site
/// (`closing`: it carries FIN or RST), for the controller's sweep (§6). Only a closing
/// flow's entry needs a time (any other pin counts as alive whatever its silence): a
/// packet that neither closes nor belongs to a closing flow costs one array load and a
/// compare, no clock. The coarse clock is the timekeeper's last tick, read without
/// touching a clocksource.
#[inline(always)]
pub fn seen(hash: u64, closing: bool) {
    let Some(e) = FLOW_SEEN.get_ptr_mut(seen_slot(hash)) else { return };
    // SAFETY: an 8-byte aligned array value, read and written with single 8-byte accesses.
    let old = unsafe { *e };
    if !closing && !seen_of(old, hash).is_some_and(|(c, _)| c) {
        return;
    }
    // SAFETY: plain helper call, no arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(new) = seen_update(old, hash, now, closing) {
        // SAFETY: as above.
        unsafe { *e = new };
    }
}
