//! The kernel matrix in CI: `cargo xtask kernels --kernel 6.1,6.12` boots Debian's 6.1 (the
//! oldest kernel Debian's archive offers) and 6.12 kernels under QEMU and runs the privileged
//! core of the suite in each (capture of openai-python and node, offline replay, the redirect
//! kill test); every one of those tests must pass on both. The host's kernel runs the same
//! tests in the rest of the suite.

use llmsim_tests::kernels::{hardware_kvm, in_kernel_vm, matrix_row, xtask_kernels};
use llmsim_tests::{on_path, privileged, requires};

/// The tests of the core, `CORE` in `xtask/src/kernels.rs`.
const CORE_TESTS: usize = 4;

#[test]
fn the_privileged_core_passes_on_debians_6_1_and_6_12_kernels() {
    if !privileged("kernel matrix")
        || !requires(
            on_path("vng") && on_path("qemu-system-x86_64"),
            "kernel matrix",
            "needs virtme-ng and QEMU (scripts/setup.sh)",
        )
        || !requires(
            hardware_kvm(),
            "kernel matrix",
            "needs hardware KVM (kvm_intel or kvm_amd): an emulated guest starts Python and Node too slowly for the tests' 30 s waits",
        )
        || in_kernel_vm()
    {
        return;
    }
    let output = xtask_kernels(&["--kernel", "6.1,6.12"]);
    assert!(output.status.success(), "{output}");
    for kernel in ["6.1", "6.12"] {
        assert_eq!(
            matrix_row(&output, kernel),
            (CORE_TESTS, 0),
            "kernel {kernel}\n{output}"
        );
    }
}
