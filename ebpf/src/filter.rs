//! Decides whether the current process is one the user asked to trace.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, generated::bpf_get_current_ancestor_cgroup_id};
use llmsim_ebpf_common::{FilterMode, MAX_CGROUP_DEPTH};

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
        m if m == FilterMode::Cgroups as u32 => in_target_cgroup(),
        _ => false,
    }
}

/// True when the current task's cgroup, or one of its ancestors, is a target:
/// a cgroup's processes include those of its child cgroups. Walks from the
/// root (level 0) down to the task's own cgroup (kernel >= 5.6).
#[inline(always)]
fn in_target_cgroup() -> bool {
    for level in 0..MAX_CGROUP_DEPTH {
        // SAFETY: plain helper call with an integer argument.
        let cgroup = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if cgroup == 0 {
            // Deeper than the task's own cgroup.
            return false;
        }
        // SAFETY: the value is only tested for presence.
        if unsafe { TARGET_CGROUPS.get(&cgroup) }.is_some() {
            return true;
        }
    }
    false
}
