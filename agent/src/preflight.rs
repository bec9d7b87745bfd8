//! Checks, before anything is loaded, that this machine and this user can run
//! the probes, so a missing piece is one clear line instead of a verifier dump:
//! privileges, a kernel new enough for the probes' helpers, BTF, uprobes and the
//! syscall tracepoints (tracefs is mounted if nothing did).

use std::path::Path;

use thiserror::Error;

/// Capability bits in /proc/self/status `CapEff`.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The oldest kernel the probes load on: they copy large TLS calls with `bpf_loop` (5.17).
/// Debian 12's 6.1 and 6.12 kernels and the development machine's 6.18 run the privileged
/// tests (`cargo xtask kernels`).
const MIN_KERNEL: (u32, u32) = (5, 17);

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
    /// The kernel is older than [`MIN_KERNEL`].
    #[error(
        "this kernel ({release}) is too old: llmsim-agent needs Linux 5.17 or newer (the probes use bpf_loop)"
    )]
    OldKernel {
        /// The running kernel's release, as `uname -r` prints it.
        release: String,
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
    /// tracefs out of reach, or no syscall tracepoints.
    #[error("{0}")]
    Tracefs(String),
}

/// Checks privileges, the kernel's version, BTF, uprobe support and the syscall
/// tracepoints.
pub fn check() -> Result<(), PreflightError> {
    check_privileges(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())?;
    check_release(
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
    )?;
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(PreflightError::NoBtf);
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        return Err(PreflightError::NoUprobes);
    }
    llmsim_kernel::tracefs::ensure_syscall_tracepoints()
        .map_err(|e| PreflightError::Tracefs(e.to_string()))
}

/// Refuses a kernel release older than [`MIN_KERNEL`]. A release that does not start with
/// `MAJOR.MINOR` passes: the load then says what is missing.
fn check_release(release: &str) -> Result<(), PreflightError> {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) if (major, minor) < MIN_KERNEL => {
            Err(PreflightError::OldKernel {
                release: release.to_owned(),
            })
        }
        _ => Ok(()),
    }
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

    #[test]
    fn a_kernel_older_than_5_17_is_one_line() {
        let err = check_release("5.15.0-91-generic").unwrap_err();
        assert_eq!(
            err.to_string(),
            "this kernel (5.15.0-91-generic) is too old: llmsim-agent needs Linux 5.17 or newer (the probes use bpf_loop)"
        );
        assert!(check_release("4.19.0-27-amd64").is_err());
        for release in [
            "5.17.0",
            "6.1.0-57-amd64",
            "6.12.118+deb12-amd64",
            "6.18.44-fc-v1252",
            "",
            "unknown",
        ] {
            assert_eq!(check_release(release), Ok(()), "{release}");
        }
    }
}
