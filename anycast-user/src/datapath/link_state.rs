//! Whether a pinned XDP link still runs on its interface. When a netdev is unregistered
//! (driver reload, a VLAN or bond recreated, the interface deleted while no controller
//! ran), the kernel detaches its XDP link but the pin survives, a defunct link whose
//! `bpf_link_info.xdp.ifindex` reads 0 (kernel `bpf_xdp_link_fill_link_info`). A pin alone
//! therefore says nothing: compare the link's ifindex with the interface's.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

use aya_obj::generated::bpf_link_info;

use super::sys::{BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD, bpf};

/// `union bpf_attr` for BPF_OBJ_GET.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The ifindex the link pinned at `pin` is attached to: `None` without a pin, `Some(0)` for
/// a defunct link (its interface went away).
pub fn link_ifindex(pin: &Path) -> io::Result<Option<u32>> {
    let path = CString::new(pin.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut get = ObjGetAttr { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    let fd = match bpf(BPF_OBJ_GET, &mut get) {
        Ok(fd) => fd as i32,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: a new descriptor that nothing else owns; closed when `_owned` drops.
    let _owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid bpf_link_info.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: size_of::<bpf_link_info>() as u32,
        info: &mut info as *mut _ as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // SAFETY: an XDP link's info is the `xdp` member of the union (the caller pins only
    // XDP links there); for another type the field reads some other u32, never UB.
    Ok(Some(unsafe { info.__bindgen_anon_1.xdp.ifindex }))
}

/// The interface's ifindex, 0 when it does not exist.
pub fn ifindex(iface: &str) -> u32 {
    let Ok(name) = CString::new(iface) else { return 0 };
    // SAFETY: `name` is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// A pinned link's state on its interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Attached to the interface of that name now.
    Attached,
    /// No pin.
    Missing,
    /// Pinned, but attached to nothing (ifindex 0) or to another (an older) interface.
    Defunct,
}

pub fn state(pin: &Path, iface: &str) -> LinkState {
    match link_ifindex(pin) {
        Ok(None) => LinkState::Missing,
        Ok(Some(i)) if i != 0 && i == ifindex(iface) => LinkState::Attached,
        Ok(Some(_)) => LinkState::Defunct,
        // Unreadable: as good as missing for whoever asks whether traffic is served.
        Err(_) => LinkState::Missing,
    }
}
