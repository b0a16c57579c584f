//! Stack objects at 8-byte boundaries. The program is built with misaligned memory
//! accesses allowed (anycast-user/build.rs: packet fields are then read with one load each
//! instead of byte by byte, which the verifier permits for packet and map memory on
//! architectures with efficient unaligned access), but the verifier refuses any *stack*
//! access not aligned to its size ("misaligned stack access"), and LLVM then copies a
//! byte-aligned struct (an address key, a helper's argument struct) with 8-byte moves at
//! whatever offset the struct got. Wrapped in [`Aligned`], every such move is aligned.

/// `T` at an 8-byte boundary.
#[repr(C, align(8))]
pub struct Aligned<T>(pub T);

impl<T> core::ops::Deref for Aligned<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> core::ops::DerefMut for Aligned<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// Stores `words` into the 16 bytes at `dst`, which must be at an 8-byte boundary (a
/// `FlowKey`'s addresses, an [`Aligned`] key's): two 8-byte stores, which LLVM cannot merge
/// or split into misaligned ones.
#[inline(always)]
fn put_words(dst: &mut [u8; 16], words: [u64; 2]) {
    let p = dst.as_mut_ptr().cast::<u64>();
    // SAFETY: 16 writable bytes at an 8-byte boundary (the callers' fields are).
    unsafe {
        p.write(words[0]);
        p.add(1).write(words[1]);
    }
}

/// An IPv4 address into a 16-byte address field at an 8-byte boundary (the rest zero).
#[inline(always)]
pub fn put_v4(dst: &mut [u8; 16], a: [u8; 4]) {
    put_words(dst, [u32::from_ne_bytes(a) as u64, 0]);
}

/// A 16-byte address (from the packet or the stack) into a field at an 8-byte boundary.
#[inline(always)]
pub fn put_v6(dst: &mut [u8; 16], a: &[u8; 16]) {
    let p = a.as_ptr().cast::<u64>();
    // SAFETY: 16 readable bytes; read unaligned (a packet address has no alignment).
    let words = unsafe { [p.read_unaligned(), p.add(1).read_unaligned()] };
    put_words(dst, words);
}
