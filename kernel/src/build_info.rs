//! What a build of llmsim is, for both binaries' `--version`: the release
//! version, the commit it was built from (`kernel/build.rs` asks git, or takes
//! `LLMSIM_COMMIT` from the environment, and says `unknown` outside a git
//! checkout), the target it was built for (`x86_64-unknown-linux-musl` for the
//! static release binaries), and what each binary needs from the kernel. The
//! texts are whole at compile time, so clap can print them as they are.

/// The release version, shared by every crate of the workspace.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the binaries were built from (12 hex digits), or `unknown`.
pub const COMMIT: &str = env!("LLMSIM_COMMIT");

/// The target triple the binaries were built for.
pub const TARGET: &str = env!("LLMSIM_TARGET");

/// `--version` of a binary, whose kernel needs are `$kernel`.
macro_rules! long_version {
    ($kernel:literal) => {
        concat!(
            env!("CARGO_PKG_VERSION"),
            "\ncommit: ",
            env!("LLMSIM_COMMIT"),
            "\ntarget: ",
            env!("LLMSIM_TARGET"),
            "\nkernel: ",
            $kernel,
        )
    };
}

/// `llmsim-agent --version`: version, commit, target and the kernel that capture needs.
pub const AGENT_LONG_VERSION: &str = long_version!(
    "Linux 5.17 or newer with BTF (/sys/kernel/btf/vmlinux), uprobes, raw tracepoints, \
     BPF ring buffers and bpf_loop; cgroup v2 for `-- CMD` and `--cgroup`; \
     root or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN"
);

/// `replayd --version`: version, commit, target and the kernel that the redirect modes need.
pub const REPLAYD_LONG_VERSION: &str = long_version!(
    "Linux 5.8 or newer with cgroup v2 and cgroup BPF links (connect, sendmsg, recvmsg and \
     getpeername hooks, IPv4 and IPv6) for `-- CMD`, `--cgroup` and `--all`; \
     root or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN; `--listen` needs none of these"
);

#[cfg(test)]
mod tests {
    use super::{AGENT_LONG_VERSION, COMMIT, REPLAYD_LONG_VERSION, TARGET, VERSION};

    #[test]
    fn the_long_versions_name_version_commit_target_and_kernel() {
        for text in [AGENT_LONG_VERSION, REPLAYD_LONG_VERSION] {
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines[0], VERSION);
            assert_eq!(lines[1], format!("commit: {COMMIT}"));
            assert_eq!(lines[2], format!("target: {TARGET}"));
            assert!(lines[3].starts_with("kernel: Linux "), "{text}");
            assert_eq!(lines.len(), 4, "{text}");
        }
        assert!(
            COMMIT == "unknown" || COMMIT.bytes().all(|b| b.is_ascii_hexdigit()),
            "{COMMIT}"
        );
    }
}
