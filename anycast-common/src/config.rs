//! Host-wide settings of the data path: [`crate::maps::CONFIG`] slot 0, and the per-CPU
//! token buckets that limit what the data path generates ([`crate::maps::RATE`]).

use crate::flow::HashKey;

/// The host has an IPv4 tunnel address (`tunnel_v4` is valid).
pub const CONFIG_TUNNEL_V4: u32 = 1;
/// The host has an IPv6 tunnel address (`tunnel_v6` is valid).
pub const CONFIG_TUNNEL_V6: u32 = 2;
/// Log exceptions through aya-log. Off in production: never a log line per packet.
pub const CONFIG_DEBUG_LOG: u32 = 4;

#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LocalConfig {
    /// Key of the flow hash ([`crate::flow::flow_hash`]); the same on every host of a site.
    pub hash_key: HashKey,
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// This host's IPv4 tunnel address: outer source of what it forwards, and the outer
    /// destination it decapsulates.
    pub tunnel_v4: [u8; 4],
    /// Same for IPv6.
    pub tunnel_v6: [u8; 16],
    /// UDP port on which GUE is decapsulated (host order); 0 turns GUE decap off.
    pub gue_port: u16,
    pub pad: [u8; 2],
    /// Network namespace (its id as seen from the ingress device's namespace, as `ip netns
    /// set` assigns it) in which the local TCP services' sockets are looked up; `u32::MAX`
    /// for the ingress device's own namespace.
    pub socket_netns: u32,
    /// Index of this host's own site in `SITES` (`u32::MAX`: none configured yet): where a
    /// new flow is counted when its forward fails and the local stack serves it instead.
    pub local_site: u32,
    pub pad2: [u8; 4],
    /// ICMP too-big replies: the per-CPU [`Limit`] ([`RATE_ICMP`]).
    pub icmp: Limit,
    /// Flow-table pins (promotions of completed handshakes, first packets of pinned UDP
    /// flows): the per-CPU [`Limit`] ([`RATE_PIN`]).
    pub pin: Limit,
}

/// A token-bucket limit, in the form the data path needs without dividing: one event costs
/// `cost_ns` of credit, credit accrues at one ns per ns and is capped at `cap_ns`. (The
/// controller derives both from a rate per second and a burst.) `cost_ns = 0`: unlimited.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Limit {
    pub cost_ns: u64,
    pub cap_ns: u64,
}

impl Limit {
    /// `rate` events per second, bursts of `burst`; rate 0 allows nothing.
    pub const fn per_second(rate: u32, burst: u32) -> Limit {
        if rate == 0 {
            return Limit { cost_ns: u64::MAX, cap_ns: 0 };
        }
        let cost_ns = 1_000_000_000 / rate as u64;
        let burst = if burst == 0 { 1 } else { burst as u64 };
        Limit { cost_ns, cap_ns: cost_ns * burst }
    }
}

/// Slot of [`crate::maps::RATE`] for ICMP replies.
pub const RATE_ICMP: u32 = 0;
/// Slot of [`crate::maps::RATE`] for flow-table pins.
pub const RATE_PIN: u32 = 1;
/// Entries of [`crate::maps::RATE`].
pub const RATE_SLOTS: u32 = 2;

/// Value of [`crate::maps::RATE`] (per CPU): the credit left and when it was last counted.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Bucket {
    pub credit_ns: u64,
    pub last_ns: u64,
}

impl Bucket {
    /// Takes one event's cost at time `now_ns` under `limit`; whether it was allowed.
    #[inline(always)]
    pub fn take(&mut self, limit: &Limit, now_ns: u64) -> bool {
        if limit.cost_ns == 0 {
            return true;
        }
        let credit = self.credit_ns.saturating_add(now_ns.saturating_sub(self.last_ns));
        self.last_ns = now_ns;
        let credit = if credit > limit.cap_ns { limit.cap_ns } else { credit };
        if credit >= limit.cost_ns {
            self.credit_ns = credit - limit.cost_ns;
            true
        } else {
            self.credit_ns = credit;
            false
        }
    }
}
