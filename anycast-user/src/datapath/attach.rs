//! Attaching the XDP program to an interface: native (driver) mode first, generic (skb)
//! mode when the driver cannot run XDP, with a warning because generic mode runs after the
//! skb is allocated and is several times slower.

use aya::programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error(
        "{0} already has an XDP program attached (see `ip link show {0}`; a pinned anycast \
         instance is removed with `anycast detach`)"
    )]
    Busy(String),
    #[error("attaching XDP to {iface} failed in native mode ({native}) and in generic mode ({skb})")]
    Failed { iface: String, native: String, skb: String },
}

/// The error and its causes on one line: aya's `SyscallError` keeps the errno in its source.
fn describe(e: &ProgramError) -> String {
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out = format!("{out}: {c}");
        cause = c.source();
    }
    out
}

/// EBUSY/EEXIST anywhere in the chain: the kernel refuses a second XDP program.
fn is_busy(e: &ProgramError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EBUSY | libc::EEXIST))
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Where the program ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Native,
    Generic,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
        }
    }
}

/// Attaches `prog` (already loaded) to `iface`. aya does not fall back by itself: asking
/// for `XdpMode::Driver` on a device without native XDP support fails with EOPNOTSUPP (or
/// EINVAL on older kernels), so the fallback is explicit here.
pub fn attach(prog: &mut Xdp, iface: &str) -> Result<(XdpLinkId, Mode), AttachError> {
    match prog.attach(iface, XdpMode::Driver) {
        Ok(id) => Ok((id, Mode::Native)),
        Err(ProgramError::UnknownInterface { name }) => Err(AttachError::NoInterface(name)),
        Err(e) if is_busy(&e) => Err(AttachError::Busy(iface.to_owned())),
        Err(native) => {
            let native = describe(&native);
            log::warn!(
                "{iface}: native XDP not available ({native}); falling back to generic (skb) \
                 mode, which is much slower"
            );
            match prog.attach(iface, XdpMode::Skb) {
                Ok(id) => Ok((id, Mode::Generic)),
                Err(skb) if is_busy(&skb) => Err(AttachError::Busy(iface.to_owned())),
                Err(skb) => Err(AttachError::Failed { iface: iface.to_owned(), native, skb: describe(&skb) }),
            }
        }
    }
}
