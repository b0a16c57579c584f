//! Raw `bpf(2)` for what aya 0.14 does not offer: batch operations, reading and deleting a
//! map-of-maps entry, creating one with a template of our own, and reading a pinned link's
//! info.

use std::io;

/// bpf(2) commands (linux/bpf.h).
pub const BPF_MAP_CREATE: libc::c_long = 0;
pub const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
pub const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
pub const BPF_OBJ_GET: libc::c_long = 7;
pub const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
pub const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
pub const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `bpf(cmd, attr, sizeof(*attr))`: its return value (an fd for BPF_OBJ_GET), or errno.
pub fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the callers pass a valid, fully initialised bpf_attr prefix of size_of::<T>()
    // bytes for `cmd`, whose pointers cover what the command reads or writes and outlive
    // the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// `union bpf_attr` for the element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Deletes `key` (u32) from the map `fd`.
pub fn delete_elem(fd: std::os::fd::RawFd, key: u32) -> io::Result<()> {
    let mut attr = ElemAttr { map_fd: fd as u32, pad: 0, key: &key as *const u32 as u64, value: 0, flags: 0 };
    bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
}

/// The u32 value at `key` (u32) of the map `fd`: for a map of maps, the inner map's id.
pub fn lookup_u32(fd: std::os::fd::RawFd, key: u32) -> io::Result<u32> {
    let mut value = 0u32;
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        pad: 0,
        key: &key as *const u32 as u64,
        value: &mut value as *mut u32 as u64,
        flags: 0,
    };
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
    Ok(value)
}
