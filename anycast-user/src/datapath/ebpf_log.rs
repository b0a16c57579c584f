//! Forwarding the data path's aya-log records (only emitted with `CONFIG_DEBUG_LOG`) to the
//! controller's logger.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};

/// Starts draining the object's log ring buffer, if it has one. Must run before the
/// program is loaded: the logger owns the ring buffer map, and the program load fails if
/// that map's fd was closed (see TOOLCHAIN.md). The spawned task owns the logger and keeps
/// it alive for the life of the runtime.
pub fn spawn(ebpf: &mut Ebpf) {
    match EbpfLogger::init(ebpf) {
        Ok(logger) => drain(logger),
        Err(e) => log::debug!("no eBPF log buffer: {e}"),
    }
}

/// Same for a program already running in the kernel (an adopted pinned instance).
pub fn spawn_for_program(program_id: u32) {
    match EbpfLogger::init_from_id(program_id) {
        Ok(logger) => drain(logger),
        Err(e) => log::debug!("no eBPF log buffer for program {program_id}: {e}"),
    }
}

fn drain(logger: EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's fd, keeps it open for its whole life and
    // always returns the same one; the AsyncFd owns the logger.
    let fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("cannot poll the eBPF log buffer: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        let mut fd = fd;
        loop {
            let Ok(mut guard) = fd.readable_mut().await else { return };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
