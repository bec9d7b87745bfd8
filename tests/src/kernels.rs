//! The kernel matrix seen from a test: [`xtask_kernels`] runs `cargo xtask kernels` (QEMU
//! guests booted by virtme-ng, see `xtask/src/kernels.rs`), and [`in_kernel_vm`] tells a test
//! that it runs inside one of those disposable guests, where it may change what would disturb
//! the host (its clock).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{CommandOutput, repo_root, run_command};

/// The variable the matrix's guest script sets.
pub const IN_VM_ENV: &str = "LLMSIM_KERNEL_VM";

/// How long `cargo xtask kernels` may take: guests may be emulated (TCG) where the host's KVM
/// cannot boot a distribution kernel.
const TIMEOUT: Duration = Duration::from_mins(40);

/// Whether `/dev/kvm` is hardware virtualisation (`kvm_intel` or `kvm_amd` loaded), which
/// boots a distribution kernel. A KVM without it (PVM, whose guests must be built for it)
/// cannot, and QEMU must then emulate the CPU (TCG).
pub fn hardware_kvm() -> bool {
    Path::new("/dev/kvm").exists()
        && ["kvm_intel", "kvm_amd"]
            .iter()
            .any(|module| Path::new("/sys/module").join(module).exists())
}

/// Whether this process runs in a guest of `cargo xtask kernels`: the guest script's variable
/// is set and the kernel was booted by virtme-ng, so a stray variable on the host is not enough.
pub fn in_kernel_vm() -> bool {
    std::env::var_os(IN_VM_ENV).is_some()
        && std::fs::read_to_string("/proc/cmdline").is_ok_and(|line| line.contains("virtme"))
}

/// Runs `cargo xtask kernels ARGS` from the repository root with the environment cargo gave
/// this test stripped of its per-package variables (which would make the nested cargo rebuild
/// build scripts), and returns its output.
pub fn xtask_kernels(args: &[&str]) -> CommandOutput {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["xtask", "kernels"])
        .args(args)
        .current_dir(repo_root());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let per_package = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || [
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
                "RUST_TEST_THREADS",
            ]
            .contains(&name.as_ref());
        if per_package {
            cmd.env_remove(name.as_ref());
        }
    }
    run_command(
        cmd,
        &format!("cargo xtask kernels {}", args.join(" ")),
        TIMEOUT,
    )
}

/// The table row of `kernel` (`6.1`, `6.12`, `host`) in `cargo xtask kernels` output, as
/// (passed, failed); panics with the output when there is none.
pub fn matrix_row(output: &CommandOutput, kernel: &str) -> (usize, usize) {
    output
        .stdout
        .lines()
        .find(|line| line.split_whitespace().next() == Some(kernel))
        .and_then(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let n = fields.len();
            Some((
                fields.get(n - 3)?.parse().ok()?,
                fields.get(n - 2)?.parse().ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("no row for kernel {kernel} in the matrix\n{output}"))
}
