//! VIP match (§4) and the choice of a site (§6): the VIP's Maglev bucket, the flow table for
//! flows that need state, the host's socket table for local TCP flows, the embryonic table
//! for handshakes in flight. Every rule is in docs/datapath.md §6.

use anycast_common::{
    AddrSlot, Encap, Event, Exception, Family, FlowKey, LocalConfig, SiteInfo, VipKey,
    addr::{ADDR_PORTS, filter::OVERFLOW},
    flow::maglev_slot,
    flow_hash,
    site::{MAGLEV_LOCAL, MAGLEV_SITE, SITE_LOCAL, SITE_NONE, clean_local},
    vip::VIP_STATELESS,
};
use aya_ebpf::programs::XdpContext;

use crate::{
    addrs,
    affinity::{self, Pin},
    counters,
    frame::Frame,
    maps::{MAGLEV, MaglevTable, VIPS},
    parse::{IPPROTO_TCP, IPPROTO_UDP, Packet},
    socket::{self, Proof},
};

/// A matched VIP entry.
pub struct Vip {
    pub index: u32,
    pub flags: u32,
}

/// §4: `(dst, dport, proto)`, then `(dst, 0, proto)`. Fragments and portless protocols have
/// dport 0 already, so they only ever match the any-port entry. From the address's `ADDRS`
/// entry (one inlined array lookup and a scan of its ports); from `VIPS` for an
/// overflowing filter slot.
#[inline(always)]
pub fn vip(key: &FlowKey, slot: AddrSlot) -> Option<Vip> {
    if slot.bits & OVERFLOW != 0 {
        return hashed(key);
    }
    let e = addrs::entry(slot, &key.dst, key.family)?;
    let mut any = None;
    let mut i = 0;
    while i < ADDR_PORTS {
        if i >= e.count as usize {
            break;
        }
        let p = &e.ports[i];
        if p.proto == key.proto {
            if p.port == key.dport {
                return Some(Vip { index: p.vip.index, flags: p.vip.flags });
            }
            if p.port == 0 {
                any = Some(Vip { index: p.vip.index, flags: p.vip.flags });
            }
        }
        i += 1;
    }
    any
}

/// [`vip`] through the hash map, which holds every VIP.
#[inline(always)]
fn hashed(key: &FlowKey) -> Option<Vip> {
    let mut vk = VipKey { addr: key.dst, port: key.dport, proto: key.proto, family: key.family };
    // SAFETY: the value is copied out at once, before anything can reuse the entry.
    if let Some(v) = unsafe { VIPS.get(&vk) } {
        return Some(Vip { index: v.index, flags: v.flags });
    }
    if vk.port == 0 {
        return None;
    }
    vk.port = 0;
    unsafe { VIPS.get(&vk) }.map(|v| Vip { index: v.index, flags: v.flags })
}

/// What to record once the packet is on its way to a remote site (never before: a packet
/// whose forward fails must leave no state that would send the rest of its flow away).
#[derive(Clone, Copy)]
pub enum Record {
    Nothing,
    /// A forwarded SYN: write its embryo.
    Embryo,
    /// Pin the flow (`replace`: over a stale entry) and count `event`.
    Pin {
        replace: bool,
        event: Event,
    },
}

pub enum Route {
    /// Hand the packet to the local stack, counted for local site `site`.
    Local { site: u32 },
    Remote {
        site: u32,
        info: &'static SiteInfo,
        hash: u64,
        record: Record,
        /// A packet that starts a flow (a SYN, a stateless datagram, the first packet of a
        /// pinned UDP flow): if forwarding fails, the local stack may serve it instead. Any
        /// other packet of a remote flow is dropped then: the local stack would reset it.
        new_flow: bool,
    },
}

/// A VIP's Maglev table and its size M (entry 0).
struct Table {
    slots: &'static MaglevTable,
    m: u32,
}

/// VIP `vip`'s table (§6); absent or empty → `no_site`.
#[inline(always)]
fn table(vip: u32) -> Result<Table, Exception> {
    let slots = MAGLEV.get(vip).ok_or(Exception::NoSite)?;
    let m = slots.get(0).copied().unwrap_or(0);
    if m == 0 {
        return Err(Exception::NoSite);
    }
    Ok(Table { slots, m })
}

/// The local site, when every bucket of `table` is local without `MAGLEV_CHECK`: a table
/// of one slot (the controller installs a table whose buckets are all that entry as its
/// one slot, anycast-user's `DataPathMaps::set_maglev_tables`). Every flow's bucket is
/// then that entry whatever its hash, so the flows that need no state go local without
/// computing it (the keyed hash is ~40 % of a local packet, README "Performance").
#[inline(always)]
fn whole_local(table: &Table) -> Option<u32> {
    if table.m != 1 {
        return None;
    }
    let entry = table.slots.get(1).copied()?;
    (clean_local(entry) && entry & MAGLEV_SITE != SITE_NONE).then_some(entry & MAGLEV_SITE)
}

/// A Maglev entry: the bucket of `hash` in `table` (§6).
#[inline(always)]
fn maglev(table: &Table, hash: u64) -> Result<u32, Exception> {
    let entry = table.slots.get(1 + maglev_slot(hash, table.m)).copied().ok_or(Exception::NoSite)?;
    if entry & MAGLEV_SITE == SITE_NONE {
        return Err(Exception::NoSite);
    }
    Ok(entry)
}

/// The site of a Maglev entry, as a route for a packet of a new flow (or of a flow with no
/// state to follow). A down site → `site_down`, handled locally.
#[inline(always)]
fn bucket(entry: u32, hash: u64, record: Record, new_flow: bool) -> Result<Route, Exception> {
    let site = entry & MAGLEV_SITE;
    if entry & MAGLEV_LOCAL != 0 {
        return Ok(Route::Local { site });
    }
    let info = affinity::usable(site).ok_or(Exception::SiteDown)?;
    Ok(Route::Remote { site, info, hash, record, new_flow })
}

/// A pinned flow's route. `hash`: the flow hash, for the outer header's entropy.
#[inline(always)]
fn pinned(site: u32, info: &'static SiteInfo, hash: u64) -> Route {
    if info.flags & SITE_LOCAL != 0 {
        Route::Local { site }
    } else {
        Route::Remote { site, info, hash, record: Record::Nothing, new_flow: false }
    }
}

/// What the outer header towards `info` takes from the flow hash: the GUE source port
/// (receive-side spreading over queues and ECMP paths) and the IPv6 flow label (§7), which
/// must be the same for every packet of a flow as for its first. An IPv4 IP-in-IP header
/// has no field for it, so a pinned flow to such a site never needs the hash.
#[inline(always)]
fn entropy(cfg: &LocalConfig, pkt: &Packet, info: &SiteInfo) -> u64 {
    if info.encap == Encap::Gue as u8 || info.tunnel_family == Family::V6 as u8 {
        flow_hash(&pkt.key, &cfg.hash_key)
    } else {
        0
    }
}

/// §6: where `pkt` (matched to `vip`) goes.
#[inline(always)]
pub fn route(
    ctx: &XdpContext,
    frame: &Frame,
    cfg: &LocalConfig,
    pkt: &Packet,
    vip: &Vip,
) -> Result<Route, Exception> {
    let table = table(vip.index)?;
    let tcp = pkt.key.proto == IPPROTO_TCP;
    // Stateless: UDP of an `affinity = "none"` VIP, and protocols without ports (ICMP echo
    // to a VIP, ...), follow their bucket packet by packet.
    let pinnable = tcp || pkt.fragment || (pkt.key.proto == IPPROTO_UDP && vip.flags & VIP_STATELESS == 0);

    // A VIP whose every bucket is local without the check flag (a site that sheds none of
    // it): TCP (SYN or mid-flow, rule 1 below) and stateless packets go local by their
    // bucket, which is that one entry. A pinned UDP flow or a fragment still takes the flow
    // table, as its first packet must pin it.
    if let Some(site) = whole_local(&table) {
        if !pinnable || (tcp && !pkt.fragment) {
            return Ok(Route::Local { site });
        }
    }

    // The flow hash and its bucket.
    let bucket_of = || -> Result<(u64, u32), Exception> {
        let hash = flow_hash(&pkt.key, &cfg.hash_key);
        Ok((hash, maglev(&table, hash)?))
    };

    // A SYN starts a flow: its bucket decides, with no lookup. Towards a remote site it
    // leaves an embryo, so that its handshake ACK is pinned there whatever the weights do
    // meanwhile.
    if pkt.tcp_syn {
        let (hash, entry) = bucket_of()?;
        return bucket(entry, hash, Record::Embryo, true);
    }

    if !pinnable {
        let (hash, entry) = bucket_of()?;
        return bucket(entry, hash, Record::Nothing, true);
    }

    // The flow table first: a pinned flow then needs neither its bucket nor (towards an
    // IPv4 IP-in-IP site) the hash, 18 of the 65 ns a pinned forwarded packet cost with
    // the bucket first (README, "Performance"). The price is a flow-table miss (~13 ns)
    // for a mid-flow local packet of a shared table, which then goes on into the local
    // stack, whose own cost for it is about a hundred times that; a forwarded packet costs
    // the host little more than this program. A pinned UDP flow or fragment follows its
    // pin whatever its bucket. A mid-flow TCP pin that is alive (its client never closed)
    // is followed too: its bucket cannot be local and clean, since the controller clears a
    // bucket's check flag only once none of its pins may be alive (docs/datapath.md §6,
    // "The check flag"). A closing pin waits for its bucket: in a clean local bucket the
    // flow is the host's (rule 1).
    let tcp_mid_flow = tcp && !pkt.fragment;
    let pin = affinity::pinned(pkt);
    if let Pin::Site(site, info, entry) = &pin {
        if !tcp_mid_flow || !affinity::closing(entry) {
            let route = pinned(*site, *info, entropy(cfg, pkt, info));
            if tcp_mid_flow && matches!(route, Route::Remote { .. }) {
                affinity::note(entry, pkt.tcp_closing);
            }
            return Ok(route);
        }
    }
    let (hash, entry) = bucket_of()?;

    if tcp_mid_flow {
        // A mid-flow TCP packet (or an ICMP error about a TCP flow). A local bucket that
        // never was remote since the flow table was last proven free of its flows holds
        // only local flows: the local stack, no lookup beyond the flow table's above.
        if clean_local(entry) {
            return Ok(Route::Local { site: entry & MAGLEV_SITE });
        }
        let replace = match pin {
            // Only a closing pin is left here (an alive one was followed above).
            Pin::Site(site, info, entry) => {
                let route = pinned(site, info, hash);
                if let Route::Remote { .. } = route {
                    // A pin whose client closed, and a connection of its 4-tuple here: the
                    // client opened a new one on the same ports once the old one was done
                    // (a client cannot while its own socket of the old one lives), and its
                    // SYN was served here by its bucket. The host's own connection stays
                    // here and the old pin goes. Only a completed handshake proves it (a
                    // full socket, or a SYN cookie this host sent), which no packet from
                    // off the path can make; a request socket any SYN makes, and a
                    // time-wait one is an older connection's.
                    if !pkt.icmp_error
                        && socket::is_local(ctx, frame, pkt, cfg.socket_netns, Proof::Handshake)
                    {
                        affinity::unpin(pkt);
                        counters::event(Event::SocketLocal);
                        return Ok(Route::Local { site: cfg.local_site });
                    }
                    affinity::note(&entry, pkt.tcp_closing);
                }
                return Ok(route);
            }
            Pin::Stale => true,
            Pin::None => false,
        };
        let promote = Record::Pin { replace, event: Event::Promoted };
        if entry & MAGLEV_LOCAL != 0 {
            // A local bucket that was remote lately: a handshake whose SYN went to another
            // site before the bucket came home must still go there.
            if !pkt.icmp_error {
                if let Some((site, info)) = affinity::embryo(hash) {
                    return Ok(Route::Remote { site, info, hash, record: promote, new_flow: false });
                }
            }
            return Ok(Route::Local { site: entry & MAGLEV_SITE });
        }
        // The bucket names another site. The second chance: the host's own connection
        // (its bucket moved since it started) stays local.
        if socket::is_local(ctx, frame, pkt, cfg.socket_netns, Proof::AnySocket) {
            counters::event(Event::SocketLocal);
            return Ok(Route::Local { site: cfg.local_site });
        }
        if !pkt.icmp_error {
            if let Some((site, info)) = affinity::embryo(hash) {
                return Ok(Route::Remote { site, info, hash, record: promote, new_flow: false });
            }
        }
        // No pin, no socket, no embryo: evicted, older than the program, or forged. Its
        // bucket decides and nothing is recorded (a flood of random ACKs writes no state).
        counters::event(Event::FlowUnknown);
        return bucket(entry, hash, Record::Nothing, false);
    }

    // UDP of an `affinity = "flow"` VIP, and fragments, unpinned (a pin was followed
    // above): pinned on their first packet.
    let replace = matches!(pin, Pin::Stale);
    if pkt.icmp_error {
        return bucket(entry, hash, Record::Nothing, false);
    }
    let event = Event::Pinned;
    let route = bucket(entry, hash, Record::Pin { replace, event }, true)?;
    if let Route::Local { site } = route {
        // A local flow of a pinned VIP is pinned too: only the table can keep it here when
        // its bucket moves.
        if let Some(info) = affinity::usable(site) {
            affinity::pin(cfg, pkt, site, info, replace, event);
        }
    }
    Ok(route)
}
