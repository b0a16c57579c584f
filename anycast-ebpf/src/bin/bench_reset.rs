//! Benchmark reset harness. BPF_PROG_RUN with `repeat > 1` hands the same buffer to every
//! repetition (net/bpf/test_run.c reuses one xdp_buff), so a program that encapsulates
//! would re-process its own output. This program runs first on every repetition: it
//! restores the frame length (one `bpf_xdp_adjust_head` by the length difference, which
//! undoes an encap or decap) and bytes from `RESET_FRAME`, optionally stamps a per-CPU run
//! counter into the frame (a new flow per run), then tail-calls `TARGET[0]`: the program
//! under test, or the noop baseline timed through this same harness.
#![no_std]
#![no_main]

use anycast_common::bench::{RESET_MAX_FRAME, ResetFrame};
use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};

#[map]
static RESET_FRAME: Array<ResetFrame> = Array::with_max_entries(1, 0);

#[map]
static RUNS: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map]
static TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[xdp]
pub fn bench_reset(ctx: XdpContext) -> u32 {
    match try_reset(&ctx) {
        // SAFETY: tail_call only returns when it failed (no program at TARGET[0]).
        Some(()) => unsafe {
            TARGET.tail_call(&ctx, 0);
            xdp_action::XDP_ABORTED
        },
        None => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn try_reset(ctx: &XdpContext) -> Option<()> {
    let frame = RESET_FRAME.get(0)?;
    let want = frame.len as usize;
    if want > RESET_MAX_FRAME {
        return None;
    }
    let have = ctx.data_end() - ctx.data();
    let delta = have as i64 - want as i64;
    if delta != 0 {
        // SAFETY: plain helper call; the kernel checks the new head against the buffer.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta as i32) } != 0 {
            return None;
        }
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    // Eight bytes at a time, the last eight overlapping when the length is not a multiple
    // of 8 (byte-sized tails compile to `ptr >= end` checks the verifier cannot use). Every
    // store is bounds-checked right before it: the verifier needs each one proven in range.
    if want < 8 {
        return None;
    }
    let src = frame.bytes.as_ptr();
    let mut i = 0;
    for _ in 0..RESET_MAX_FRAME / 8 {
        if i + 8 > want {
            i = want - 8;
        }
        let dst = start + i;
        if dst + 8 > end {
            return None;
        }
        // SAFETY: dst + 8 <= end checked above; i + 8 <= want <= RESET_MAX_FRAME.
        unsafe {
            let v = core::ptr::read_unaligned(src.add(i) as *const u64);
            core::ptr::write_unaligned(dst as *mut u64, v);
        }
        i += 8;
        if i >= want {
            break;
        }
    }
    // Masked so that the verifier knows the offset's range.
    let off = frame.vary_offset as usize & (RESET_MAX_FRAME - 1);
    if off != 0 {
        let field = start + off;
        if field + 4 > end {
            return None;
        }
        let runs = RUNS.get_ptr_mut(0)?;
        // SAFETY: per-CPU slot, only this CPU writes it; field + 4 <= end checked above.
        unsafe {
            *runs = (*runs).wrapping_add(1);
            core::ptr::write_unaligned(field as *mut u32, *runs);
        }
    }
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
