//! The kernel programs, one module per hook family.

mod accept;
mod cgroup;
mod gotls;
mod hello;
mod plain;
mod process;
mod rustls;
mod ssl;
mod syscalls;

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use llmsim_ebpf_common::{EventHeader, EventKind};

/// Declares a uprobe program twice from one body: as a perf-event uprobe
/// (`NAME`) and as a multi-uprobe (`NAME_multi`, kernel >= 6.6), whose
/// per-process links userspace detaches without a global lock. Userspace
/// loads one set or the other.
macro_rules! uprobe_pair {
    ($(#[$doc:meta])* $kind:ident, $name:ident, $multi:ident, |$ctx:ident: $context:ty| $body:block) => {
        $(#[$doc])*
        #[$kind]
        pub fn $name($ctx: $context) -> u32 $body

        /// The multi-uprobe twin of the program without `_multi`.
        #[$kind(multi)]
        pub fn $multi($ctx: $context) -> u32 $body
    };
}
pub(crate) use uprobe_pair;

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
