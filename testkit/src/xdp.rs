//! The smallest XDP program there is (`return XDP_PASS`), loaded and attached with the raw
//! system calls: for the kernel probe of [`crate::require`], and for the veth peer that
//! must receive what the data path sends back with XDP_TX (a veth delivers XDP_TX frames
//! only to a peer that runs an XDP program, ../shared/TOOLCHAIN.md) — a client's interface
//! in a test topology, standing for a real NIC.
//!
//! No aya here: xtask builds this crate before the XDP toolchain exists.

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd},
};

use crate::netns::Netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u64 = 6;
/// `enum bpf_attach_type`: BPF_XDP.
const BPF_XDP: u64 = 37;
/// XDP_FLAGS_DRV_MODE: native, never the generic fallback.
const XDP_FLAGS_DRV_MODE: u64 = 1 << 2;
const XDP_PASS: u64 = 2;

/// bpf(2) with a zero-padded `union bpf_attr` of 128 bytes (the kernel takes the size).
fn bpf(cmd: libc::c_long, attr: &[u64; 16]) -> io::Result<OwnedFd> {
    // SAFETY: bpf(2) reads `attr` (size given) and what it points to, alive for the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), size_of_val(attr) as u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `BPF_PROG_LOAD` of `r0 = XDP_PASS; exit`.
pub fn load_pass() -> io::Result<OwnedFd> {
    // struct bpf_insn {code: u8, dst:4 src:4, off: i16, imm: i32}: `mov64 r0, imm` (BPF_ALU64
    // | BPF_MOV | BPF_K = 0xb7) and `exit` (BPF_JMP | BPF_EXIT = 0x95), little endian.
    let insns: [u64; 2] = [0xb7 | (XDP_PASS << 32), 0x95];
    let license = c"GPL";
    // union bpf_attr, BPF_PROG_LOAD's part: prog_type u32, insn_cnt u32, insns u64, license
    // u64, ..., expected_attach_type u32 at byte 68; the rest zero (no log, no flags).
    let mut attr = [0u64; 16];
    attr[0] = BPF_PROG_TYPE_XDP | (insns.len() as u64) << 32;
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[8] = BPF_XDP << 32;
    bpf(BPF_PROG_LOAD, &attr)
}

/// The pass program attached natively to an interface for as long as this value lives
/// (a bpf_link: closing its descriptor detaches it, also when the test panics or dies).
pub struct PassProgram {
    _link: OwnedFd,
}

impl PassProgram {
    /// Attaches it to `ifname` of `ns`, in native mode.
    pub fn attach(ns: &Netns, ifname: &str) -> io::Result<PassProgram> {
        let ifindex = ns.ifindex(ifname).map_err(io::Error::other)?;
        let prog = load_pass()?;
        // BPF_LINK_CREATE: prog_fd u32, target_ifindex u32, attach_type u32, flags u32. The
        // ifindex is resolved in the calling thread's namespace: create it inside `ns`.
        let mut attr = [0u64; 16];
        attr[0] = std::os::fd::AsRawFd::as_raw_fd(&prog) as u64 | u64::from(ifindex) << 32;
        attr[1] = BPF_XDP | XDP_FLAGS_DRV_MODE << 32;
        let link = ns.run(|| bpf(BPF_LINK_CREATE, &attr))?;
        Ok(PassProgram { _link: link })
    }
}
