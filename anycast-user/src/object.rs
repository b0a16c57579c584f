//! The XDP objects built by `build.rs`, embedded so that the `anycast` binary is all a host
//! needs.

/// The anycast data path.
pub static ANYCAST: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/anycast.bpf.o"));

/// A pass-everything program: the baseline of every per-packet benchmark.
pub static NOOP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/noop.bpf.o"));
