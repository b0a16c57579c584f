//! The contract between the anycast XDP program and its controller.
//!
//! Everything the two halves exchange lives here: map names and sizes ([`maps`]), the
//! `#[repr(C)]` keys and values stored in them, counter layouts and the flow hash, so that
//! the kernel side and userspace can never disagree about a byte. The crate is `#![no_std]`
//! for the eBPF target; the `user` feature adds [`aya::Pod`] impls for the controller.
#![no_std]

pub mod addr;
pub mod bench;
pub mod config;
pub mod counters;
pub mod flow;
pub mod maps;
pub mod site;
pub mod vip;
pub mod wire;

#[cfg(feature = "user")]
mod pod;

pub use addr::{AddrEntry, AddrKey, AddrPort, AddrSlot, Family};
pub use config::LocalConfig;
pub use counters::{Action, Event, Exception, SiteCounters, VipCounters};
pub use flow::{FlowKey, FlowValue, HashKey, flow_hash};
pub use site::{Encap, NextHop, SiteInfo};
pub use vip::{VipInfo, VipKey};
