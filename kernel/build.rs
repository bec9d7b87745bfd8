//! Builds the eBPF object from `llmsim-ebpf` with the nightly pinned in
//! ebpf/rust-toolchain.toml and bpf-linker (both installed by scripts/setup.sh)
//! and leaves it in `OUT_DIR` for `include_bytes_aligned!`. Without the `ebpf`
//! feature there is no object to build. Either way it tells `build_info` the
//! commit and the target being built.

use std::path::Path;
use std::process::Command;

#[cfg(feature = "ebpf")]
fn main() -> anyhow::Result<()> {
    use anyhow::{Context as _, anyhow};
    use aya_build::{Package, Toolchain};

    emit_build_info();

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
    // The nested `cargo build --release` would read the workspace's release profile, whose
    // whole-program LTO is for the host binaries: the eBPF object keeps cargo's defaults
    // (bpf-linker links its bitcode itself), so it is the same object with or without them.
    // SAFETY: a build script runs on one thread; nothing reads the environment concurrently.
    unsafe {
        std::env::set_var("CARGO_PROFILE_RELEASE_LTO", "false");
        std::env::set_var("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16");
    }
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
fn main() {
    emit_build_info();
}

/// `LLMSIM_COMMIT` and `LLMSIM_TARGET` for `build_info`: the commit from env
/// `LLMSIM_COMMIT` when set (a build outside git that knows its commit), else
/// from git, else `unknown`.
fn emit_build_info() {
    println!("cargo::rerun-if-env-changed=LLMSIM_COMMIT");
    let commit = std::env::var("LLMSIM_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo::rustc-env=LLMSIM_COMMIT={commit}");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo::rustc-env=LLMSIM_TARGET={target}");
}

/// HEAD's commit, abbreviated to 12 digits, watching the files that change
/// when HEAD moves (HEAD itself, the branch it names, packed refs), so that
/// a new commit is noticed.
fn git_commit() -> Option<String> {
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        // A path that does not exist would make cargo rerun this script on every build.
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", name])
            && Path::new(&path).exists()
        {
            println!("cargo::rerun-if-changed={path}");
        }
    }
    Some(commit)
}

/// git's trimmed stdout, run in this crate's directory; `None` when git is
/// missing, fails, or this is not a git checkout, with git's reason, if it gave
/// one, as a build warning (a failed commit lookup reads `unknown`).
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    let output = match output {
        Ok(output) if output.status.success() => output,
        Ok(output) => {
            // Quiet failures are answers (`symbolic-ref -q` on a detached HEAD).
            let reason = String::from_utf8_lossy(&output.stderr);
            if !reason.trim().is_empty() {
                println!("cargo::warning=git {}: {}", args.join(" "), reason.trim());
            }
            return None;
        }
        Err(e) => {
            println!("cargo::warning=git {}: {e}", args.join(" "));
            return None;
        }
    };
    let text = String::from_utf8(output.stdout).ok()?;
    Some(text.trim().to_owned())
}
