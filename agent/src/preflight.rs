//! Checks, before anything is loaded, that this machine and this user can run
//! the probes, so a missing piece is one clear line instead of a verifier dump.

use std::path::Path;

use thiserror::Error;

/// Capability bits in /proc/self/status `CapEff`.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Something the probes need is missing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PreflightError {
    /// Not root and lacking the capabilities.
    #[error(
        "missing privilege: run as root (sudo) or grant CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (missing: {missing})"
    )]
    Privilege {
        /// The capabilities that are missing.
        missing: String,
    },
    /// No kernel BTF.
    #[error(
        "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): use a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.8 or newer)"
    )]
    NoBtf,
    /// No uprobe PMU.
    #[error(
        "this kernel has no uprobes (/sys/bus/event_source/devices/uprobe is missing): use a kernel built with CONFIG_UPROBE_EVENTS=y"
    )]
    NoUprobes,
}

/// Checks privileges, BTF and uprobe support.
pub fn check() -> Result<(), PreflightError> {
    check_privileges(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())?;
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(PreflightError::NoBtf);
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        return Err(PreflightError::NoUprobes);
    }
    Ok(())
}

fn check_privileges(status: &str) -> Result<(), PreflightError> {
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| effective & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::Privilege {
            missing: missing.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_capabilities_pass() {
        assert_eq!(
            check_privileges("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Ok(())
        );
    }

    #[test]
    fn a_normal_user_is_told_what_is_missing() {
        let err = check_privileges("CapEff:\t0000000000000000\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing privilege: run as root (sudo) or grant CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (missing: CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)"
        );
    }
}
