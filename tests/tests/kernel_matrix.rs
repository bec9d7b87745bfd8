//! The kernel matrix in CI: `cargo xtask kernels --kernel 5.10,6.1,6.12` boots Debian 11's
//! 5.10 (the oldest kernel Debian's archive serves) and Debian 12's 6.1 and 6.12 under QEMU
//! (emulated where the host's KVM cannot boot them) and runs the privileged core of the suite
//! in each: capture of openai-python and node, offline replay, the redirect kill test and
//! replayd with curl, and on 5.10, which is older than the agent's minimum, the agent's
//! one-line refusal and replayd alone. Every one of those tests must pass on every kernel.
//! The host's kernel runs the same tests in the rest of the suite.

use llmsim_tests::kernels::{in_kernel_vm, matrix_row, xtask_kernels};
use llmsim_tests::{on_path, privileged, requires};

/// The tests of the core (`CORE` in `xtask/src/kernels.rs`): all of them from 5.17 on, and
/// below that the two that do not need the agent's probes.
const CORE_TESTS: usize = 6;
const CORE_TESTS_WITHOUT_AGENT: usize = 2;

#[test]
fn the_privileged_core_passes_on_debians_5_10_6_1_and_6_12_kernels() {
    if !privileged("kernel matrix")
        || !requires(
            on_path("vng") && on_path("qemu-system-x86_64"),
            "kernel matrix",
            "needs virtme-ng and QEMU (scripts/setup.sh)",
        )
        || in_kernel_vm()
    {
        return;
    }
    let output = xtask_kernels(&["--kernel", "5.10,6.1,6.12"]);
    for (kernel, tests) in [
        ("5.10", CORE_TESTS_WITHOUT_AGENT),
        ("6.1", CORE_TESTS),
        ("6.12", CORE_TESTS),
    ] {
        assert_eq!(
            matrix_row(&output, kernel),
            (tests, 0),
            "kernel {kernel}\n{output}"
        );
    }
    assert!(output.status.success(), "{output}");
}
