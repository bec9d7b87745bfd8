//! Process lifecycle: a traced process's exec, and the new processes it
//! starts. Both are reported so userspace plants per-process probes in them;
//! when `FILTER.hold` asks for it, the task is first stopped with `SIGSTOP`
//! (delivered on its way back to user space, so before the new program's or
//! the new child's first instruction), and userspace continues it once its
//! probes are in place: a process cannot make a TLS call before that.

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_send_signal},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use llmsim_ebpf_common::{DropReason, EventKind, ExecEvent, ForkEvent};

use super::header;
use crate::{
    filter::is_traced,
    maps::{EVENTS, FILTER, count_drop},
};

/// `x86_64` syscall numbers that start a task: clone, fork, vfork, clone3.
const CLONE_SYSCALLS: [u64; 4] = [56, 57, 58, 435];
const SIGSTOP: u32 = 19;

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`; kernel >= 4.17.
/// Runs in the exec'ing task, after the new image is mapped and before it runs.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    if is_traced() {
        // Reserved first: a process is stopped only when its event (which
        // says to continue it) is sure to reach userspace.
        match EVENTS.reserve::<ExecEvent>(0) {
            Some(mut entry) => {
                let held = if holding() { stop() } else { 0 };
                entry.write(ExecEvent {
                    header: header(EventKind::Exec),
                    held,
                    pad: 0,
                });
                entry.submit(BPF_RB_FORCE_WAKEUP.into());
            }
            None => count_drop(DropReason::RingFull),
        }
    }
    0
}

/// Whether syscall `id` is `clone`, `fork`, `vfork` or `clone3`.
#[inline(always)]
pub fn is_clone(id: u64) -> bool {
    CLONE_SYSCALLS.contains(&id)
}

/// Called from `sys_exit` (`sys_exit(struct pt_regs *regs, long ret)`; kernel
/// 4.17 or later) for the syscalls of [`is_clone`]: a new task returns from `clone`/`fork`/`vfork`/`clone3`
/// with 0 through the same exit path, in its own context, before its first
/// instruction. A new thread (pid != tgid) shares its process's probes.
/// Reported only while `FILTER.hold` asks for it: without holding, a new
/// process has its parent's probes (or none is per process).
#[inline(always)]
pub fn on_sys_exit(ret: i64) {
    if ret != 0 || !holding() {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid >> 32 != pid_tgid & 0xffff_ffff || !is_traced() {
        return;
    }
    match EVENTS.reserve::<ForkEvent>(0) {
        Some(mut entry) => {
            let held = stop();
            entry.write(ForkEvent {
                header: header(EventKind::Fork),
                held,
                pad: 0,
            });
            entry.submit(BPF_RB_FORCE_WAKEUP.into());
        }
        None => count_drop(DropReason::RingFull),
    }
}

/// Whether `FILTER.hold` asks for new processes to be held.
#[inline(always)]
fn holding() -> bool {
    FILTER.get(0).is_some_and(|filter| filter.hold != 0)
}

/// Stops the current process; 1 when the signal was sent.
#[inline(always)]
fn stop() -> u32 {
    // SAFETY: plain helper call with an integer argument.
    u32::from(unsafe { bpf_send_signal(SIGSTOP) } == 0)
}
