//! A private, throwaway network namespace per test: only a loopback interface (so nothing inside
//! can reach any other address), and a hosts file mapping every provider host name to 127.0.0.1
//! and `::1`. `ip netns exec` bind-mounts `/etc/netns/<name>/hosts` over `/etc/hosts` in a private
//! mount namespace, so programs run through [`TestNetns::command`] resolve `api.openai.com` to the
//! fake provider while the rest of the machine is untouched. Needs root.
//!
//! Namespaces are named `llmsim-t<pid>-<n>`; ones left behind by a test process that was killed
//! before its guards ran are removed the next time a namespace is created.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};

/// The provider host names llmsim knows; each resolves to loopback inside a [`TestNetns`].
pub const PROVIDER_HOSTS: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "api.x.ai",
    "openrouter.ai",
];

const PREFIX: &str = "llmsim-t";

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` mounts /run/netns on first use; concurrent first uses can race.
static CREATE: Mutex<()> = Mutex::new(());
static CLEAN_STALE: Once = Once::new();

/// A named network namespace with loopback up and provider names in its hosts file; deleted
/// (namespace and `/etc/netns/<name>`) on drop.
pub struct TestNetns {
    name: String,
    etc_dir: PathBuf,
}

impl TestNetns {
    /// Creates `llmsim-t<pid>-<n>`, brings `lo` up and writes `/etc/netns/<name>/hosts`.
    /// Panics (with the `ip` output) if that fails, e.g. when not root: gate on
    /// [`crate::privileged`] first.
    #[expect(
        clippy::new_without_default,
        reason = "creating a namespace is a side effect, not a default value"
    )]
    pub fn new() -> Self {
        let netns = Self::create();
        std::fs::create_dir_all(&netns.etc_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", netns.etc_dir.display()));
        let hosts = netns.etc_dir.join("hosts");
        std::fs::write(&hosts, hosts_file())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", hosts.display()));
        netns
    }

    /// A namespace like a CI runner with no network: loopback only, and the
    /// machine's own hosts file and resolver settings, so provider names do not
    /// resolve and nothing but loopback is reachable. Replay must make the
    /// names work by itself there.
    pub fn offline() -> Self {
        Self::create()
    }

    /// An [`offline`](Self::offline) namespace with one stand-in for the outside world at
    /// `addr` (IPv4 or IPv6), added to loopback so that it is the namespace's only other destination, and
    /// named as the nameserver in the namespace's `/etc/resolv.conf`: a resolver and a
    /// provider the test runs there stand in for the real ones, so a call that escapes
    /// replay is seen instead of paid for.
    pub fn offline_with_stand_in(addr: impl Into<IpAddr>) -> Self {
        let addr = addr.into();
        let netns = Self::create();
        let (prefix, nodad) = match addr {
            IpAddr::V4(_) => (32, None),
            // No duplicate address detection: the address is usable at once.
            IpAddr::V6(_) => (128, Some("nodad")),
        };
        let local = format!("{addr}/{prefix}");
        let mut args = vec!["-n", &netns.name, "addr", "add", &local, "dev", "lo"];
        args.extend(nodad);
        ip(&args);
        std::fs::create_dir_all(&netns.etc_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", netns.etc_dir.display()));
        let resolv_conf = netns.etc_dir.join("resolv.conf");
        std::fs::write(&resolv_conf, format!("nameserver {addr}\n"))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", resolv_conf.display()));
        netns
    }

    fn create() -> Self {
        CLEAN_STALE.call_once(remove_stale);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let etc_dir = Path::new("/etc/netns").join(&name);
        {
            let _serialised = CREATE
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            ip(&["netns", "add", &name]);
        }
        // From here on, Drop cleans up whatever was created.
        let netns = TestNetns { name, etc_dir };
        ip(&["-n", &netns.name, "link", "set", "lo", "up"]);
        netns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The arguments that run a program inside the namespace: `ip netns exec <name>`; append the
    /// program and its arguments. Useful to wrap a namespaced program in another one, as in
    /// `llmsim-agent capture -- ip netns exec <name> python3 client.py`.
    pub fn exec_prefix(&self) -> Vec<OsString> {
        ["ip", "netns", "exec", &self.name]
            .into_iter()
            .map(OsString::from)
            .collect()
    }

    /// A command running `program` inside the namespace (`ip netns exec <name> program`); add
    /// arguments and environment as usual. `ip` execs the program directly, so the child's pid
    /// is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        delete(&self.name, &self.etc_dir);
    }
}

fn hosts_file() -> String {
    let names = PROVIDER_HOSTS.join(" ");
    let mut hosts = String::from("# written by llmsim-tests (TestNetns)\n");
    let _ = writeln!(hosts, "127.0.0.1\tlocalhost {names}");
    let _ = writeln!(hosts, "::1\tlocalhost ip6-localhost ip6-loopback {names}");
    hosts
}

/// Runs `ip ARGS`, panicking with its output on failure.
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run `ip {}` (is iproute2 installed?): {e}",
            args.join(" ")
        )
    });
    assert!(
        output.status.success(),
        "`ip {}` failed ({}): {}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

fn delete(name: &str, etc_dir: &Path) {
    match Command::new("ip").args(["netns", "del", name]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "warning: `ip netns del {name}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("warning: cannot run `ip netns del {name}`: {e}"),
    }
    if let Err(e) = std::fs::remove_dir_all(etc_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("warning: cannot remove {}: {e}", etc_dir.display());
    }
}

/// Removes `llmsim-t<pid>-<n>` namespaces whose creating process no longer exists, after
/// killing what still runs in them (a fake provider orphaned by a test run killed with `SIGKILL`).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .map(|(p, _)| p)
        else {
            continue;
        };
        if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
            for orphan in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", orphan]).status();
            }
        }
        eprintln!("note: removing network namespace {name} left behind by dead test process {pid}");
        delete(name, &Path::new("/etc/netns").join(name));
    }
}
