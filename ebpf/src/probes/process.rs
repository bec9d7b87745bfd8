//! Process lifecycle: a traced process's exec, and the new processes it
//! starts. Both are reported so userspace plants per-process probes in them;
//! when `FILTER.hold` asks for it, the task is first stopped with `SIGSTOP`
//! (delivered on its way back to user space), and userspace continues it once
//! its probes are in place: a process cannot make a TLS call before that.
//!
//! An exec is stopped before the new program's first instruction. A new child
//! is stopped at its first syscall, which it makes before `fork()` returns in
//! it (glibc's `set_robust_list`, musl's `set_tid_address`): the one hook that
//! runs in the child before its first instruction is the `sys_exit`
//! tracepoint, and every syscall on the machine would pay for that. The
//! child's task is noted at its creation instead ([`sched_process_fork`], in
//! the parent), and the syscall programs (`sys_enter_first`, attached while
//! processes are held to the calls new tasks make first,
//! `llmsim_ebpf_common::syscall::FIRST_CALLS`, and those on the socket calls) look
//! the current task up only while some are noted. A child whose first syscall is
//! none of those is held at its first socket call, `close()` or exec, before that
//! call runs.

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_task, bpf_send_signal},
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use llmsim_ebpf_common::{
    DropReason, EventKind, ExecEvent, ForkEvent,
    syscall::{EXECVE, EXECVEAT},
};

use super::header;
use crate::{
    filter::is_traced,
    maps::{Counted, EVENTS, FILTER, NEW_TASKS, count_drop, count_entries, holds_entries},
};

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

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`;
/// kernel >= 4.17. Runs in the parent, for every new task (threads too),
/// before the child can run: a child of a traced process is noted, to be
/// looked at in its first syscall ([`on_syscall`]). A child the table has no
/// room for is not held, and counted as an event the ring could not take.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    if holding() && is_traced() {
        let child: u64 = ctx.arg(1);
        if NEW_TASKS.insert(&child, &0, 0).is_ok() {
            count_entries(Counted::NewTasks, 1);
        } else {
            count_drop(DropReason::RingFull);
        }
    }
    0
}

/// `sched_process_exit(struct task_struct *p, ...)`; kernel >= 4.17. Runs in
/// the exiting task: one that dies before its first syscall leaves
/// [`NEW_TASKS`], so that its address, reused by a later task, holds nothing.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    if new_tasks_noted() {
        // SAFETY: plain helper call without arguments.
        forget(unsafe { bpf_get_current_task() });
    }
    0
}

/// Whether some new task waits for its first syscall: one array read, which
/// is all that [`on_syscall`] adds to a followed syscall the rest of the time.
#[inline(always)]
fn new_tasks_noted() -> bool {
    holds_entries(Counted::NewTasks)
}

/// Called at the entry of every followed syscall (`id`): the current task's first,
/// if it is a noted new task; see [`first_syscall`].
#[inline(always)]
pub fn on_syscall(id: u64) {
    if new_tasks_noted() {
        first_syscall(id);
    }
}

/// The current task's first followed syscall, if it is a noted new task. A new process
/// is reported, so that userspace drops what it planted for an exited process of
/// the same pid, and stopped, unless that first syscall is an exec (a `vfork`
/// child's, say), which [`sched_process_exec`] stops in the new program. A new
/// thread shares its process's probes. A BPF subprogram of its own, so
/// `sys_enter`'s other paths are verified without it.
#[inline(never)]
fn first_syscall(id: u64) {
    // SAFETY: plain helper call without arguments.
    if !forget(unsafe { bpf_get_current_task() }) {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid >> 32 != pid_tgid & 0xffff_ffff || !holding() || !is_traced() {
        return;
    }
    match EVENTS.reserve::<ForkEvent>(0) {
        Some(mut entry) => {
            let held = if id == EXECVE || id == EXECVEAT {
                0
            } else {
                stop()
            };
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

/// Takes `task` out of [`NEW_TASKS`]; whether it was there.
#[inline(always)]
fn forget(task: u64) -> bool {
    if NEW_TASKS.remove(&task).is_err() {
        return false;
    }
    count_entries(Counted::NewTasks, 1u64.wrapping_neg());
    true
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
