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
//!   closing in its own `FLOWS` value, with the time; the packets of a closing flow refresh
//!   the time (a 2-byte store at most about once every 4 s). Any other reads nothing more
//!   than the value its lookup loaded.

use anycast_common::{
    Event, FlowValue, LocalConfig, SiteInfo,
    config::RATE_PIN,
    flow::{FLOW_CLOSING, embryo_entry, embryo_generation, embryo_site, embryo_slot, embryo_tag, flow_state},
    site::{SITE_CONFIGURED, SITE_UP},
};
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_coarse_ns};

use crate::{
    counters, limit,
    maps::{EMBRYOS, FLOWS, SITES},
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
    Site(u32, &'static SiteInfo, Entry),
    /// Pinned to a site that went down or whose slot was reused: re-steer, and let a new
    /// pin replace the entry.
    Stale,
    None,
}

/// A pin's entry as the lookup found it: where its value is, and the state it held.
pub struct Entry {
    value: *mut FlowValue,
    state: u16,
}

#[inline(always)]
pub fn pinned(pkt: &Packet) -> Pin {
    match FLOWS.get_ptr_mut(&pkt.key) {
        Some(p) => {
            // SAFETY: copied out at once, with one 8-byte load (an LRU slot may be reused
            // after this).
            let v = unsafe { *p };
            let site = v.site as u32;
            match usable(site).filter(|s| s.generation == v.generation) {
                Some(info) => Pin::Site(site, info, Entry { value: p, state: v.state }),
                None => {
                    counters::event(Event::StalePin);
                    Pin::Stale
                }
            }
        }
        None => Pin::None,
    }
}

/// Notes, in the pin's own entry, that a packet of a TCP flow pinned to another site went
/// there (`fin_or_rst`: it carries FIN or RST), for the controller's sweep (§6). Only a closing
/// flow's entry needs a time (any other pin counts as alive whatever its silence): a packet
/// that neither closes nor belongs to a closing flow reads nothing but the state its lookup
/// loaded, and no clock. Otherwise the state becomes closing ‖ the coarse time (the
/// timekeeper's last tick, read without touching a clocksource), stored only when it
/// changes: at most once per 2^32 ns per flow.
///
/// The store is 2 bytes into the value, beside `site` and `generation`, which it leaves
/// alone (no read-modify-write of the value). Two CPUs storing at once both store "closing,
/// now" within a unit of each other: whichever lands, the entry says closing with a time
/// no older than the truth by more than a unit. An entry the LRU recycled for another flow
/// between the lookup and the store (nanoseconds) would be marked closing with the time of
/// now: that flow's next packet keeps refreshing it, so it is taken for over only if it
/// then stays silent for `check_grace` (the same in-place update of LRU values that
/// Katran's `atime` relies on).
#[inline(always)]
pub fn note(entry: &Entry, fin_or_rst: bool) {
    if !fin_or_rst && !closing(entry) {
        return;
    }
    // SAFETY: plain helper call, no arguments.
    let state = flow_state(unsafe { bpf_ktime_get_coarse_ns() });
    if state != entry.state {
        // SAFETY: a value pointer of `FLOWS` from this program's lookup: an LRU hash is
        // preallocated, its values stay valid memory (at worst recycled for another flow,
        // above); one aligned 2-byte store.
        unsafe { (*entry.value).state = state };
    }
}

/// Whether the pin's client had closed before this packet.
#[inline(always)]
pub fn closing(entry: &Entry) -> bool {
    entry.state & FLOW_CLOSING != 0
}

/// Forgets `pkt`'s pin (its 4-tuple proved to be a new connection of this host's).
#[inline(always)]
pub fn unpin(pkt: &Packet) {
    // Gone already (evicted, or another CPU): the same.
    let _ = FLOWS.remove(&pkt.key);
}

/// Pins `pkt`'s flow to `site` under the rate guard. `replace`: the entry is stale and may
/// be overwritten; otherwise an existing entry is kept (`BPF_NOEXIST`).
#[inline(always)]
pub fn pin(cfg: &LocalConfig, pkt: &Packet, site: u32, info: &SiteInfo, replace: bool, what: Event) {
    if !limit::allow(RATE_PIN, &cfg.pin) {
        counters::event(Event::PinLimited);
        return;
    }
    // A new pin is not closing (`state` 0): a promotion only ever creates an entry (an
    // earlier connection's closing entry of the same 4-tuple, if still there, is followed
    // and kept: §6).
    let value = FlowValue { site: site as u16, state: 0, generation: info.generation };
    let flags = if replace { 0 } else { BPF_NOEXIST as u64 };
    match FLOWS.insert(&pkt.key, &value, flags) {
        Ok(()) => counters::event(what),
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
