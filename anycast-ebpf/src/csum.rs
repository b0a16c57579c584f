//! Internet checksums (RFC 1071). A one's-complement sum is byte-order independent: summed
//! over native-endian words and stored native-endian, or over big-endian values and stored
//! big-endian, it yields the same bytes.

use aya_ebpf::helpers::bpf_csum_diff;

/// Folds a one's-complement sum of 16-bit words (any width) to 16 bits and complements it:
/// the checksum, in the byte order the words were summed in.
#[inline(always)]
pub fn fold(sum: u64) -> u16 {
    let mut s = (sum & 0xffff_ffff) + (sum >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// [`fold`] of a sum of native-endian words, as the bytes to store.
#[inline(always)]
pub fn finish(sum: u64) -> [u8; 2] {
    fold(sum).to_ne_bytes()
}

/// Checksum of an IPv4 header built on the stack (its checksum field zero).
#[inline(always)]
pub fn ipv4_header(h: &[u8; 20]) -> [u8; 2] {
    let mut sum = 0u64;
    let mut i = 0;
    while i < 20 {
        sum += u16::from_ne_bytes([h[i], h[i + 1]]) as u64;
        i += 2;
    }
    finish(sum)
}

/// One's-complement sum of `len` packet bytes at `p` (`len` a multiple of 4) plus `seed`,
/// by the kernel's `csum_partial`. The caller checked `MAX` bytes at `p` against data_end.
/// `None` if the helper refuses.
#[inline(always)]
pub fn sum<const MAX: usize>(p: *mut [u8; MAX], len: usize, seed: u32) -> Option<u64> {
    // The verifier checks the helper's access at the largest `len` it can prove. LLVM knows
    // `len <= MAX` from how it was computed and would drop a plain comparison; reading `len`
    // back through a volatile load hides that, so the comparison stays for the verifier.
    let mut slot = len as u32;
    // SAFETY: a read of a local.
    let len = unsafe { core::ptr::read_volatile(&mut slot) };
    if len > MAX as u32 {
        return None;
    }
    // SAFETY: the caller checked `len` bytes at `p` against data_end.
    let s = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p.cast(), len, seed) };
    if s < 0 { None } else { Some(s as u64) }
}
