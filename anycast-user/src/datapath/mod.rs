//! Everything that touches the kernel: the embedded XDP objects, loading, attaching and
//! pinning them, the typed maps and the counter reads.

pub mod addresses;
pub mod attach;
pub mod counters;
pub mod ebpf_log;
pub mod fault;
pub mod kernel;
pub mod layout;
pub mod link_state;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod object;
pub mod pin_lock;
pub mod sys;
