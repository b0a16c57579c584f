//! VIP match (§4) and the choice of a site (§6): flow table first, the VIP's Maglev table
//! on a miss.

use anycast_common::{
    Exception, FlowKey, FlowValue, SiteInfo, VipKey, flow_hash,
    site::{SITE_CONFIGURED, SITE_NONE, SITE_UP},
};
use aya_ebpf::programs::XdpContext;

use crate::{
    counters,
    maps::{FLOWS, MAGLEV, SITES, VIPS},
    parse::Packet,
};

/// The site a packet goes to.
pub struct Site {
    pub index: u32,
    pub info: &'static SiteInfo,
    /// `flow_hash(key)` when the Maglev lookup already computed it.
    pub hash: Option<u32>,
}

/// §4: `(dst, dport, proto)`, then `(dst, 0, proto)`. Fragments and portless protocols have
/// dport 0 already, so they only ever match the any-port entry. Returns the VIP index.
#[inline(always)]
pub fn vip(key: &FlowKey) -> Option<u32> {
    let mut vk = VipKey { addr: key.dst, port: key.dport, proto: key.proto, family: key.family };
    // SAFETY: the u32 is copied out at once, before anything can reuse the entry.
    if let Some(v) = unsafe { VIPS.get(&vk) } {
        return Some(v.index);
    }
    if vk.port == 0 {
        return None;
    }
    vk.port = 0;
    unsafe { VIPS.get(&vk) }.map(|v| v.index)
}

/// A site that may take flows: configured and up.
#[inline(always)]
fn usable(index: u32) -> Option<&'static SiteInfo> {
    SITES.get(index).filter(|s| s.flags & (SITE_CONFIGURED | SITE_UP) == SITE_CONFIGURED | SITE_UP)
}

/// §6: the flow table, else the Maglev table of VIP `vip` (and remember the choice).
#[inline(always)]
pub fn site(ctx: &XdpContext, pkt: &Packet, vip: u32) -> Result<Site, Exception> {
    let key = &pkt.key;
    let stale = match FLOWS.get_ptr(key) {
        Some(v) => {
            // SAFETY: copied out at once (an LRU slot may be reused after this).
            let v = unsafe { *v };
            if let Some(info) = usable(v.site).filter(|s| s.generation == v.generation) {
                return Ok(Site { index: v.site, info, hash: None });
            }
            true
        }
        None => false,
    };
    // Only a true miss says the entry was evicted; a stale hit is a site change.
    if !stale && pkt.tcp_mid_flow {
        counters::exception(ctx, Exception::FlowEvicted);
    }

    let table = MAGLEV.get(vip).ok_or(Exception::NoSite)?;
    let m = table.get(0).copied().unwrap_or(0);
    if m == 0 {
        return Err(Exception::NoSite);
    }
    let hash = flow_hash(key);
    let index = table.get(1 + hash % m).copied().ok_or(Exception::NoSite)?;
    if index == SITE_NONE {
        return Err(Exception::NoSite);
    }
    let info = usable(index).ok_or(Exception::SiteDown)?;
    let value = FlowValue { site: index, generation: info.generation };
    if FLOWS.insert(key, &value, 0).is_err() {
        counters::exception(ctx, Exception::FlowInsertFailed);
    }
    Ok(Site { index, info, hash: Some(hash) })
}
