//! VIP lookup: (address, port, protocol), with port 0 meaning "any port".

/// Key of [`crate::maps::VIPS`]. The data path looks up the exact port first, then port 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipKey {
    pub addr: [u8; 16],
    /// Host byte order; 0 = every port of this address and protocol.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    pub proto: u8,
    /// [`crate::Family`] as u8.
    pub family: u8,
}

/// UDP of this VIP is steered by the Maglev table alone, with no flow-table state
/// (`affinity = "none"`: DNS and other one-datagram exchanges). Without it every UDP flow
/// is pinned on its first packet (`affinity = "flow"`: QUIC and other long UDP flows).
pub const VIP_STATELESS: u32 = 1;

/// Value of [`crate::maps::VIPS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipInfo {
    /// Slot of this VIP in [`crate::maps::MAGLEV`] and [`crate::maps::VIP_STATS`].
    pub index: u32,
    /// `VIP_*` bits.
    pub flags: u32,
}
