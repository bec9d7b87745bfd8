//! llmsim's kernel programs. Uprobes on the TLS library's `SSL_*` functions
//! (and on Go's `crypto/tls` in Go binaries) copy plaintext into one ring
//! buffer; syscall tracepoints add each call's socket fd, connect
//! destinations and execs. Only processes selected by the `FILTER` map are
//! reported; everything that cannot be delivered is counted.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// The per-connection loss counters are added to atomically (see `emit`).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        internal_features,
        reason = "the BPF target has no AtomicU64; its fetch_add intrinsic is the atomic add"
    )
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand each entry point its context by value"
)]
#![expect(
    clippy::inline_always,
    reason = "small helpers are inlined into each program so the verifier sees a bounds check and the access it guards in one function"
)]

mod emit;
mod filter;
mod maps;
mod probes;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Built for the host only so `cargo clippy --workspace` checks this crate too.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// `bpf_probe_read_user` and friends are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
