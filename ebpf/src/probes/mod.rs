//! The kernel programs, one module per hook family.

mod accept;
mod cgroup;
mod gotls;
mod hello;
mod plain;
mod rustls;
mod ssl;
mod syscalls;

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use llmsim_ebpf_common::{EventHeader, EventKind};

/// The common record header for the current task.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the low half of pid_tgid is the thread id"
)]
pub(crate) fn header(kind: EventKind) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    EventHeader {
        kind: kind as u32,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        pad: 0,
        // SAFETY: plain helper call without arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
    }
}
