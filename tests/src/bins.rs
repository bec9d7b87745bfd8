//! Locating the built llmsim binaries under test, and stripped copies of the test's own
//! clients. `cargo test -p llmsim-tests` does not build other packages' binaries, so a missing
//! binary is reported with the command that builds it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding the binaries under test: env `LLMSIM_BIN_DIR` if set, else the cargo
/// profile directory this test executable was built into (`target/debug` for `cargo test`,
/// honouring `CARGO_TARGET_DIR`), else `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LLMSIM_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // Test executables live in <target>/<profile>/deps/.
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent()
        && deps.file_name().is_some_and(|n| n == "deps")
        && let Some(profile) = deps.parent()
    {
        return profile.to_path_buf();
    }
    crate::paths::repo_root().join("target/debug")
}

/// The path of a built binary in [`bin_dir`]; panics with the build command if it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "binary {name} not found at {}: build it first with `cargo build -p llmsim-agent -p llmsim-replayd` \
         (add --release and set LLMSIM_BIN_DIR=target/release for release builds), \
         or point LLMSIM_BIN_DIR at the directory holding it",
        path.display()
    );
    path
}

/// The `llmsim-agent` binary (package `agent`).
pub fn llmsim_agent() -> PathBuf {
    binary("llmsim-agent")
}

/// The `replayd` binary (package `replayd`).
pub fn replayd() -> PathBuf {
    binary("replayd")
}

/// A copy of `program` without its symbols (`strip -o`, from binutils) in `dir`, named
/// `<name>-stripped`; panics if `strip` fails.
pub fn stripped_copy(program: &Path, dir: &Path) -> PathBuf {
    let name = program
        .file_name()
        .expect("a program path names a file")
        .to_string_lossy();
    let stripped = dir.join(format!("{name}-stripped"));
    let status = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(program)
        .status()
        .expect("running strip");
    assert!(status.success(), "strip failed: {status}");
    stripped
}
