//! Counter layouts. Every counter map is per-CPU (no atomics on the packet path); the
//! controller sums the CPUs at read time.

/// Value of [`crate::maps::SITE_STATS`], indexed by site index.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SiteCounters {
    /// New or established flows of this (local) site passed to the host stack.
    pub local_packets: u64,
    pub local_bytes: u64,
    /// Packets encapsulated towards this (remote) site. Bytes are the original frame's.
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    /// Packets this site sent us through the tunnel, decapsulated here. Bytes are the
    /// frame as received, outer headers included.
    pub received_packets: u64,
    pub received_bytes: u64,
    /// Health probes this site sent us through the tunnel (an inner packet for our own
    /// tunnel address, not for a VIP), decapsulated here and counted only here, so that
    /// `received_*` stays the site's data traffic.
    pub probe_packets: u64,
}

/// Value of [`crate::maps::VIP_STATS`], indexed by VIP index.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipCounters {
    pub packets: u64,
    pub bytes: u64,
}

/// Index of [`crate::maps::EXCEPTIONS`]: why a packet did not take its normal path.
/// Every exception is also the label `reason` of `anycast_drops_total`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exception {
    /// The frame ends inside a header. Passed untouched (the stack drops it).
    Truncated = 0,
    /// An IP header that cannot be right: IPv4 IHL < 5, total length beyond the frame or
    /// below the header, wrong version. Passed untouched.
    BadHeader = 1,
    /// More IPv6 extension headers than the data path walks. Passed untouched.
    ExtHeaderLimit = 2,
    /// VIP without a usable Maglev table or site. Handled locally.
    NoSite = 3,
    /// The chosen site is down or unconfigured and the table still names it. Handled locally.
    SiteDown = 4,
    /// The FIB has no neighbour entry for the tunnel next hop yet. Handled locally.
    FibNoNeigh = 5,
    /// Any other FIB lookup failure (no route, forwarding disabled, ...). Handled locally.
    FibFailed = 6,
    /// Encapsulated packet above the egress MTU: answered with ICMP frag-needed /
    /// packet-too-big.
    TooBig = 7,
    /// Growing or shrinking the frame failed. Handled locally.
    EncapFailed = 8,
    /// A mid-flow TCP packet (not a SYN) missed the flow table: the flow was evicted by the
    /// LRU or predates the program. Re-steered from the Maglev table.
    FlowEvicted = 9,
    /// The flow table refused an insert. The packet is still steered.
    FlowInsertFailed = 10,
    /// Tunnel packet for our tunnel address from a source that is no known site. Passed
    /// untouched (the stack has no tunnel device and drops it).
    DecapUnknownPeer = 11,
    /// A tunnel packet whose inner packet is malformed. Dropped.
    DecapBadInner = 12,
    /// The packet is an IP fragment; steered by addresses only. Informational.
    Fragment = 13,
}

impl Exception {
    pub const COUNT: u32 = 14;

    pub const ALL: [Exception; Self::COUNT as usize] = [
        Exception::Truncated,
        Exception::BadHeader,
        Exception::ExtHeaderLimit,
        Exception::NoSite,
        Exception::SiteDown,
        Exception::FibNoNeigh,
        Exception::FibFailed,
        Exception::TooBig,
        Exception::EncapFailed,
        Exception::FlowEvicted,
        Exception::FlowInsertFailed,
        Exception::DecapUnknownPeer,
        Exception::DecapBadInner,
        Exception::Fragment,
    ];

    /// The `reason` label value.
    pub const fn name(self) -> &'static str {
        match self {
            Exception::Truncated => "truncated",
            Exception::BadHeader => "bad_header",
            Exception::ExtHeaderLimit => "ext_header_limit",
            Exception::NoSite => "no_site",
            Exception::SiteDown => "site_down",
            Exception::FibNoNeigh => "fib_no_neigh",
            Exception::FibFailed => "fib_failed",
            Exception::TooBig => "too_big",
            Exception::EncapFailed => "encap_failed",
            Exception::FlowEvicted => "flow_evicted",
            Exception::FlowInsertFailed => "flow_insert_failed",
            Exception::DecapUnknownPeer => "decap_unknown_peer",
            Exception::DecapBadInner => "decap_bad_inner",
            Exception::Fragment => "fragment",
        }
    }
}
