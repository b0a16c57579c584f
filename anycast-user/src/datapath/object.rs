//! The XDP objects built by `build.rs`, embedded so that the `anycast` binary is all a host
//! needs.

/// The anycast data path.
pub static ANYCAST: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/anycast.bpf.o"));

/// A pass-everything program: the baseline of every per-packet benchmark.
pub static NOOP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/noop.bpf.o"));

/// The benchmark reset harness: restores the input frame before each BPF_PROG_RUN
/// repetition and tail-calls the program under test.
pub static BENCH_RESET: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_reset.bpf.o"));

/// The benchmark sink: counts and drops what reaches the far end of a veth pair.
pub static BENCH_SINK: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_sink.bpf.o"));

/// The benchmark ceiling: swaps the MACs and returns XDP_TX, the least any XDP forwarder does.
pub static BENCH_CEILING: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_ceiling.bpf.o"));
