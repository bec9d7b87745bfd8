//! What the agent reads from /proc about other processes: which exist, whether
//! one is still running, the process a thread belongs to, and what a process
//! is (command name and executable) for the exchanges it made. Every reader
//! treats a process that vanished meanwhile as an answer (`None`, not alive,
//! empty), never as an error: traced processes come and go at any time.

use llmsim_snapshot::model::ProcessInfo;

/// Every process id /proc lists (zombies included).
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The state letter of a process in /proc/PID/stat (after the command name,
/// which may itself contain spaces and parentheses).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_comm) = stat.rsplit_once(')')?;
    after_comm.trim_start().chars().next()
}

/// Whether `pid` is a running process: it exists and is not a zombie waiting
/// to be reaped (which /proc still lists).
pub fn is_alive(pid: u32) -> bool {
    process_state(pid).is_some_and(|state| !matches!(state, 'Z' | 'X' | 'x'))
}

/// The thread group (process) `pid` belongs to, if it is alive: a thread id
/// names its process.
pub fn tgid_of(pid: u32) -> Option<u32> {
    if pid == 0 || !is_alive(pid) {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|tgid| tgid.trim().parse().ok())
}

/// What /proc says about `pid` now: its command name and executable.
pub fn process_info(pid: u32) -> ProcessInfo {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    ProcessInfo { pid, comm, exe }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_its_own_tgid() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert_eq!(tgid_of(me), Some(me));
        assert_eq!(tgid_of(0), None);
    }

    #[test]
    fn a_reaped_child_is_gone_and_a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie once it exits.
        while process_state(pid) != Some('Z') {
            std::thread::yield_now();
        }
        assert!(!is_alive(pid));
        child.wait().unwrap();
        assert_eq!(tgid_of(pid), None);
    }
}
