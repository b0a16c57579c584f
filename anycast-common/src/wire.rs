//! Wire constants of the protocols the data path parses and writes, in one place (the XDP
//! program, the controller's probes and the tests all speak them).

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
pub const TCP_HLEN: usize = 20;
pub const ICMP_HLEN: usize = 8;

/// IPv4 flags and fragment offset (the 16-bit field at byte 6).
pub const IP_MF: u16 = 0x2000;
pub const IP_DF: u16 = 0x4000;
pub const IP_OFFSET: u16 = 0x1fff;
/// IP_DF as it sits in byte 6 alone.
pub const IP_DF_BYTE: u8 = (IP_DF >> 8) as u8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// TTL / hop limit of every header the data path writes (outer tunnel headers, ICMP replies).
pub const TTL: u8 = 64;

/// ECN field values (RFC 3168), the low two bits of the TOS / traffic class.
pub const ECN_MASK: u8 = 3;
pub const ECN_NOT_ECT: u8 = 0;
pub const ECN_CE: u8 = 3;

/// An IPv4 address in the 16-byte form every key uses: first four bytes, the rest zero.
#[inline(always)]
pub const fn v4_in_16(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// Bytes `i..i + 4` of an address as the 32-bit word they form in memory (network order
/// kept: what `bpf_fib_lookup` and `bpf_sock_tuple` take).
#[inline(always)]
pub const fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]])
}

/// The four words of `a` ([`word`]): an IPv6 address as the kernel's `__be32[4]` holds it.
#[inline(always)]
pub const fn words(a: &[u8; 16]) -> [u32; 4] {
    [word(a, 0), word(a, 4), word(a, 8), word(a, 12)]
}
