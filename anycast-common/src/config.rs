//! Host-wide settings of the data path: [`crate::maps::CONFIG`] slot 0.

/// The host has an IPv4 tunnel address (`tunnel_v4` is valid).
pub const CONFIG_TUNNEL_V4: u32 = 1;
/// The host has an IPv6 tunnel address (`tunnel_v6` is valid).
pub const CONFIG_TUNNEL_V6: u32 = 2;
/// Log exceptions through aya-log. Off in production: never a log line per packet.
pub const CONFIG_DEBUG_LOG: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LocalConfig {
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
}
