//! Sites: where a flow can be handled.

/// Site slot is in use.
pub const SITE_CONFIGURED: u32 = 1;
/// Site is healthy; a flow pinned to a site without this flag is re-steered.
pub const SITE_UP: u32 = 2;
/// This host's own site: its flows are passed to the local stack (XDP_PASS).
pub const SITE_LOCAL: u32 = 4;

/// Entry of a Maglev inner table: the site index in the low 16 bits, plus flags.
pub const MAGLEV_SITE: u32 = 0xffff;
/// Maglev entry meaning "no site" (an empty table). (Release 0.1.0 wrote `u32::MAX`, which
/// reads the same under [`MAGLEV_SITE`].)
pub const SITE_NONE: u32 = MAGLEV_SITE;
/// The entry's site is this host's own site: a packet of a new flow in this bucket is
/// passed to the local stack without reading `SITES`.
pub const MAGLEV_LOCAL: u32 = 1 << 30;
/// The entry names the local site, but flows of this bucket may be pinned to another site
/// (the bucket was remote while they started) or be in the middle of a handshake towards
/// one: a mid-flow TCP packet must consult the flow table and the embryonic table before
/// it may go to the local stack. A local entry without this flag skips the embryonic table
/// and passes a flow whose pin is closing (the flow table is read first and an alive pin
/// followed: docs/datapath.md §6). The controller sets it on every local bucket that was remote since the
/// flow table was last proven free of such flows.
pub const MAGLEV_CHECK: u32 = 1 << 31;

/// A local entry without [`MAGLEV_CHECK`]: its bucket's flows that need no state go to the
/// local stack with no lookup beyond the flow table's, read first (docs/datapath.md §6,
/// rule 1; a table of such entries alone is installed as one slot, and skips that too).
#[inline(always)]
pub const fn clean_local(entry: u32) -> bool {
    entry & (MAGLEV_LOCAL | MAGLEV_CHECK) == MAGLEV_LOCAL
}

/// How packets are carried to a remote site.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encap {
    /// IP in IP: protocol 4 for an IPv4 inner packet, 41 for IPv6, in an outer header of
    /// the tunnel endpoint's family (IPIP, IPv6-in-IPv6, and the mixed 4in6 / 6in4).
    Ip = 1,
    /// GUE variant 1 (RFC draft "direct IP encapsulation": UDP payload is the inner IP
    /// packet, no GUE header), UDP source port from the flow hash so that the receiver's
    /// RSS spreads flows across queues.
    Gue = 2,
}

impl Encap {
    pub const fn from_u8(v: u8) -> Option<Encap> {
        match v {
            1 => Some(Encap::Ip),
            2 => Some(Encap::Gue),
            _ => None,
        }
    }
}

/// Value of [`crate::maps::SITES`], indexed by site index.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SiteInfo {
    /// `SITE_*` bits.
    pub flags: u32,
    /// Bumped by the controller whenever the slot gets a different site, so that flows
    /// remembered for the old occupant are re-steered.
    pub generation: u32,
    /// Tunnel endpoint of a remote site (network order; IPv4 in the first 4 bytes).
    pub tunnel_addr: [u8; 16],
    /// [`crate::Family`] of `tunnel_addr`.
    pub tunnel_family: u8,
    /// [`Encap`] as u8.
    pub encap: u8,
    /// Destination UDP port for [`Encap::Gue`], host order.
    pub gue_port: u16,
}

/// Value of [`crate::maps::FIB_CACHE`] (per CPU, indexed by site index): the last successful
/// `bpf_fib_lookup` towards the site's tunnel endpoint, reused until `expires`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// The endpoint it was looked up for (a changed endpoint misses).
    pub dst: [u8; 16],
    /// Ingress ifindex of the lookup (the FIB input interface).
    pub ingress: u32,
    /// Egress ifindex the FIB chose.
    pub egress: u32,
    /// `bpf_jiffies64()` after which the entry is stale; 0 = empty.
    pub expires: u64,
    /// Route MTU (`mtu_result`), checked against the encapsulated length.
    pub mtu: u16,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub pad: [u8; 2],
}
