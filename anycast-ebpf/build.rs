//! Linker flags for the BPF objects.
//!
//! bpf-linker passes `--bpf-expand-memcpy-in-order` to LLVM by default, which makes the BPF
//! backend lower every `memset` (zeroing a key, a `bpf_fib_lookup`) to a call to a `memset`
//! subprogram: slow, and a loop the verifier must walk. Without it LLVM expands small
//! constant-size memset/memcpy inline, as a C compiler does for the kernel.
//!
//! (`--cpu-features=+allows-misaligned-mem-access` would also merge byte accesses to header
//! fields, but LLVM then merges stack stores too, and the verifier requires aligned stack
//! accesses: "misaligned stack access".)
fn main() {
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
