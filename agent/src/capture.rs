//! `llmsim-agent capture`: selects the target processes, attaches the probes to
//! every TLS library they use (now and as they exec), and runs the event loop
//! that turns kernel events into snapshot files until the targets are done or
//! the user interrupts. Everything that can fail on bad input is checked before
//! the first probe is attached.

use std::{
    collections::HashMap,
    ffi::OsString,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Duration,
};

use agent_common::DropReason;
use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    cgroup::Cgroup,
    connections::{ConnectionExchange, Tracker, TrackerStats},
    events::{Event, decode},
    kernel::{Probes, Selection},
    preflight,
    recorder::{HostFilter, RecordStats, Recorder},
    sys,
    tls_libs::Scanner,
};

/// How often target processes are rescanned for TLS libraries loaded with
/// `dlopen` and for exits.
const RESCAN_INTERVAL: Duration = Duration::from_millis(500);

/// What to capture.
#[derive(Clone, Debug)]
pub enum Target {
    /// These processes and their threads.
    Pids(Vec<u32>),
    /// Every process in this cgroup v2.
    Cgroup(PathBuf),
    /// Every process on the host.
    All,
    /// Run this command in a fresh cgroup and capture its process tree.
    Command {
        /// Program and arguments.
        argv: Vec<OsString>,
        /// Keep root instead of dropping to `SUDO_UID`/`SUDO_GID`.
        as_root: bool,
    },
}

/// Everything `capture` needs.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Snapshot directory.
    pub out: PathBuf,
    /// Which processes.
    pub target: Target,
    /// Extra host globs to record.
    pub hosts: Vec<String>,
    /// Record every host.
    pub any_host: bool,
    /// Print no live lines.
    pub quiet: bool,
}

/// The end-of-capture figures.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Files, bytes and incomplete exchanges.
    #[serde(flatten)]
    pub recorded: RecordStats,
    /// Connection-level counters.
    pub connections: TrackerStats,
    /// Kernel events that could not be delivered, per reason.
    pub events_dropped: HashMap<&'static str, u64>,
    /// Ring-buffer records that could not be decoded.
    pub undecodable_records: u64,
    /// The command's exit code, in command mode.
    pub exit_code: Option<i32>,
}

impl Summary {
    /// Total dropped kernel events.
    pub fn dropped(&self) -> u64 {
        self.events_dropped.values().sum()
    }
}

/// A capture whose inputs were checked and whose probes are attached.
pub struct Capture {
    probes: Probes,
    ring: AsyncFd<RingBuf<MapData>>,
    scanner: Scanner,
    tracker: Tracker,
    recorder: Recorder,
    target: Target,
    cgroup: Option<Cgroup>,
    /// Lost-byte counts already attributed, per connection.
    lost_seen: HashMap<(u32, u64), u64>,
    undecodable: u64,
}

/// Errors that mean "bad input or missing privilege": exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct UsageError(anyhow::Error);

impl Capture {
    /// Checks every input and privilege, then loads and attaches the probes.
    /// Errors from the checks are [`UsageError`]s.
    pub fn prepare(options: &CaptureOptions) -> anyhow::Result<Self> {
        let usage = |e: anyhow::Error| anyhow::Error::new(UsageError(e));
        preflight::check().map_err(|e| usage(e.into()))?;
        let mut scanner = Scanner::default();
        let hosts =
            HostFilter::new(&options.hosts, options.any_host).map_err(|e| usage(e.into()))?;
        let recorder = Recorder::open(&options.out, hosts, sys::monotonic_ns(), options.quiet)
            .map_err(|e| {
                usage(
                    anyhow::Error::new(e)
                        .context(format!("snapshot directory {}", options.out.display())),
                )
            })?;
        let mut cgroup = None;
        let (selection, initial_pids) = match &options.target {
            Target::Pids(pids) => {
                for &pid in pids {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        return Err(usage(anyhow::anyhow!("no process with pid {pid}")));
                    }
                }
                (Selection::Tgids(pids.clone()), pids.clone())
            }
            Target::Cgroup(path) => {
                let group = Cgroup::existing(path).map_err(|e| usage(e.into()))?;
                let id = group.id().map_err(|e| usage(e.into()))?;
                let pids = group.pids();
                cgroup = Some(group);
                (Selection::Cgroups(vec![id]), pids)
            }
            Target::All => (Selection::All, all_pids()),
            Target::Command { argv, .. } => {
                if argv.is_empty() {
                    return Err(usage(anyhow::anyhow!("no command given after --")));
                }
                let group = Cgroup::create("capture").map_err(|e| usage(e.into()))?;
                let id = group.id().map_err(|e| usage(e.into()))?;
                cgroup = Some(group);
                (Selection::Cgroups(vec![id]), Vec::new())
            }
        };
        let mut probes = Probes::load().context("loading the eBPF probes")?;
        for library in scanner.system_libraries() {
            probes.attach_tls_library(&library)?;
        }
        if let Target::Command { argv, .. } = &options.target {
            // A program with OpenSSL linked in (node) is attached before it runs.
            for program in argv.iter().filter_map(which) {
                if let Ok(Some(library)) = scanner.library_at(&program) {
                    probes.attach_tls_library(&library)?;
                }
            }
        }
        let mut without_tls = Vec::new();
        for pid in initial_pids {
            match scanner.libraries_of(pid) {
                Ok(libraries) if libraries.is_empty() => without_tls.push(pid),
                Ok(libraries) => {
                    for library in libraries {
                        probes.attach_tls_library(&library)?;
                    }
                }
                Err(_) => {} // exited meanwhile
            }
        }
        if matches!(options.target, Target::Pids(_)) {
            for pid in without_tls {
                tracing::warn!(pid, "no TLS library is mapped yet; watching for one");
            }
        }
        probes.select(&selection)?;
        let ring = sys::poll_readable(probes.take_events()?).context("polling the ring buffer")?;
        Ok(Self {
            probes,
            ring,
            scanner,
            tracker: Tracker::default(),
            recorder,
            target: options.target.clone(),
            cgroup,
            lost_seen: HashMap::new(),
            undecodable: 0,
        })
    }

    /// Runs until the targets are done or SIGINT/SIGTERM, then flushes.
    pub async fn run(mut self) -> anyhow::Result<Summary> {
        let mut child = match &self.target {
            Target::Command { argv, as_root } => Some(self.spawn(argv, *as_root)?),
            _ => None,
        };
        let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
        let mut exit_status: Option<ExitStatus> = None;
        loop {
            tokio::select! {
                ready = self.ring.readable_mut() => {
                    let mut guard = ready.context("polling the ring buffer")?;
                    guard.clear_ready();
                    drop(guard);
                    self.drain()?;
                }
                status = async { child.as_mut().expect("guarded").wait().await }, if child.is_some() && exit_status.is_none() => {
                    exit_status = Some(status.context("waiting for the command")?);
                    break;
                }
                _ = rescan.tick() => {
                    if self.rescan()? {
                        break;
                    }
                }
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
        }
        // Everything the targets did is in the ring by now: drain it, then
        // close every connection.
        self.drain()?;
        let finished = self.tracker.finish_all(sys::monotonic_ns());
        self.record_all(finished)?;
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all();
        }
        let events_dropped = self
            .probes
            .drop_counts()?
            .into_iter()
            .map(|(reason, n): (DropReason, u64)| (reason.name(), n))
            .collect();
        Ok(Summary {
            recorded: self.recorder.stats().clone(),
            connections: self.tracker.stats(),
            events_dropped,
            undecodable_records: self.undecodable,
            exit_code: exit_status.map(exit_code),
        })
    }

    fn spawn(&self, argv: &[OsString], as_root: bool) -> anyhow::Result<tokio::process::Child> {
        let cgroup = self.cgroup.as_ref().expect("command mode has a cgroup");
        let mut command = std::process::Command::new(&argv[0]);
        command.args(&argv[1..]);
        sys::join_cgroup_and_die_with_parent(&mut command, cgroup.path().join("cgroup.procs"));
        if !as_root {
            let id = |name| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
            if let (Some(uid), Some(gid)) = (id("SUDO_UID"), id("SUDO_GID")) {
                use std::os::unix::process::CommandExt as _;
                command.uid(uid).gid(gid);
            }
        }
        tokio::process::Command::from(command)
            .spawn()
            .with_context(|| format!("starting {}", argv[0].to_string_lossy()))
    }

    /// Handles every record waiting in the ring buffer.
    fn drain(&mut self) -> anyhow::Result<()> {
        let mut finished = Vec::new();
        let mut execs = Vec::new();
        {
            let ring = self.ring.get_mut();
            while let Some(item) = ring.next() {
                match decode(&item) {
                    Ok(Event::Data(data)) => finished.extend(self.tracker.on_data(&data)),
                    Ok(Event::Sni { tgid, ssl, name }) => {
                        finished.extend(self.tracker.on_sni(tgid, ssl, name, sys::monotonic_ns()));
                    }
                    Ok(Event::Connect { tgid, fd, peer }) => {
                        self.tracker.on_connect(tgid, fd, peer);
                    }
                    Ok(Event::Exec { tgid }) => execs.push(tgid),
                    Err(error) => {
                        self.undecodable += 1;
                        tracing::warn!("{error}");
                    }
                }
            }
        }
        for pid in execs {
            self.attach_libraries_of(pid)?;
        }
        self.record_all(finished)
    }

    fn attach_libraries_of(&mut self, pid: u32) -> anyhow::Result<()> {
        if let Ok(libraries) = self.scanner.libraries_of(pid) {
            for library in libraries {
                if self.probes.attach_tls_library(&library)? {
                    tracing::info!(pid, path = %library.path.display(), "attached to a TLS library");
                }
            }
        }
        Ok(())
    }

    /// Attaches to libraries loaded since the last scan and finishes the
    /// connections of exited processes. True when no target is left.
    fn rescan(&mut self) -> anyhow::Result<bool> {
        let targets = match &self.target {
            Target::Pids(pids) => pids.clone(),
            Target::Cgroup(_) | Target::Command { .. } => {
                self.cgroup.as_ref().map(Cgroup::pids).unwrap_or_default()
            }
            Target::All => all_pids(),
        };
        let alive: Vec<u32> = targets
            .into_iter()
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        for &pid in &alive {
            self.attach_libraries_of(pid)?;
        }
        for tgid in self.tracker.tgids() {
            if !Path::new(&format!("/proc/{tgid}")).exists() {
                self.drain()?;
                let finished = self.tracker.finish_process(tgid, sys::monotonic_ns());
                self.record_all(finished)?;
            }
        }
        Ok(matches!(self.target, Target::Pids(_)) && alive.is_empty())
    }

    fn record_all(&mut self, finished: Vec<ConnectionExchange>) -> anyhow::Result<()> {
        for done in finished {
            let lost_now = self.probes.lost_bytes(done.tgid, done.ssl).unwrap_or(0);
            let seen = self.lost_seen.entry((done.tgid, done.ssl)).or_insert(0);
            let lost = (lost_now > *seen)
                .then(|| format!("kernel could not deliver {} bytes", lost_now - *seen));
            *seen = lost_now;
            self.recorder
                .record(done, lost)
                .context("writing the snapshot")?;
        }
        Ok(())
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Resolves a command-line word to an executable file: a path, or a name on PATH.
fn which(word: &OsString) -> Option<PathBuf> {
    let word = Path::new(word);
    if word.components().count() > 1 {
        return word.is_file().then(|| word.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(word))
        .find(|candidate| candidate.is_file())
}
