//! `aya::Pod` for every map key and value: they are `#[repr(C)]`, `Copy`, and have no
//! implicit padding (explicit `pad` fields are always zero), so any byte pattern is valid.

macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(unsafe impl aya::Pod for $t {})*
    };
}

pod!(
    crate::AddrKey,
    crate::AddrEntry,
    crate::AddrPort,
    crate::AddrSlot,
    crate::config::Bucket,
    crate::bench::ResetFrame,
    crate::LocalConfig,
    crate::NextHop,
    crate::SiteCounters,
    crate::VipCounters,
    crate::FlowKey,
    crate::FlowValue,
    crate::SiteInfo,
    crate::VipInfo,
    crate::VipKey,
);
