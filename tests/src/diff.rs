//! Readable frame differences for failing fixtures: the first differing byte named by its
//! header field (decoded from the expected frame), and hex dumps of the differing rows.

use std::fmt::Write;

/// (start, length, name) of every header field of `frame` that we can decode: Ethernet,
/// VLAN tags, IPv4/IPv6 (recursively for IP-in-IP and GUE), UDP, TCP, ICMP.
fn fields(frame: &[u8]) -> Vec<(usize, usize, String)> {
    let mut out = vec![(0, 6, "eth dst".to_string()), (6, 6, "eth src".to_string())];
    let mut off = 12;
    let mut tags = 0;
    while off + 2 <= frame.len() {
        let t = u16::from_be_bytes([frame[off], frame[off + 1]]);
        if (t == 0x8100 || t == 0x88a8) && tags < 2 {
            out.push((off, 2, format!("vlan tag {tags} tpid")));
            out.push((off + 2, 2, format!("vlan tag {tags} tci")));
            off += 4;
            tags += 1;
            continue;
        }
        out.push((off, 2, "ethertype".to_string()));
        if t == 0x0800 || t == 0x86dd {
            ip_fields(frame, off + 2, "", &mut out);
        }
        break;
    }
    out
}

fn ip_fields(frame: &[u8], at: usize, level: &str, out: &mut Vec<(usize, usize, String)>) {
    let Some(&first) = frame.get(at) else { return };
    let (l4, proto) = match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0xf) * 4;
            for (o, n, name) in [
                (0, 1, "version/IHL"),
                (1, 1, "TOS"),
                (2, 2, "total length"),
                (4, 2, "id"),
                (6, 2, "flags/fragment offset"),
                (8, 1, "TTL"),
                (9, 1, "protocol"),
                (10, 2, "header checksum"),
                (12, 4, "src"),
                (16, 4, "dst"),
            ] {
                out.push((at + o, n, format!("{level}IPv4 {name}")));
            }
            if ihl > 20 {
                out.push((at + 20, ihl - 20, format!("{level}IPv4 options")));
            }
            (at + ihl.max(20), frame.get(at + 9).copied())
        }
        6 => {
            for (o, n, name) in [
                (0, 4, "version/traffic class/flow label"),
                (4, 2, "payload length"),
                (6, 1, "next header"),
                (7, 1, "hop limit"),
                (8, 16, "src"),
                (24, 16, "dst"),
            ] {
                out.push((at + o, n, format!("{level}IPv6 {name}")));
            }
            (at + 40, frame.get(at + 6).copied())
        }
        _ => return,
    };
    let inner = if level.is_empty() { "inner " } else { "inner-inner " };
    match proto {
        Some(4) | Some(41) if level.len() < 12 => ip_fields(frame, l4, inner, out),
        Some(17) => {
            for (o, n, name) in [(0, 2, "src port"), (2, 2, "dst port"), (4, 2, "length"), (6, 2, "checksum")]
            {
                out.push((l4 + o, n, format!("{level}UDP {name}")));
            }
            // A GUE payload starts with an IP version nibble; decode it as the inner packet.
            if level.is_empty() && matches!(frame.get(l4 + 8).map(|b| b >> 4), Some(4) | Some(6)) {
                ip_fields(frame, l4 + 8, inner, out);
            }
        }
        Some(6) => {
            for (o, n, name) in [
                (0, 2, "src port"),
                (2, 2, "dst port"),
                (4, 4, "seq"),
                (8, 4, "ack"),
                (12, 2, "offset/flags"),
                (14, 2, "window"),
                (16, 2, "checksum"),
            ] {
                out.push((l4 + o, n, format!("{level}TCP {name}")));
            }
        }
        Some(1) | Some(58) => {
            for (o, n, name) in [(0, 1, "type"), (1, 1, "code"), (2, 2, "checksum"), (4, 4, "bytes 4..8")] {
                out.push((l4 + o, n, format!("{level}ICMP {name}")));
            }
            // The quoted packet of an error message.
            if matches!(frame.get(l4), Some(3) | Some(2)) {
                ip_fields(frame, l4 + 8, "quoted ", out);
            }
        }
        _ => {}
    }
}

/// Names the field of `frame` that holds byte `offset`.
pub fn field_at(frame: &[u8], offset: usize) -> String {
    fields(frame)
        .into_iter()
        .rev()
        .find(|(s, n, _)| (*s..s + n).contains(&offset))
        .map_or_else(|| "payload".to_string(), |(s, _, name)| format!("{name} (+{})", offset - s))
}

fn hex_row(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// A multi-line description of how `got` differs from `expected`; `None` when equal.
pub fn explain(expected: &[u8], got: &[u8]) -> Option<String> {
    if expected == got {
        return None;
    }
    let mut s = String::new();
    let first = expected.iter().zip(got).position(|(a, b)| a != b).unwrap_or(expected.len().min(got.len()));
    let _ = writeln!(s, "    length: expected {}, got {}", expected.len(), got.len());
    if first < expected.len().min(got.len()) {
        let _ = writeln!(
            s,
            "    first difference at byte {first} = {}: expected {:02x}, got {:02x}",
            field_at(expected, first),
            expected[first],
            got[first]
        );
    } else {
        let _ = writeln!(s, "    identical for the first {first} bytes; then one frame ends");
    }
    let rows = expected.len().max(got.len()).div_ceil(16);
    let row_differs = |r: usize| {
        let (a, b) = (r * 16, (r + 1) * 16);
        expected.get(a..b.min(expected.len())) != got.get(a..b.min(got.len()))
    };
    let _ = writeln!(s, "    rows that differ (- expected, + got, ^ differing bytes):");
    for (shown, r) in (0..rows).filter(|&r| row_differs(r)).enumerate() {
        if shown == 12 {
            let _ = writeln!(s, "    ... more differing rows not shown");
            break;
        }
        let (a, b) = (r * 16, (r + 1) * 16);
        let e = expected.get(a..b.min(expected.len())).unwrap_or(&[]);
        let g = got.get(a..b.min(got.len())).unwrap_or(&[]);
        let marks: String = (0..16)
            .map(|i| if e.get(i) != g.get(i) && (i < e.len() || i < g.len()) { "^^ " } else { "   " })
            .collect();
        let _ = writeln!(s, "    -{a:04x}  {}", hex_row(e));
        let _ = writeln!(s, "    +{a:04x}  {}", hex_row(g));
        let _ = writeln!(s, "           {}", marks.trim_end());
    }
    Some(s)
}

/// Bytes of a frame [`hexdump`] shows; the rest is only counted.
const DUMP_MAX: usize = 256;

/// A hex dump (16 bytes a row) of the first 256 bytes, for reports.
pub fn hexdump(frame: &[u8]) -> String {
    let mut s: String = frame
        .chunks(16)
        .take(DUMP_MAX / 16)
        .enumerate()
        .map(|(i, c)| format!("    {:04x}  {}\n", i * 16, hex_row(c)))
        .collect();
    if frame.len() > DUMP_MAX {
        s += &format!("    ... {} more bytes\n", frame.len() - DUMP_MAX);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{ACK, ip_in_ip, tcp};

    #[test]
    fn names_fields() {
        let inner = tcp("192.168.1.42", "10.200.1.1", 1, 80, ACK);
        let f = ip_in_ip("10.0.0.1", "10.0.0.2", &inner).vlan(3).frame();
        assert_eq!(field_at(&f, 0), "eth dst (+0)");
        assert_eq!(field_at(&f, 14), "vlan tag 0 tci (+0)");
        assert_eq!(field_at(&f, 18 + 11), "IPv4 header checksum (+1)");
        assert_eq!(field_at(&f, 18 + 20 + 9), "inner IPv4 protocol (+0)");
        assert_eq!(field_at(&f, 18 + 40 + 2), "inner TCP dst port (+0)");
    }

    #[test]
    fn explains_first_difference() {
        let a = tcp("192.168.1.42", "10.200.1.1", 1, 80, ACK).frame();
        let mut b = a.clone();
        b[14 + 8] = 63;
        let text = explain(&a, &b).unwrap();
        assert!(text.contains("IPv4 TTL"), "{text}");
        assert!(explain(&a, &a).is_none());
        assert!(explain(&a, &a[..20]).unwrap().contains("length: expected"));
    }
}
