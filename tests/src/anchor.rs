//! The anchor frames of ../shared/anchor-packets.md: the exact 66-byte IPv4 frames (valid
//! IPv4 and L4 checksums) on which the best open XDP load balancer was measured on this kind
//! of VM. The fixture suite checks them packet by packet; `cargo xtask bench` times them, so
//! the figures compare directly.
//!
//! Their configuration: VIP 10.200.1.1 port 80/TCP and port 53/UDP, three remote sites with
//! IPIP tunnel endpoints 10.0.0.2, 10.0.0.3 and 10.0.0.4, client 192.168.1.42 port 31337.
//! Destination MAC 02:00:00:00:00:01 ([`crate::packet::HOST_MAC`]), source
//! 02:00:00:00:00:02 ([`crate::packet::ROUTER_MAC`]).

/// UDP 192.168.1.42:31337 → 10.9.9.9:53: not a VIP.
pub const NON_VIP: &str = "02000000000102000000000208004500003412344000401153a1c0a8012a0a0909097a69003500200a86787878787878787878787878787878787878787878787878";
/// TCP SYN 192.168.1.42:31337 → 10.200.1.1:80: a new flow.
pub const SYN: &str = "0200000000010200000000020800450000341234400040065af5c0a8012a0ac801017a690050000003e8000000008002faf027e40000020405b40103030701010402";
/// TCP ACK of the same flow (established).
pub const ACK: &str = "0200000000010200000000020800450000341234400040065af5c0a8012a0ac801017a690050000003e9000013898010faf01c0300000101080a0000000200000001";
/// UDP 192.168.1.42:31337 → 10.200.1.1:53.
pub const UDP: &str = "0200000000010200000000020800450000341234400040115aeac0a8012a0ac801017a690035002011cf787878787878787878787878787878787878787878787878";

pub const VIP: &str = "10.200.1.1";
pub const CLIENT: &str = "192.168.1.42";
pub const SITE_ENDPOINTS: [&str; 3] = ["10.0.0.2", "10.0.0.3", "10.0.0.4"];
