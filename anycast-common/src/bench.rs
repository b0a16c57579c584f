//! ABI of the benchmark reset harness (`anycast-ebpf/src/bin/bench_reset.rs`), which
//! `cargo xtask bench` puts in front of the program under test.

/// Largest frame the harness restores.
pub const RESET_MAX_FRAME: usize = 128;

/// Slot 0 of the harness's `RESET_FRAME` array: the frame every repetition starts from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetFrame {
    /// Frame length in bytes, ≤ [`RESET_MAX_FRAME`], a multiple of 8 is not required.
    pub len: u32,
    /// Offset of a 4-byte field overwritten with a per-CPU run counter before each
    /// repetition (e.g. IPv4 source address low half + TCP source port: a new flow per
    /// run), or 0 for none.
    pub vary_offset: u32,
    pub bytes: [u8; RESET_MAX_FRAME],
}

impl Default for ResetFrame {
    fn default() -> Self {
        ResetFrame { len: 0, vary_offset: 0, bytes: [0; RESET_MAX_FRAME] }
    }
}
