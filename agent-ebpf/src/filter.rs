//! Decides whether the current process is one the user asked to trace.

use agent_common::FilterMode;
use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid};

use crate::maps::{FILTER, TARGET_CGROUPS, TARGET_TGIDS};

/// True when the current task belongs to a traced process.
#[inline(always)]
pub fn is_traced() -> bool {
    let Some(filter) = FILTER.get(0) else {
        return false;
    };
    match filter.mode {
        m if m == FilterMode::All as u32 => true,
        m if m == FilterMode::Tgids as u32 => {
            let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            // SAFETY: the value is only tested for presence.
            unsafe { TARGET_TGIDS.get(&tgid) }.is_some()
        }
        m if m == FilterMode::Cgroups as u32 => {
            // SAFETY: plain helper call without arguments.
            let cgroup = unsafe { bpf_get_current_cgroup_id() };
            // SAFETY: the value is only tested for presence.
            unsafe { TARGET_CGROUPS.get(&cgroup) }.is_some()
        }
        _ => false,
    }
}
