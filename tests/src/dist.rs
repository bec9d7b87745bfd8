//! What the release-artifact tests need: the artifacts themselves (`cargo xtask
//! dist`, built once per test process into `target/dist`), a view of this
//! machine without the Rust and LLVM toolchains, as a CI runner or a user's
//! machine has, and a loopback HTTP server handing out files as a release
//! download does.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{binary, repo_root, run_command};

/// The release version the artifacts carry (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long the release build and packing may take on a cold machine.
const DIST_TIMEOUT: Duration = Duration::from_mins(30);

/// `cargo xtask dist`'s output.
pub struct Artifacts {
    /// The directory holding them all.
    pub dir: PathBuf,
    /// `llmsim-VERSION-x86_64-linux-musl.tar.gz`.
    pub tarball: PathBuf,
    /// Its checksum file, `TARBALL.sha256`.
    pub checksum: PathBuf,
    /// `llmsim_VERSION_amd64.deb`.
    pub deb: PathBuf,
}

impl Artifacts {
    /// The tarball's file name.
    pub fn tarball_name(&self) -> String {
        file_name(&self.tarball)
    }
}

/// The Rust target of the release binaries.
const TARGET: &str = "x86_64-unknown-linux-musl";

/// Gate for a test that needs the release artifacts: `true` when this machine can build
/// them (the Rust standard library for the musl target and `musl-gcc`, which
/// scripts/setup.sh installs, and `dpkg-deb`), otherwise as [`crate::requires`] says.
pub fn can_build_artifacts(feature: &str) -> bool {
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
    };
    let musl_std = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .is_some_and(|output| Path::new(String::from_utf8_lossy(&output.stdout).trim()).is_dir());
    crate::requires(
        musl_std && on_path("musl-gcc") && on_path("dpkg-deb"),
        feature,
        "needs the x86_64-unknown-linux-musl target, musl-gcc and dpkg-deb (scripts/setup.sh)",
    )
}

/// The release artifacts, built by the `xtask` binary (`xtask dist --out target/dist`) on first
/// use in this process; later calls wait for that build and share it. Panics with xtask's
/// output if the build fails.
pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        let dir = repo_root().join("target/dist");
        let mut dist = Command::new(binary("xtask"));
        dist.arg("dist")
            .arg("--out")
            .arg(&dir)
            .current_dir(repo_root());
        let output = run_command(dist, "cargo xtask dist", DIST_TIMEOUT);
        output.assert_success();
        eprint!("{}", output.stdout);
        let tarball = dir.join(format!("llmsim-{VERSION}-x86_64-linux-musl.tar.gz"));
        let artifacts = Artifacts {
            checksum: dir.join(format!("{}.sha256", file_name(&tarball))),
            tarball,
            deb: dir.join(format!("llmsim_{VERSION}_amd64.deb")),
            dir,
        };
        for file in [&artifacts.tarball, &artifacts.checksum, &artifacts.deb] {
            assert!(
                file.is_file(),
                "xtask dist did not write {}\n{output}",
                file.display()
            );
        }
        artifacts
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_else(|| panic!("{} has no file name", path.display()))
        .to_string_lossy()
        .into_owned()
}

/// What a machine without the toolchains that build llmsim lacks: the Rust
/// toolchains and cargo's home, LLVM. Each is covered by an empty read-only tmpfs.
const HIDE_TOOLCHAINS: &str = r#"
for dir in "$HOME/.cargo" "$HOME/.rustup" "${CARGO_HOME:-}" "${RUSTUP_HOME:-}" /usr/lib/llvm-*; do
    [ -n "$dir" ] && [ -d "$dir" ] || continue
    mount -t tmpfs -o ro,size=64k llmsim-no-toolchain "$dir"
done
for tool in cargo rustc rustup bpf-linker; do
    if found=$(command -v "$tool"); then
        echo "the toolchain is still visible: $tool at $found" >&2
        exit 97
    fi
done
for dir in /usr/lib/llvm-*; do
    if [ -n "$(ls -A "$dir")" ]; then
        echo "LLVM is still visible in $dir" >&2
        exit 97
    fi
done
"#;

/// A command running `program` in a private mount namespace (`unshare --mount`)
/// in which `~/.cargo`, `~/.rustup` and `/usr/lib/llvm-*` are empty, so that
/// neither a Rust toolchain nor LLVM can be found. The bash lines `setup` run
/// there first (as root, with `set -eu`), before those are hidden, so that
/// mounts they make (an overlay over `/usr`) cannot bring them back. Add
/// arguments as usual. Needs root.
pub fn without_toolchains(setup: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "bash", "-euc"])
        .arg(format!("{setup}\n{HIDE_TOOLCHAINS}\nexec \"$@\""))
        .arg("bash")
        .arg(program);
    cmd
}

/// A loopback HTTP/1.1 server answering `GET /NAME` with the file `NAME` of one
/// directory (200 with the bytes, or 404), one connection at a time, as a release
/// download host does. Stops on drop.
pub struct FileServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FileServer {
    /// Serves the files of `dir` on `127.0.0.1:<free port>`.
    pub fn serve(dir: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
        let addr = listener.local_addr().expect("the listener's address");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            let dir = dir.to_path_buf();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        answer(stream, &dir);
                    }
                }
            })
        };
        FileServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// The URL of file `name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request on `stream` from `dir`; only plain file names are served.
fn answer(mut stream: TcpStream, dir: &Path) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // The rest of the head, up to the empty line.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
        line.clear();
    }
    let name = request_line
        .strip_prefix("GET /")
        .and_then(|rest| rest.split(' ').next())
        .filter(|name| !name.is_empty() && !name.contains('/') && !name.starts_with('.'));
    let response = match name.and_then(|name| std::fs::read(dir.join(name)).ok()) {
        Some(body) => {
            let mut response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            response.extend_from_slice(&body);
            response
        }
        None => {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        }
    };
    let _ = stream.write_all(&response);
    let _ = stream.shutdown(Shutdown::Write);
}
