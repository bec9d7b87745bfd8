//! Builds the eBPF object from `llmsim-ebpf` with the pinned nightly and bpf-linker
//! (installed by scripts/setup.sh) and leaves it in `OUT_DIR` for `include_bytes!`.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// rustc 1.98 on LLVM 22, the LLVM bpf-linker 0.13 is built against. A floating
/// `nightly` would move to LLVM 23 and fail at link time.
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-01";

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "llmsim-ebpf")
        .ok_or_else(|| anyhow!("llmsim-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("llmsim-ebpf manifest has no parent"))?;
    let package = Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Custom(EBPF_TOOLCHAIN))
}
