//! Fault injection for the upgrade tests: `ANYCAST_FAULT_INJECT=<point>` makes the process
//! die (SIGKILL, no cleanup) when it reaches that point of a map-layout migration, exactly
//! as a crash or an OOM kill would, so that a test can show that the next start completes
//! the migration. Points: `staged` (the new maps filled, before any link is swapped),
//! `swap` (after the first link is swapped), `commit` (after the first pin is renamed).
//! Read once per point reached, only during a migration: no cost otherwise. And for the
//! supervision test, `steering-task`: the daemon's steering task panics at its start (a
//! task dying, not the process), which must end the daemon with a failure.

/// The environment variable naming the point to die at.
pub const ENV: &str = "ANYCAST_FAULT_INJECT";

/// Whether `ANYCAST_FAULT_INJECT` names `name`.
pub fn armed(name: &str) -> bool {
    std::env::var_os(ENV).is_some_and(|v| v == name)
}

/// Dies here if `ANYCAST_FAULT_INJECT` names `name`.
pub fn point(name: &str) {
    if armed(name) {
        log::warn!("fault injection: killed at `{name}`");
        // SAFETY: raise has no preconditions; SIGKILL cannot be caught, as a real crash.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}
