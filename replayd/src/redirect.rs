//! The kernel side of replay for `-- CMD`, `--cgroup` and `--all`. Every host
//! replay answers for ([`answered_hosts`]: the recorded ones and every known
//! provider host) gets a loopback address of its own (in 127.77.0.0/16) for
//! replayd's DNS to answer; the cgroup redirect sends connects to those
//! addresses, and the cgroup's DNS, to replayd. A provider the snapshot does not
//! have is thus a miss, never a paid call. A fresh cgroup made for `-- CMD` is
//! killed with replayd: its command can never outlive the redirect and so never
//! reaches the real, paid API. Recorded plain-HTTP destinations (a local model server
//! such as Ollama on `localhost:11434`) are redirected by address and port, loopback
//! ones included, so replay answers them whether or not a server listens there
//! ([`plain_destinations`]).

use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Mutex,
};

use llmsim_kernel::{
    cgroup::{Cgroup, CgroupError, cgroup2_mount},
    redirect::{Redirect, RedirectError, RedirectSettings},
    sys::command_in_cgroup,
};
use llmsim_snapshot::provider::KNOWN_HOSTS;

use crate::accept::OriginalDestination;
use crate::peer::{self, ClientProcess};
use thiserror::Error;

/// Failures setting up the redirect.
#[derive(Debug, Error)]
pub enum RedirectSetupError {
    /// The cgroup could not be found or created.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The hooks could not be attached.
    #[error("attaching the redirect to {} failed", path.display())]
    Attach {
        /// The cgroup.
        path: PathBuf,
        /// The cause (boxed: eBPF load errors are large).
        #[source]
        source: Box<RedirectError>,
    },
    /// More hosts to answer for than addresses in 127.77.0.0/16.
    #[error("{count} recorded hosts is more than the {MAX_HOSTS} replay addresses")]
    TooManyHosts {
        /// How many hosts.
        count: usize,
    },
    /// The command could not be started.
    #[error("starting {program} failed")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How many distinct hosts get a replay address.
pub const MAX_HOSTS: usize = u16::MAX as usize - 1;

/// The hosts replay answers for, whatever `--on-miss` says: the recorded ones in
/// their order, then every known provider host not among them, in
/// [`KNOWN_HOSTS`] order (the same input gives the same addresses). A known
/// provider the snapshot does not have reaches replayd and so is a miss (or is
/// forwarded under `--on-miss passthrough|record`) instead of reaching the real
/// API with the app's key.
pub fn answered_hosts(recorded: &[String]) -> Vec<String> {
    let mut hosts = recorded.to_vec();
    for (known, _) in KNOWN_HOSTS {
        if !hosts.iter().any(|h| h.eq_ignore_ascii_case(known)) {
            hosts.push(known.to_owned());
        }
    }
    hosts
}

/// Loopback addresses for the hosts replay answers for: 127.77.0.1, 127.77.0.2,
/// ... in the order given (deduplicated by the caller, see [`answered_hosts`]).
/// Loopback on purpose: were the redirect ever gone, a connect would still stay
/// on this machine.
pub fn host_addresses<'a>(
    hosts: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<(String, Ipv4Addr)>, RedirectSetupError> {
    let hosts: Vec<&str> = hosts.into_iter().collect();
    if hosts.len() > MAX_HOSTS {
        return Err(RedirectSetupError::TooManyHosts { count: hosts.len() });
    }
    Ok(hosts
        .into_iter()
        .enumerate()
        .map(|(i, host)| {
            let [hi, lo] = u16::try_from(i + 1).unwrap_or(u16::MAX).to_be_bytes();
            (host.to_owned(), Ipv4Addr::new(127, 77, hi, lo))
        })
        .collect())
}

/// The addresses whose connects reach replayd for the plain-HTTP destinations
/// recorded at `peers`: each peer, and for a loopback one both loopback addresses on
/// its port (`localhost` resolves to `127.0.0.1` or `::1`, whichever comes first
/// where the app runs). Sorted, without repeats.
pub fn plain_destinations(peers: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = peers
        .iter()
        .flat_map(|peer| {
            if peer.ip().is_loopback() {
                vec![
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), peer.port()),
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), peer.port()),
                ]
            } else {
                vec![*peer]
            }
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Which processes are redirected.
#[derive(Clone, Debug)]
pub enum RedirectTarget {
    /// A fresh cgroup for the command replayd runs.
    Command,
    /// An existing cgroup v2, such as a CI job's.
    Cgroup(PathBuf),
    /// Every process on the host (the cgroup2 root).
    All,
}

/// The attached redirect and, for a command, its cgroup.
pub struct KernelRedirect {
    redirect: Mutex<Redirect>,
    /// A cgroup this run created (removed and its processes killed on drop).
    own_cgroup: Option<Cgroup>,
    path: PathBuf,
}

impl KernelRedirect {
    /// Attaches the hooks for `target`, sending its traffic where `settings` say, and
    /// its connects to the plain-HTTP destinations `plain` ([`plain_destinations`]) to
    /// replayd's listener.
    pub fn attach(
        target: &RedirectTarget,
        settings: &RedirectSettings,
        plain: &[SocketAddr],
    ) -> Result<Self, RedirectSetupError> {
        let (own_cgroup, path) = match target {
            RedirectTarget::Command => {
                let mut cgroup = Cgroup::create("replay")?;
                // Even a SIGKILLed replayd takes the command's whole tree with it.
                cgroup.kill_on_exit()?;
                let path = cgroup.path().to_path_buf();
                (Some(cgroup), path)
            }
            RedirectTarget::Cgroup(path) => (None, Cgroup::existing(path)?.path().to_path_buf()),
            RedirectTarget::All => (None, cgroup2_mount()?),
        };
        let attach_error = |source| RedirectSetupError::Attach {
            path: path.clone(),
            source: Box::new(source),
        };
        let mut redirect = Redirect::attach(&path, settings).map_err(attach_error)?;
        redirect
            .redirect_plain(plain)
            .map_err(|e| attach_error(RedirectError::Object(e)))?;
        Ok(Self {
            redirect: Mutex::new(redirect),
            own_cgroup,
            path,
        })
    }

    /// The destination the app asked for, for a connection accepted from `client`.
    pub fn original_destination(&self, client: SocketAddr) -> Option<SocketAddr> {
        self.redirect.lock().ok()?.original_destination(client)
    }

    /// The redirected cgroup's directory.
    pub fn cgroup_path(&self) -> &Path {
        &self.path
    }

    /// Runs `argv` inside this run's own cgroup with `env` added. The child
    /// joins the cgroup before it execs and is killed if replayd dies; under
    /// sudo it runs as the invoking user unless `as_root`.
    pub fn spawn(
        &self,
        argv: &[OsString],
        env: &[(&'static str, OsString)],
        as_root: bool,
    ) -> Result<tokio::process::Child, RedirectSetupError> {
        let program = argv
            .first()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut command = command_in_cgroup(argv, &self.path.join("cgroup.procs"), as_root);
        command.envs(env.iter().map(|(k, v)| (k, v)));
        tokio::process::Command::from(command)
            .spawn()
            .map_err(|source| RedirectSetupError::Spawn { program, source })
    }

    /// Kills whatever is left in this run's own cgroup.
    pub fn kill_own_cgroup(&self) {
        if let Some(cgroup) = &self.own_cgroup {
            cgroup.kill_all();
        }
    }
}

/// The kernel's record of each redirected connection, and the redirected cgroup's
/// processes for the client behind one.
impl OriginalDestination for KernelRedirect {
    fn original_destination(&self, client: SocketAddr) -> Option<SocketAddr> {
        KernelRedirect::original_destination(self, client)
    }

    fn client_process(&self, client: SocketAddr) -> Option<ClientProcess> {
        let inode = peer::socket_inode(Path::new("/proc/net"), client)?;
        let pids = peer::cgroup_pids(&self.path).ok()?;
        peer::process_holding(Path::new("/proc"), inode, pids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_hosts_come_first_then_every_known_provider_once() {
        let recorded = ["api.anthropic.com".to_owned(), "llm.internal".to_owned()];
        assert_eq!(
            answered_hosts(&recorded),
            [
                "api.anthropic.com",
                "llm.internal",
                "api.openai.com",
                "generativelanguage.googleapis.com",
                "api.x.ai",
                "openrouter.ai",
            ]
        );
        let known: Vec<&str> = KNOWN_HOSTS.iter().map(|(host, _)| *host).collect();
        assert_eq!(answered_hosts(&[]), known);
    }

    #[test]
    fn loopback_plain_destinations_cover_both_loopback_addresses() {
        let peers: Vec<SocketAddr> = ["127.0.0.1:11434", "[::1]:11434", "10.1.2.3:8000"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let wanted: Vec<SocketAddr> = ["10.1.2.3:8000", "127.0.0.1:11434", "[::1]:11434"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(plain_destinations(&peers), wanted);
        assert_eq!(plain_destinations(&[]), Vec::<SocketAddr>::new());
    }

    #[test]
    fn hosts_get_distinct_loopback_addresses_in_order() {
        let hosts = host_addresses(["api.anthropic.com", "api.openai.com"]).unwrap();
        assert_eq!(
            hosts,
            [
                ("api.anthropic.com".to_owned(), Ipv4Addr::new(127, 77, 0, 1)),
                ("api.openai.com".to_owned(), Ipv4Addr::new(127, 77, 0, 2)),
            ]
        );
        let many: Vec<String> = (0..300).map(|i| format!("h{i}")).collect();
        let addrs = host_addresses(many.iter().map(String::as_str)).unwrap();
        assert_eq!(addrs[255].1, Ipv4Addr::new(127, 77, 1, 0));
        assert!(addrs.iter().all(|(_, a)| a.is_loopback()));
    }
}
