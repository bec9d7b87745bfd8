//! `cargo xtask dist`: the release artifacts for x86-64 Linux. One release
//! build of `llmsim-agent` and `replayd` for `x86_64-unknown-linux-musl`
//! (statically linked, each with its eBPF object embedded, so that they run on
//! any x86-64 Linux whatever its C library), packed twice: a versioned tarball
//! with its SHA-256 checksum file, laid out as an installation prefix (`bin/`,
//! `share/man/man1/`, shell completions), and a Debian package built from a
//! staged tree with `dpkg-deb --build`. The manual pages and completions come
//! from the binaries themselves (their hidden `generate-manual`), so they are
//! generated from the clap definitions of exactly the binaries shipped.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

/// The Rust target of the release binaries: musl links statically by default.
pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// The binaries shipped, as cargo builds them.
const BINARIES: [&str; 2] = ["llmsim-agent", "replayd"];
/// The packages that hold them.
const PACKAGES: [&str; 2] = ["llmsim-agent", "llmsim-replayd"];
/// The version every crate of the workspace shares.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The Debian package's name.
const DEB_PACKAGE: &str = "llmsim";
/// The repository, as the workspace's manifest names it.
const REPOSITORY: &str = "https://github.com/llmsim/llmsim";

/// Where completions go, per file `clap_complete` writes (`NAME.bash`, `_NAME`,
/// `NAME.fish`): the path under an installation prefix's `share/` used by the
/// tarball, and the one under `/usr/share/` that Debian's shells read.
struct CompletionPlace {
    /// The file name for binary `name`, as `generate-manual` writes it.
    generated: fn(&str) -> String,
    /// The directory under a prefix's `share/` (tarball and `install.sh`).
    prefix_dir: &'static str,
    /// The directory under `/usr/share/` (the Debian package).
    debian_dir: &'static str,
    /// The installed file name for binary `name` in the Debian package.
    debian_name: fn(&str) -> String,
}

const COMPLETIONS: [CompletionPlace; 3] = [
    CompletionPlace {
        generated: |name| format!("{name}.bash"),
        prefix_dir: "bash-completion/completions",
        debian_dir: "bash-completion/completions",
        debian_name: str::to_owned,
    },
    CompletionPlace {
        generated: |name| format!("_{name}"),
        prefix_dir: "zsh/site-functions",
        debian_dir: "zsh/vendor-completions",
        debian_name: |name| format!("_{name}"),
    },
    CompletionPlace {
        generated: |name| format!("{name}.fish"),
        prefix_dir: "fish/vendor_completions.d",
        debian_dir: "fish/vendor_completions.d",
        debian_name: |name| format!("{name}.fish"),
    },
];

/// What `dist` wrote.
pub struct Artifacts {
    /// `llmsim-VERSION-x86_64-linux-musl.tar.gz`.
    pub tarball: PathBuf,
    /// The tarball's checksum file, `sha256sum` format.
    pub checksum: PathBuf,
    /// `llmsim_VERSION_amd64.deb`.
    pub deb: PathBuf,
}

/// The release build and its artifacts in `out`.
pub fn run(root: &Path, out: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut args = vec![
        "build",
        "--release",
        "--locked",
        "--target",
        TARGET,
        "--bins",
    ];
    for package in PACKAGES {
        args.extend(["-p", package]);
    }
    crate::cargo(&args)?;
    let built = target_dir(root).join(TARGET).join("release");
    let artifacts = package(root, &built, out)?;
    let size = |path: &Path| fs::metadata(path).map(|m| m.len()).unwrap_or_default();
    println!(
        "dist: {} ({} bytes), {} ({} bytes), {}; in {:.0} s",
        artifacts.tarball.display(),
        size(&artifacts.tarball),
        artifacts.deb.display(),
        size(&artifacts.deb),
        artifacts.checksum.display(),
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// cargo's target directory: `CARGO_TARGET_DIR`, else the workspace's `target/`.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// Packs the binaries in `built` into the tarball, its checksum and the .deb in `out`.
fn package(root: &Path, built: &Path, out: &Path) -> anyhow::Result<Artifacts> {
    for name in BINARIES {
        let binary = built.join(name);
        if has_interpreter(&binary)? {
            bail!(
                "{} is dynamically linked; the release binaries must be static",
                binary.display()
            );
        }
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let work = tempfile::tempdir_in(out).context("a staging directory")?;
    let manual = work.path().join("manual");
    for name in BINARIES {
        run_checked(
            Command::new(built.join(name))
                .arg("generate-manual")
                .arg(&manual),
        )?;
    }

    let stem = format!("llmsim-{VERSION}-x86_64-linux-musl");
    let tree = work.path().join(&stem);
    stage_prefix(root, built, &manual, &tree)?;
    let tarball = out.join(format!("{stem}.tar.gz"));
    run_checked(
        Command::new("tar")
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "--use-compress-program=gzip -9n",
                "-cf",
            ])
            .arg(&tarball)
            .arg("-C")
            .arg(work.path())
            .arg(&stem),
    )?;
    let checksum = write_checksum(&tarball)?;

    let deb_root = work.path().join("deb");
    stage_deb(built, &manual, &deb_root)?;
    let deb = out.join(format!("{DEB_PACKAGE}_{VERSION}_amd64.deb"));
    run_checked(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&deb_root)
            .arg(&deb),
    )?;
    write_checksum(&deb)?;
    Ok(Artifacts {
        tarball,
        checksum,
        deb,
    })
}

/// The tarball's tree, an installation prefix: `bin/`, `share/man/man1/`,
/// completions under `share/`, and the README.
fn stage_prefix(root: &Path, built: &Path, manual: &Path, tree: &Path) -> anyhow::Result<()> {
    for name in BINARIES {
        copy(&built.join(name), &tree.join("bin").join(name), 0o755)?;
    }
    for page in manual_pages(manual)? {
        let name = page.file_name().context("a manual page's name")?;
        copy(&page, &tree.join("share/man/man1").join(name), 0o644)?;
    }
    for place in &COMPLETIONS {
        for name in BINARIES {
            let file = (place.generated)(name);
            copy(
                &manual.join(&file),
                &tree.join("share").join(place.prefix_dir).join(&file),
                0o644,
            )?;
        }
    }
    copy(&root.join("README.md"), &tree.join("README.md"), 0o644)
}

/// The Debian package's tree: the binaries in `/usr/bin`, gzipped manual pages,
/// completions where Debian's bash, zsh and fish look, the copyright file and
/// `DEBIAN/control`. The binaries are static, so the package depends on nothing.
fn stage_deb(built: &Path, manual: &Path, root: &Path) -> anyhow::Result<()> {
    let usr = root.join("usr");
    for name in BINARIES {
        copy(&built.join(name), &usr.join("bin").join(name), 0o755)?;
    }
    let man1 = usr.join("share/man/man1");
    for page in manual_pages(manual)? {
        let name = page.file_name().context("a manual page's name")?;
        let installed = man1.join(name);
        copy(&page, &installed, 0o644)?;
        run_checked(Command::new("gzip").arg("-9n").arg(&installed))?;
    }
    for place in &COMPLETIONS {
        for name in BINARIES {
            copy(
                &manual.join((place.generated)(name)),
                &usr.join("share")
                    .join(place.debian_dir)
                    .join((place.debian_name)(name)),
                0o644,
            )?;
        }
    }
    let doc = usr.join("share/doc").join(DEB_PACKAGE);
    fs::create_dir_all(&doc).with_context(|| format!("creating {}", doc.display()))?;
    fs::write(
        doc.join("copyright"),
        format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
             Upstream-Name: llmsim\nSource: {REPOSITORY}\n\n\
             Files: *\nLicense: MIT or Apache-2.0\n"
        ),
    )
    .context("writing the copyright file")?;

    let installed_kib = tree_size(&usr)?.div_ceil(1024);
    let control = root.join("DEBIAN");
    fs::create_dir_all(&control).with_context(|| format!("creating {}", control.display()))?;
    fs::write(
        control.join("control"),
        format!(
            "Package: {DEB_PACKAGE}\n\
             Version: {VERSION}\n\
             Architecture: amd64\n\
             Maintainer: llmsim developers <{REPOSITORY}/issues>\n\
             Installed-Size: {installed_kib}\n\
             Section: devel\n\
             Priority: optional\n\
             Homepage: {REPOSITORY}\n\
             Description: record and replay the LLM API traffic of unmodified programs\n \
             llmsim-agent records the HTTPS exchanges of unmodified programs with eBPF,\n \
             reading the plaintext at the TLS library; replayd answers the same programs\n \
             from the recording, offline, through a cgroup connect hook. Both binaries\n \
             are statically linked and embed their eBPF object.\n"
        ),
    )
    .context("writing DEBIAN/control")?;
    Ok(())
}

/// The `*.1` files `generate-manual` wrote, sorted.
fn manual_pages(manual: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut pages = Vec::new();
    for entry in fs::read_dir(manual).with_context(|| format!("reading {}", manual.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", manual.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "1") {
            pages.push(path);
        }
    }
    pages.sort();
    Ok(pages)
}

/// Copies `from` to `to` (creating its directory) with permissions `mode`.
fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = to.parent().context("a destination with a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", to.display()))
}

/// The bytes of every file under `dir`.
fn tree_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let meta = entry
            .metadata()
            .with_context(|| format!("{}", entry.path().display()))?;
        total += if meta.is_dir() {
            tree_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Writes `FILE.sha256` next to `file`, in `sha256sum`'s format, and returns its path.
fn write_checksum(file: &Path) -> anyhow::Result<PathBuf> {
    let dir = file.parent().context("an artifact with a directory")?;
    let name = file.file_name().context("an artifact with a name")?;
    let output = Command::new("sha256sum")
        .arg(name)
        .current_dir(dir)
        .output()
        .context("running sha256sum")?;
    if !output.status.success() {
        bail!(
            "sha256sum {} failed ({}): {}",
            file.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let mut path = file.as_os_str().to_owned();
    path.push(".sha256");
    let path = PathBuf::from(path);
    fs::write(&path, &output.stdout).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Whether the ELF file at `path` names a program interpreter (`PT_INTERP`),
/// that is, needs a dynamic loader and a C library from the host.
fn has_interpreter(path: &Path) -> anyhow::Result<bool> {
    const PT_INTERP: u32 = 3;
    let elf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let not_elf = || anyhow::anyhow!("{} is not a 64-bit little-endian ELF file", path.display());
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(not_elf());
    }
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let phoff = u64_at(0x20).ok_or_else(not_elf)?;
    let phentsize = u16_at(0x36).ok_or_else(not_elf)?;
    let phnum = u16_at(0x38).ok_or_else(not_elf)?;
    let phoff = usize::try_from(phoff).map_err(|_| not_elf())?;
    for i in 0..usize::from(phnum) {
        let at = phoff + i * usize::from(phentsize);
        let kind = elf
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(not_elf)?;
        if kind == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Runs `command`, failing with its stderr when it fails.
fn run_checked(command: &mut Command) -> anyhow::Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn a_dynamically_linked_program_has_an_interpreter() {
        // The test binary itself is built for the host's glibc.
        let exe = std::env::current_exe().expect("current_exe");
        assert!(super::has_interpreter(&exe).expect("an ELF file"));
        let not_elf = super::has_interpreter(Path::new(env!("CARGO_MANIFEST_PATH")));
        assert!(not_elf.is_err());
    }
}
