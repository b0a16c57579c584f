//! Checked access to the frame bytes, and the L2 header carried across head adjustments.
//!
//! Every read and write goes through [`Frame::at`], which compares the end of the access
//! with `data_end` right before it: the verifier only accepts a packet access that a
//! preceding comparison with `data_end` proves in bounds.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};

/// The packet as `data`..`data_end`. Stale after `bpf_xdp_adjust_head`/`_tail` (the kernel
/// moves `data`/`data_end`), which is why only [`adjust_head`] and [`adjust_tail`] hand out
/// a new one.
///
/// Held as pointers, not integers: LLVM then keeps `data + off + N > data_end` as a pointer
/// comparison instead of rewriting it into `off + N > data_end - data`, a scalar comparison
/// that proves nothing to the verifier.
#[derive(Clone, Copy)]
pub struct Frame {
    data: *mut u8,
    end: *const u8,
}

impl Frame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Frame {
        Frame { data: ctx.data() as *mut u8, end: ctx.data_end() as *const u8 }
    }

    /// Frame length, for byte counters only (a pointer difference carries no bounds for
    /// the verifier).
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end as usize - self.data as usize
    }

    /// Whether the first `len` bytes are all inside the frame.
    #[inline(always)]
    pub fn holds(&self, len: usize) -> bool {
        self.data.wrapping_add(len).cast_const() <= self.end
    }

    /// `N` bytes at `off`, or `None` when the frame is shorter.
    #[inline(always)]
    pub fn at<const N: usize>(&self, off: usize) -> Option<*mut [u8; N]> {
        let p = self.data.wrapping_add(off);
        if p.wrapping_add(N).cast_const() > self.end {
            return None;
        }
        Some(p.cast())
    }

    /// The `N` bytes at `off`, read in place.
    #[inline(always)]
    pub fn view<const N: usize>(&self, off: usize) -> Option<&[u8; N]> {
        // SAFETY: `at` checked the N bytes against data_end; [u8; N] has alignment 1.
        self.at::<N>(off).map(|p| unsafe { &*p })
    }

    /// The `N` bytes at `off`, to be written in place.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)] // packet memory, not memory owned by the Frame
    pub fn view_mut<const N: usize>(&self, off: usize) -> Option<&mut [u8; N]> {
        // SAFETY: `at` checked the N bytes against data_end; [u8; N] has alignment 1.
        self.at::<N>(off).map(|p| unsafe { &mut *p })
    }

    #[inline(always)]
    pub fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // SAFETY: `at` checked the N bytes against data_end; [u8; N] has alignment 1.
        self.at::<N>(off).map(|p| unsafe { *p })
    }

    #[inline(always)]
    pub fn u8(&self, off: usize) -> Option<u8> {
        self.bytes::<1>(off).map(|b| b[0])
    }

    #[inline(always)]
    pub fn be16(&self, off: usize) -> Option<u16> {
        self.bytes::<2>(off).map(u16::from_be_bytes)
    }

    #[inline(always)]
    pub fn put<const N: usize>(&self, off: usize, v: [u8; N]) -> Option<()> {
        let p = self.at::<N>(off)?;
        // SAFETY: `at` checked the N bytes against data_end.
        unsafe { *p = v };
        Some(())
    }

    /// `B` bytes at `off` written as the `N` 32-bit words `w` (each already in the byte
    /// order it must have in memory): one 4-byte store each, where a byte array built from
    /// them would be stored byte by byte.
    #[inline(always)]
    pub fn put_words<const B: usize, const N: usize>(&self, off: usize, w: [u32; N]) -> Option<()> {
        const { assert!(B == 4 * N) };
        let p = self.at::<B>(off)?.cast::<u32>();
        let mut i = 0;
        while i < N {
            // SAFETY: `at` checked the B = 4N bytes against data_end; misaligned packet
            // stores are allowed (anycast-user/build.rs).
            unsafe { p.add(i).write_unaligned(w[i]) };
            i += 1;
        }
        Some(())
    }
}

/// Moves the start of the frame by `delta` bytes (negative: grows it in the headroom).
/// Returns the new frame: the old `data` is meaningless after the call.
#[inline(always)]
pub fn adjust_head(ctx: &XdpContext, delta: i32) -> Option<Frame> {
    // SAFETY: plain helper call on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return None;
    }
    Some(Frame::new(ctx))
}

/// Moves the end of the frame by `delta` bytes (negative: trims it).
#[inline(always)]
pub fn adjust_tail(ctx: &XdpContext, delta: i32) -> Option<Frame> {
    // SAFETY: plain helper call on our own context.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return None;
    }
    Some(Frame::new(ctx))
}

/// The two MAC addresses of an Ethernet header (destination, then source) as the
/// little-endian words of its bytes 0..8 and 8..12: carried and written as two integers,
/// not as 12 bytes, which LLVM would keep (and spill) one by one and store byte by byte.
#[derive(Clone, Copy)]
pub struct Macs {
    pub lo: u64,
    pub hi: u32,
}

impl Macs {
    /// From the two addresses.
    #[inline(always)]
    pub fn new(dst: [u8; 6], src: [u8; 6]) -> Macs {
        Macs {
            lo: u64::from_le_bytes([dst[0], dst[1], dst[2], dst[3], dst[4], dst[5], src[0], src[1]]),
            hi: u32::from_le_bytes([src[2], src[3], src[4], src[5]]),
        }
    }

    /// From 12 bytes in memory laid out as in the header (destination, then source), e.g. a
    /// map value's fields; read with one 8-byte and one 4-byte load (misaligned loads are
    /// allowed on map values, anycast-user/build.rs).
    ///
    /// # Safety
    /// `p` points to 12 readable bytes.
    #[inline(always)]
    pub unsafe fn read(p: *const u8) -> Macs {
        // SAFETY: the caller's 12 bytes.
        unsafe { Macs { lo: p.cast::<u64>().read_unaligned(), hi: p.add(8).cast::<u32>().read_unaligned() } }
    }

    /// Destination and source exchanged.
    #[inline(always)]
    pub fn swapped(self) -> Macs {
        let dst = self.lo & 0xffff_ffff_ffff;
        let src = (self.lo >> 48) | (self.hi as u64) << 16;
        Macs { lo: src | dst << 48, hi: (dst >> 16) as u32 }
    }
}

/// The Ethernet header with its VLAN tags, saved before the head moves and written back at
/// the new start (decap, encap and ICMP replies all keep the tags, §5, §7, §8).
pub struct L2 {
    /// 14, 18 or 22 bytes.
    len: usize,
    macs: Macs,
    /// TPID + TCI of each tag present.
    tags: [[u8; 4]; 2],
}

impl L2 {
    #[inline(always)]
    pub fn read(frame: &Frame, len: usize) -> Option<L2> {
        let p = frame.at::<12>(0)?;
        // SAFETY: `at` checked the 12 bytes against data_end.
        let mut l2 = L2 { len, macs: unsafe { Macs::read(p.cast_const().cast()) }, tags: [[0; 4]; 2] };
        if len >= 18 {
            l2.tags[0] = frame.bytes::<4>(12)?;
        }
        if len >= 22 {
            l2.tags[1] = frame.bytes::<4>(16)?;
        }
        Some(l2)
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    pub fn set_macs(&mut self, macs: Macs) {
        self.macs = macs;
    }

    #[inline(always)]
    pub fn swap_macs(&mut self) {
        self.macs = self.macs.swapped();
    }

    /// Writes the header at the start of `frame`, with `ethertype` as the last ethertype.
    #[inline(always)]
    pub fn write(&self, frame: &Frame, ethertype: u16) -> Option<()> {
        let p = frame.at::<12>(0)?;
        // SAFETY: `at` checked the 12 bytes against data_end; misaligned packet stores are
        // allowed (anycast-user/build.rs).
        unsafe {
            p.cast::<u64>().write_unaligned(self.macs.lo);
            p.cast::<u8>().add(8).cast::<u32>().write_unaligned(self.macs.hi);
        }
        if self.len >= 18 {
            frame.put(12, self.tags[0])?;
        }
        if self.len >= 22 {
            frame.put(16, self.tags[1])?;
        }
        frame.put(self.len - 2, ethertype.to_be_bytes())
    }
}
