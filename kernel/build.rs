//! Builds the eBPF object from `llmsim-ebpf` with the nightly pinned in
//! ebpf/rust-toolchain.toml and bpf-linker (both installed by scripts/setup.sh)
//! and leaves it in `OUT_DIR` for `include_bytes_aligned!`. Without the `ebpf`
//! feature there is nothing to build.

#[cfg(feature = "ebpf")]
fn main() -> anyhow::Result<()> {
    use anyhow::{Context as _, anyhow};
    use aya_build::{Package, Toolchain};

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
    let toolchain_file = root_dir.join("rust-toolchain.toml");
    println!("cargo::rerun-if-changed={toolchain_file}");
    let toolchain = pinned_toolchain(toolchain_file.as_std_path())?;
    let package = Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    // aya-build runs `rustup run <toolchain> cargo build`: rustup's
    // RUSTUP_TOOLCHAIN then outranks every rust-toolchain.toml on the way.
    aya_build::build_ebpf([package], Toolchain::Custom(&toolchain))
}

/// `toolchain.channel` of the eBPF crate's rust-toolchain.toml, the one pin
/// scripts/setup.sh installs too.
#[cfg(feature = "ebpf")]
fn pinned_toolchain(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::{Context as _, anyhow};

    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let file: toml::Table = text
        .parse()
        .with_context(|| format!("{}", path.display()))?;
    file.get("toolchain")
        .and_then(|t| t.get("channel"))
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{} has no toolchain.channel", path.display()))
}

#[cfg(not(feature = "ebpf"))]
fn main() {}
