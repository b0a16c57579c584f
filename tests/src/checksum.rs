//! The Internet checksum (RFC 1071), written here from the RFC so that the checksums the
//! data path computes (outer IPv4 headers, ICMP / ICMPv6 replies) are checked against an
//! implementation that shares no code with it — nor with the packet builder (etherparse),
//! which the unit tests below cross-check it against. And its incremental update (RFC 1624),
//! checked against the full sum.

/// One's-complement sum of `data` as big-endian 16-bit words (an odd last byte is padded
/// with zero), folded to 16 bits, not yet complemented.
fn fold(data: &[u8], mut sum: u64) -> u16 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum of the concatenation of `parts` (each part must have an even length except
/// the last, which is how every header/pseudo-header split falls).
pub fn internet(parts: &[&[u8]]) -> u16 {
    let all: Vec<u8> = parts.concat();
    !fold(&all, 0)
}

/// Header checksum of an IPv4 header (options included) whose checksum field (bytes 10..12)
/// is ignored: the value to store there.
pub fn ipv4_header(header: &[u8]) -> u16 {
    let mut h = header.to_vec();
    h[10] = 0;
    h[11] = 0;
    internet(&[&h])
}

/// Whether an IPv4 header's stored checksum is right (the sum over it is 0xffff).
pub fn ipv4_header_ok(header: &[u8]) -> bool {
    internet(&[header]) == 0
}

/// Checksum of an ICMP message (header + body), checksum field (bytes 2..4) ignored.
pub fn icmpv4(message: &[u8]) -> u16 {
    let mut m = message.to_vec();
    m[2] = 0;
    m[3] = 0;
    internet(&[&m])
}

/// Checksum of an ICMPv6 message with the IPv6 pseudo-header (RFC 8200 §8.1: source,
/// destination, upper-layer length, zeros, next header 58), checksum field ignored.
pub fn icmpv6(src: [u8; 16], dst: [u8; 16], message: &[u8]) -> u16 {
    let mut m = message.to_vec();
    m[2] = 0;
    m[3] = 0;
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(m.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    internet(&[&pseudo, &m])
}

/// A stored checksum after bytes `old` of the data it covers became `new` (same even length,
/// at an even offset): RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'). For frames made by the
/// hundred thousand from one built whole.
pub fn update(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    assert!(old.len() == new.len() && old.len().is_multiple_of(2), "a checksum update of {old:?} to {new:?}");
    let inverted: Vec<u8> = old.iter().map(|b| !b).collect();
    !fold(new, u64::from(fold(&inverted, u64::from(!checksum))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpNumber, Ipv4Header};

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (before complement).
        assert_eq!(internet(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]), !0xddf2);
        // Odd length: the last byte is the high half of a zero-padded word.
        assert_eq!(internet(&[&[0x01]]), !0x0100);
    }

    #[test]
    fn ipv4_matches_etherparse() {
        let mut h = Ipv4Header::new(1234, 63, IpNumber::UDP, [192, 168, 1, 42], [10, 200, 1, 1]).unwrap();
        h.options = [1u8, 1, 1, 1][..].try_into().unwrap();
        h.identification = 0xbeef;
        let bytes = h.to_bytes();
        assert_eq!(ipv4_header(&bytes), h.calc_header_checksum());
        let mut stored = bytes.to_vec();
        stored[10..12].copy_from_slice(&h.calc_header_checksum().to_be_bytes());
        assert!(ipv4_header_ok(&stored));
        stored[8] ^= 1;
        assert!(!ipv4_header_ok(&stored));
    }

    #[test]
    fn icmp_matches_etherparse() {
        let body = [0x45u8, 0, 0, 40, 1, 2, 3, 4, 5, 6, 7];
        let h = Icmpv4Header::with_checksum(
            Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 7, seq: 9 }),
            &body,
        );
        let mut msg = h.to_bytes().to_vec();
        msg.extend_from_slice(&body);
        assert_eq!(icmpv4(&msg), h.checksum);

        let (src, dst) = ([0xfd; 16], [0x20; 16]);
        let h6 =
            Icmpv6Header::with_checksum(Icmpv6Type::PacketTooBig { mtu: 1280 }, src, dst, &body).unwrap();
        let mut msg6 = h6.to_bytes().to_vec();
        msg6.extend_from_slice(&body);
        assert_eq!(icmpv6(src, dst, &msg6), h6.checksum);
    }

    #[test]
    fn update_matches_a_full_sum() {
        let mut data: Vec<u8> = (0..40u32).map(|i| (i * 37 + 11) as u8).collect();
        for (at, new) in [(0, [0xff, 0xff]), (12, [0, 0]), (38, [0x12, 0x34]), (6, [0xab, 0xcd])] {
            let before = internet(&[&data]);
            let old = [data[at], data[at + 1]];
            data[at..at + 2].copy_from_slice(&new);
            assert_eq!(update(before, &old, &new), internet(&[&data]), "bytes {at}.. to {new:?}");
        }
    }
}
