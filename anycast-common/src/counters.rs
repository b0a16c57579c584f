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

/// Why a packet for a VIP or a tunnel address left its normal path. Every such packet is
/// counted once, under one reason and the [`Action`] the data path took with it, in
/// [`crate::maps::EXCEPTIONS`] at [`exception_index`]: the metric
/// `anycast_exceptions_total{reason, action}`. (Things worth counting that do not change a
/// packet's path are [`Event`]s.)
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exception {
    /// The frame ends inside a header. Passed untouched (the stack drops it).
    Truncated = 0,
    /// An IP header that cannot be right: IPv4 IHL < 5, total length beyond the frame or
    /// below the header, wrong version. Passed untouched.
    BadHeader = 1,
    /// More IPv6 extension headers than the data path walks, or a routing header with
    /// segments left (the VIP is not the final destination). Passed untouched.
    ExtHeaderLimit = 2,
    /// VIP without a usable Maglev table or site. Handled locally.
    NoSite = 3,
    /// The chosen site is down or unconfigured and the table still names it. Handled locally.
    SiteDown = 4,
    /// The FIB has no neighbour entry for the tunnel next hop (yet): a new flow is served
    /// locally (pass), a packet of a remote site's flow is dropped, never handed to the
    /// local stack (which would reset it).
    FibNoNeigh = 5,
    /// Any other FIB lookup failure (no route, forwarding disabled, ...): as `FibNoNeigh`.
    FibFailed = 6,
    /// The FIB's egress interface is not one the data path may redirect to: as `FibNoNeigh`.
    NoEgress = 7,
    /// The encapsulated packet is above the path MTU: answered with ICMP frag-needed /
    /// packet-too-big (tx), or dropped when the reply is not allowed (rate limit, a source
    /// that must not be answered, an ICMP error).
    TooBig = 8,
    /// Growing or shrinking the frame failed: pass before the frame was touched (new flows
    /// only), drop after.
    EncapFailed = 9,
    /// Tunnel packet for our tunnel address from a source that is no known site. Dropped.
    DecapUnknownPeer = 10,
    /// A tunnel packet whose inner packet is malformed. Dropped.
    DecapBadInner = 11,
    /// A well-formed tunnel packet whose inner destination is neither one of our VIPs nor
    /// (for a health probe: ICMP echo) our tunnel address. Dropped: decapsulating it would
    /// relay it (or deliver it to the host's own services from a spoofed source).
    DecapForeign = 12,
    /// The outer header carries ECN CE over an inner packet that is not ECN-capable
    /// (RFC 6040 §4.2). Dropped.
    DecapEcn = 13,
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
        Exception::NoEgress,
        Exception::TooBig,
        Exception::EncapFailed,
        Exception::DecapUnknownPeer,
        Exception::DecapBadInner,
        Exception::DecapForeign,
        Exception::DecapEcn,
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
            Exception::NoEgress => "no_egress",
            Exception::TooBig => "too_big",
            Exception::EncapFailed => "encap_failed",
            Exception::DecapUnknownPeer => "decap_unknown_peer",
            Exception::DecapBadInner => "decap_bad_inner",
            Exception::DecapForeign => "decap_foreign",
            Exception::DecapEcn => "decap_ecn",
        }
    }
}

/// What the data path did with a packet that left its normal path.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// XDP_PASS: handed to the local stack.
    Pass = 0,
    /// XDP_DROP.
    Drop = 1,
    /// XDP_TX: a reply sent back out of the ingress interface.
    Tx = 2,
}

impl Action {
    pub const COUNT: u32 = 3;
    pub const ALL: [Action; Self::COUNT as usize] = [Action::Pass, Action::Drop, Action::Tx];

    /// The `action` label value.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::Drop => "drop",
            Action::Tx => "tx",
        }
    }
}

/// Index of ([`Exception`], [`Action`]) in [`crate::maps::EXCEPTIONS`].
pub const fn exception_index(e: Exception, a: Action) -> u32 {
    e as u32 * Action::COUNT + a as u32
}

/// The reason and action of slot `i` of [`crate::maps::EXCEPTIONS`] (`i <` [`EXCEPTION_SLOTS`]).
pub const fn exception_slot(i: u32) -> (Exception, Action) {
    (Exception::ALL[(i / Action::COUNT) as usize], Action::ALL[(i % Action::COUNT) as usize])
}

/// Entries of [`crate::maps::EXCEPTIONS`].
pub const EXCEPTION_SLOTS: u32 = Exception::COUNT * Action::COUNT;

/// Things the data path counts that do not change a packet's path (a packet may count
/// several, or none): [`crate::maps::EVENTS`], the metric `anycast_datapath_events_total{event}`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// An IP fragment for a VIP, steered by its addresses only.
    Fragment = 0,
    /// A mid-flow TCP packet of a remote site's bucket that matched no pinned flow, no
    /// local socket and no embryonic entry (its pin was evicted, it predates the program,
    /// or it is forged): forwarded by the Maglev table, not pinned.
    FlowUnknown = 1,
    /// A mid-flow TCP packet whose bucket names another site, kept local because the host
    /// has its connection (or it carries a valid SYN cookie): the second chance.
    SocketLocal = 2,
    /// A forwarded SYN recorded in the embryonic-flow table.
    EmbryoWritten = 3,
    /// A handshake completed towards a remote site: its flow pinned in the flow table.
    Promoted = 4,
    /// A promotion found the flow already pinned and left the entry as it was.
    PromoteExists = 5,
    /// A pin skipped by the per-CPU rate guard (the flow is still steered, unpinned).
    PinLimited = 6,
    /// The kernel refused a flow-table insert.
    FlowInsertFailed = 7,
    /// A pinned flow whose site went down or was replaced, re-steered.
    StalePin = 8,
    /// A too-big reply suppressed by the per-CPU rate limit.
    IcmpRateLimited = 9,
    /// A too-big reply suppressed because the packet's source must not be answered
    /// (not unicast, one of ours) or the packet is itself an ICMP error.
    IcmpNotAnswered = 10,
    /// A flow pinned on its first packet: UDP of an `affinity = "flow"` VIP, or fragments.
    Pinned = 11,
}

impl Event {
    pub const COUNT: u32 = 12;

    pub const ALL: [Event; Self::COUNT as usize] = [
        Event::Fragment,
        Event::FlowUnknown,
        Event::SocketLocal,
        Event::EmbryoWritten,
        Event::Promoted,
        Event::PromoteExists,
        Event::PinLimited,
        Event::FlowInsertFailed,
        Event::StalePin,
        Event::IcmpRateLimited,
        Event::IcmpNotAnswered,
        Event::Pinned,
    ];

    /// The `event` label value.
    pub const fn name(self) -> &'static str {
        match self {
            Event::Fragment => "fragment",
            Event::FlowUnknown => "flow_unknown",
            Event::SocketLocal => "socket_local",
            Event::EmbryoWritten => "embryo_written",
            Event::Promoted => "promoted",
            Event::PromoteExists => "promote_exists",
            Event::PinLimited => "pin_limited",
            Event::FlowInsertFailed => "flow_insert_failed",
            Event::StalePin => "stale_pin",
            Event::IcmpRateLimited => "icmp_rate_limited",
            Event::IcmpNotAnswered => "icmp_not_answered",
            Event::Pinned => "pinned",
        }
    }
}
