//! The kernel floor of the data path (docs/datapath.md §0): the oldest Linux whose facts
//! the XDP program and the loader rely on, checked before anything is loaded so that an
//! older kernel gets one sentence instead of a verifier log or, worse, a program that loads
//! and misbehaves (before 5.12 `bpf_fib_lookup` does not write `mtu_result`, and the
//! next-hop cache would store each first packet's length as the path MTU).

/// The floor, and the fact that sets it.
pub const FLOOR: (u32, u32) = (5, 12);
pub const FLOOR_REASON: &str =
    "bpf_fib_lookup writes the route MTU (mtu_result) on success and on FRAG_NEEDED only since 5.12";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "this kernel is Linux {release}; anycast's data path needs {}.{} or newer ({FLOOR_REASON}; the full list: docs/datapath.md §0)",
        FLOOR.0,
        FLOOR.1
    )]
    TooOld { release: String },
    #[error("cannot tell the kernel's version from `{0}`")]
    Unknown(String),
}

/// The running kernel's release string (`uname -r`).
pub fn release() -> String {
    // SAFETY: uname fills the struct it is given; a zeroed utsname is a valid buffer.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates the release field.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy().into_owned()
}

/// (major, minor) of a release string such as `6.18.44-fc-v1045` or `5.15.0-91-generic`.
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Refuses a kernel below [`FLOOR`].
pub fn check(release: &str) -> Result<(), KernelError> {
    match version(release) {
        Some(v) if v >= FLOOR => Ok(()),
        Some(_) => Err(KernelError::TooOld { release: release.to_owned() }),
        None => Err(KernelError::Unknown(release.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_5_12() {
        for ok in ["5.12.0", "5.15.0-91-generic", "6.1.0-13-amd64", "6.18.44-fc-v1045", "10.0"] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for old in ["5.11.22", "5.10.0-28-amd64", "4.19.0"] {
            let e = check(old).unwrap_err().to_string();
            assert!(e.contains(old) && e.contains("5.12") && e.contains("mtu_result"), "{e}");
        }
        assert!(matches!(check("weird"), Err(KernelError::Unknown(_))));
        assert!(check(&release()).is_ok(), "the kernel these tests run on");
    }
}
