//! `llmsim-agent capture`: selects the target processes, attaches the probes to
//! every TLS library they use (now and as they exec), and runs the event loop
//! that turns kernel events into snapshot files until the targets are done or
//! the user interrupts. Everything that can fail on bad input is checked before
//! the first probe is attached (and before the snapshot directory is touched,
//! except for the check that it is writable).

use std::{
    collections::{BTreeMap, HashMap},
    ffi::OsString,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use llmsim_ebpf_common::{Direction, DropReason};
use llmsim_kernel::{
    cgroup::Cgroup,
    object::MapSizes,
    sys::{command_in_cgroup, exit_code},
};
use llmsim_snapshot::model::ProcessInfo;
use serde::Serialize;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::Instant,
};

use crate::{
    connections::{ConnectionExchange, Tracker, TrackerStats},
    coverage::{Coverage, NotDecrypted},
    drain_pace::DrainPace,
    events::{Data, Event, SequenceEnd, data_sequence, decode},
    placement::PlacementKind,
    plain, preflight,
    probes::{PlacedObject, Probes, Reach, Selection},
    procfs::{all_pids, is_alive, process_info, tgid_of},
    recorder::{HostFilter, RecordStats, Recorder},
    sys,
    tls_libs::Scanner,
};

/// How often target processes are rescanned for TLS libraries loaded with
/// `dlopen` and for exits.
const RESCAN_INTERVAL: Duration = Duration::from_millis(500);

/// Runtimes that usually link OpenSSL into their own binary.
const STATIC_TLS_RUNTIMES: [&str; 4] = ["node", "nodejs", "bun", "deno"];

/// In command mode, how long the command may take to exit after SIGINT or
/// SIGTERM was passed on to it, before what is left of it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

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
    /// Extra host globs to record; `HOST:PORT` also selects that plain destination.
    pub hosts: Vec<String>,
    /// Record every host, plain connections included.
    pub any_host: bool,
    /// Also record the requests the targets serve on these ports (inbound).
    pub app_ports: Vec<u16>,
    /// Print no live lines.
    pub quiet: bool,
    /// Map sizes other than the defaults (tests force losses with small ones).
    pub sizes: MapSizes,
    /// Stop after this long, as on SIGINT (`llmsim-agent coverage --duration`).
    pub duration: Option<Duration>,
}

/// What one drop reason cost, for the summary.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct LossSummary {
    /// Calls of which some plaintext was lost.
    pub calls: u64,
    /// Of those, calls of which nothing was delivered.
    pub whole_calls: u64,
    /// Chunks lost (unknown, so 0, for calls whose entry was lost).
    pub chunks: u64,
    /// Bytes lost (likewise).
    pub bytes: u64,
    /// Exchange files written flagged incomplete for this reason.
    pub exchanges_incomplete: u64,
}

/// What the kernel skipped on unwanted connections, for the summary.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct SkipSummary {
    /// Data calls skipped.
    pub calls: u64,
    /// Their plaintext bytes.
    pub bytes: u64,
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
    /// The sum of [`Summary::events_dropped`].
    pub events_dropped_total: u64,
    /// Plaintext lost, per drop reason, and the exchanges it flagged.
    pub losses: BTreeMap<&'static str, LossSummary>,
    /// Calls and bytes the kernel skipped on connections to hosts that are not
    /// recorded, neither copied nor put in the ring. Skipped is not dropped:
    /// nothing anyone asked for was lost (see `connections.skipped_*`).
    pub skipped: SkipSummary,
    /// Ring-buffer records that could not be decoded.
    pub undecodable_records: u64,
    /// The command's exit code, in command mode.
    pub exit_code: Option<i32>,
    /// Where the probes went in each TLS object, in attach order.
    pub probes: Vec<PlacedObject>,
    /// TLS connections of the targets of which no plaintext was captured.
    pub not_decrypted: Vec<NotDecrypted>,
}

impl Summary {
    /// Total dropped kernel events.
    pub fn dropped(&self) -> u64 {
        self.events_dropped.values().sum()
    }

    /// One line per drop reason that lost plaintext:
    /// `ring_full: 2 calls lost plaintext (1 whole), 250 chunks, 4096000 bytes; 1 exchange flagged incomplete`.
    pub fn loss_lines(&self) -> Vec<String> {
        self.losses
            .iter()
            .filter(|(_, loss)| loss.calls > 0 || loss.exchanges_incomplete > 0)
            .map(|(reason, loss)| {
                format!(
                    "{reason}: {} calls lost plaintext ({} whole), {} chunks, {} bytes; {} exchanges flagged incomplete",
                    loss.calls, loss.whole_calls, loss.chunks, loss.bytes, loss.exchanges_incomplete
                )
            })
            .collect()
    }
}

/// A finished exchange with the process that made it, as it was then.
type Finished = (ConnectionExchange, ProcessInfo);

/// A capture whose inputs were checked and whose probes are attached.
pub struct Capture {
    probes: Probes,
    ring: AsyncFd<RingBuf<MapData>>,
    scanner: Scanner,
    tracker: Tracker,
    coverage: Coverage,
    recorder: Recorder,
    target: Target,
    out: PathBuf,
    quiet: bool,
    cgroup: Option<Cgroup>,
    /// What each traced process is, read when it is first seen and after each
    /// exec, so exchanges finished after it exited still name it.
    processes: HashMap<u32, ProcessInfo>,
    undecodable: u64,
    duration: Option<Duration>,
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
        // `--host HOST:PORT` records HOST, and selects HOST:PORT's plain connections.
        let globs: Vec<String> = options
            .hosts
            .iter()
            .map(|pattern| plain::split_port(pattern).0.to_owned())
            .collect();
        let hosts = HostFilter::new(&globs, options.any_host).map_err(|e| usage(e.into()))?;
        let plain_destinations =
            plain::destinations(&options.hosts, options.any_host).map_err(|e| usage(e.into()))?;
        // The targets first: a typo in a pid must not create a directory.
        let target = checked_target(&options.target).map_err(usage)?;
        let forced = PlacementKind::forced().map_err(|e| usage(e.into()))?;
        check_sizes(options.sizes).map_err(usage)?;
        let recorder = Recorder::open(&options.out, hosts, sys::monotonic_ns(), options.quiet)
            .map_err(|e| {
                usage(
                    anyhow::Error::new(e)
                        .context(format!("snapshot directory {}", options.out.display())),
                )
            })?;
        let mut cgroup = None;
        let (selection, initial_pids) = match &target {
            Target::Pids(pids) => (Selection::Tgids(pids.clone()), pids.clone()),
            Target::Cgroup(path) => {
                let group = Cgroup::existing(path).map_err(|e| usage(e.into()))?;
                let id = group.id().map_err(|e| usage(e.into()))?;
                let pids = group.pids();
                cgroup = Some(group);
                (Selection::Cgroups(vec![id]), pids)
            }
            Target::All => (Selection::All, all_pids()),
            Target::Command { .. } => {
                let mut group = Cgroup::create("capture").map_err(|e| usage(e.into()))?;
                // Nothing the command starts may outlive the agent, even a
                // SIGKILLed agent whose destructors never run.
                group.kill_on_exit().map_err(|e| usage(e.into()))?;
                let id = group.id().map_err(|e| usage(e.into()))?;
                cgroup = Some(group);
                (Selection::Cgroups(vec![id]), Vec::new())
            }
        };
        let mut scanner = Scanner::new(forced);
        let mut probes = Probes::load_sized(options.sizes).context("loading the eBPF probes")?;
        // Breakpoints only in the targets: `--pid`'s always; a cgroup's or a
        // command's where per-process probes are cheap, and then those
        // processes that start from now on are held until their probes are
        // planted (those already there are listed after that, so none slips
        // between the two).
        let hold = matches!(target, Target::Cgroup(_) | Target::Command { .. })
            && probes.cheap_per_process();
        if hold || matches!(target, Target::Pids(_)) {
            probes.set_reach(Reach::Processes);
        }
        probes.select_plain(&plain_destinations)?;
        probes.select_app_ports(&options.app_ports)?;
        probes.select(&selection)?;
        probes.set_holding(hold)?;
        let initial_pids = match &cgroup {
            Some(group) if hold => group.pids(),
            _ => initial_pids,
        };
        for &pid in &initial_pids {
            probes.track(pid)?;
        }
        attach_initial(&mut probes, &mut scanner, &target, initial_pids)?;
        let ring = sys::poll_readable(probes.take_events()?).context("polling the ring buffer")?;
        Ok(Self {
            probes,
            ring,
            scanner,
            tracker: Tracker::default(),
            coverage: Coverage::default(),
            recorder,
            target,
            out: options.out.clone(),
            quiet: options.quiet,
            cgroup,
            processes: HashMap::new(),
            undecodable: 0,
            duration: options.duration,
        })
    }

    /// Runs until the targets are done or SIGINT/SIGTERM, then flushes.
    ///
    /// In command mode, the first SIGINT or SIGTERM is passed on to the
    /// command, which gets [`STOP_GRACE`] to exit (its exit code is reported);
    /// a second signal, or the end of the grace period, stops at once.
    pub async fn run(mut self) -> anyhow::Result<Summary> {
        if !self.quiet {
            eprintln!("llmsim-agent: {}", self.describe());
        }
        // The handlers exist before the command does: a signal sent as soon as
        // the command is up must be passed on, not end the agent.
        let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut child = match &self.target {
            Target::Command { argv, as_root } => Some(self.spawn(argv, *as_root)?),
            _ => None,
        };
        let child_pid = child.as_ref().and_then(tokio::process::Child::id);
        let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
        let mut pace = DrainPace::new(Instant::now());
        let mut exit_status: Option<ExitStatus> = None;
        let mut stop_by: Option<Instant> = None;
        let deadline = self.duration.map(|duration| Instant::now() + duration);
        loop {
            let signal = tokio::select! {
                ready = self.ring.readable_mut() => {
                    let mut guard = ready.context("polling the ring buffer")?;
                    guard.clear_ready();
                    drop(guard);
                    pace.drained(Instant::now(), self.drain()?);
                    continue;
                }
                () = tokio::time::sleep_until(pace.due()) => {
                    pace.drained(Instant::now(), self.drain()?);
                    continue;
                }
                status = async { child.as_mut().expect("guarded").wait().await }, if child.is_some() && exit_status.is_none() => {
                    exit_status = Some(status.context("waiting for the command")?);
                    break;
                }
                _ = rescan.tick() => {
                    if self.rescan()? {
                        break;
                    }
                    continue;
                }
                () = sleep_until(stop_by) => break,
                () = sleep_until(deadline) => break,
                _ = interrupt.recv() => libc::SIGINT,
                _ = terminate.recv() => libc::SIGTERM,
            };
            match child_pid {
                Some(pid) if stop_by.is_none() && exit_status.is_none() => {
                    sys::send_signal(pid, signal);
                    stop_by = Some(Instant::now() + STOP_GRACE);
                }
                _ => break,
            }
        }
        // Everything the targets did is in the ring by now: drain it (which
        // continues every process still held), then close every connection.
        self.probes.set_holding(false)?;
        self.drain()?;
        self.finish_connections()?;
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all();
        }
        if let Some(child) = child.as_mut()
            && exit_status.is_none()
            && let Ok(Ok(status)) = tokio::time::timeout(STOP_GRACE, child.wait()).await
        {
            exit_status = Some(status);
        }
        self.summary(exit_status)
    }

    /// Finishes every connection at the end of the capture; those of processes
    /// that exited first get the kernel's final sequence accounting.
    fn finish_connections(&mut self) -> anyhow::Result<()> {
        let mut finished = Vec::new();
        for tgid in self.tracker.tgids() {
            // Nothing of an exited process is in flight: its accounting is final.
            if !is_alive(tgid) {
                let done = end_sequences(&mut self.probes, &mut self.tracker, tgid);
                let process = self.process(tgid);
                finished.extend(done.into_iter().map(|d| (d, process.clone())));
            }
        }
        self.record_all(finished)?;
        let now = sys::monotonic_ns();
        let finished = self
            .tracker
            .finish_all(now)
            .into_iter()
            .map(|done| {
                let process = self.process(done.tgid);
                (done, process)
            })
            .collect();
        self.record_all(finished)
    }

    /// The end-of-capture figures, once every exchange is written.
    fn summary(&mut self, exit_status: Option<ExitStatus>) -> anyhow::Result<Summary> {
        let events_dropped: HashMap<_, _> = self
            .probes
            .drop_counts()?
            .into_iter()
            .map(|(reason, n): (DropReason, u64)| (reason.name(), n))
            .collect();
        let mut recorded = self.recorder.finish().context("writing the snapshot")?;
        let connections = self.tracker.stats();
        recorded.exchanges_ignored += connections.skipped_exchanges;
        let skip_totals = self.probes.skip_totals()?;
        let losses = self
            .probes
            .loss_totals()?
            .into_iter()
            .map(|(reason, totals)| {
                let summary = LossSummary {
                    calls: totals.calls,
                    whole_calls: totals.whole_calls,
                    chunks: totals.chunks,
                    bytes: totals.bytes,
                    exchanges_incomplete: recorded
                        .incomplete_by_loss
                        .get(reason.name())
                        .copied()
                        .unwrap_or(0),
                };
                (reason.name(), summary)
            })
            .collect();
        Ok(Summary {
            recorded,
            connections,
            skipped: SkipSummary {
                calls: skip_totals.calls,
                bytes: skip_totals.bytes,
            },
            events_dropped_total: events_dropped.values().sum(),
            events_dropped,
            losses,
            undecodable_records: self.undecodable,
            exit_code: exit_status.map(|status| i32::from(exit_code(status))),
            probes: self.probes.placed().to_vec(),
            not_decrypted: self.coverage.finish(),
        })
    }

    /// The line that says the capture is running (tests wait for it).
    fn describe(&self) -> String {
        let out = self.out.display();
        match &self.target {
            Target::Pids(pids) => {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!(
                    "capturing pid {} into {out}; stops when they exit or on Ctrl-C",
                    pids.join(", ")
                )
            }
            Target::Cgroup(path) => {
                let path = self.cgroup.as_ref().map_or(path.as_path(), Cgroup::path);
                format!(
                    "capturing cgroup {} into {out}; stop with Ctrl-C",
                    path.display()
                )
            }
            Target::All => format!("capturing every process into {out}; stop with Ctrl-C"),
            Target::Command { argv, .. } => {
                let words: Vec<_> = argv.iter().map(|w| w.to_string_lossy()).collect();
                format!("capturing `{}` into {out}", words.join(" "))
            }
        }
    }

    fn spawn(&self, argv: &[OsString], as_root: bool) -> anyhow::Result<tokio::process::Child> {
        let cgroup = self.cgroup.as_ref().expect("command mode has a cgroup");
        let command = command_in_cgroup(argv, &cgroup.path().join("cgroup.procs"), as_root);
        tokio::process::Command::from(command)
            .spawn()
            .with_context(|| format!("starting {}", argv[0].to_string_lossy()))
    }

    /// What `tgid` is, as first seen (or since its last exec).
    fn process(&mut self, tgid: u32) -> ProcessInfo {
        known(&mut self.processes, tgid)
    }

    /// Handles every record waiting in the ring buffer; how many there were.
    fn drain(&mut self) -> anyhow::Result<usize> {
        let mut finished: Vec<Finished> = Vec::new();
        // Processes that started or exec'd, and whether each is held.
        let mut started: Vec<(u32, bool)> = Vec::new();
        let Self {
            ring,
            tracker,
            coverage,
            recorder,
            processes,
            undecodable,
            probes,
            ..
        } = self;
        let ring = ring.get_mut();
        let mut records = 0;
        while let Some(item) = ring.next() {
            records += 1;
            let done = match decode(&item) {
                Ok(Event::Data(data)) => {
                    // Read /proc now, while the process surely exists.
                    let process = known(processes, data.tgid);
                    coverage.on_plaintext(data.tgid, data.fd);
                    let mut done = match data_sequence(&item) {
                        Some(sequence) => tracker.on_sequence(&data, sequence),
                        None => Vec::new(),
                    };
                    done.extend(tracker.on_data(&data));
                    if skips_from_here(tracker, recorder, &done, &data) {
                        skip(probes, tracker, data.tgid, data.ssl);
                    }
                    finished.extend(done.into_iter().map(|d| (d, process.clone())));
                    continue;
                }
                Ok(Event::Sni { tgid, ssl, name }) => {
                    if tracker.skipped_in_kernel(tgid, ssl) {
                        // A new connection where a skipped one ended unseen
                        // (its end record was lost): skipping it ends here.
                        end_skipping(probes, tracker, tgid, ssl);
                    }
                    let wanted = recorder.records(&name);
                    let done = tracker.on_sni(tgid, ssl, name, sys::monotonic_ns());
                    if !wanted {
                        skip(probes, tracker, tgid, ssl);
                    }
                    done
                }
                Ok(Event::Free {
                    tgid,
                    ssl,
                    at_ns,
                    ends,
                    skipped,
                }) => {
                    tracker.on_skipped_end(tgid, ssl, skipped);
                    let mut done = tracker.on_end(tgid, ssl, ends);
                    done.extend(tracker.on_free(tgid, ssl, at_ns));
                    done
                }
                Ok(Event::Loss(loss)) => tracker.on_loss(&loss),
                Ok(Event::Connect { tgid, fd, peer }) => {
                    tracker.on_connect(tgid, fd, peer);
                    continue;
                }
                Ok(Event::Accept { tgid, fd }) => {
                    tracker.on_accept(tgid, fd);
                    continue;
                }
                Ok(Event::TlsHello { tgid, fd, bytes }) => {
                    let peer = tracker.socket_peer(tgid, fd);
                    coverage.on_hello(&known(processes, tgid), fd, peer, bytes);
                    continue;
                }
                Ok(Event::Exec { tgid, held }) => {
                    // The old program's TLS connections died with its image.
                    let mut done = end_sequences(probes, tracker, tgid);
                    done.extend(tracker.finish_process(tgid, sys::monotonic_ns()));
                    let before = known(processes, tgid);
                    finished.extend(done.into_iter().map(|d| (d, before.clone())));
                    processes.insert(tgid, process_info(tgid));
                    started.push((tgid, held));
                    continue;
                }
                Ok(Event::Fork { tgid, held }) => {
                    // A new process: probes still planted for its pid were
                    // another, exited, process's.
                    probes.forget(tgid);
                    processes.insert(tgid, process_info(tgid));
                    started.push((tgid, held));
                    continue;
                }
                Err(error) => {
                    *undecodable += 1;
                    tracing::warn!("{error}");
                    continue;
                }
            };
            for d in done {
                let process = known(processes, d.tgid);
                finished.push((d, process));
            }
        }
        self.track_started(started);
        self.record_all(finished)?;
        Ok(records)
    }

    /// Tracks processes that started or exec'd, continuing each one held for it.
    fn track_started(&mut self, started: Vec<(u32, bool)>) {
        for (pid, held) in started {
            self.track(pid);
            if held {
                sys::send_signal(pid, libc::SIGCONT);
            }
        }
    }

    /// Plants the probes of every known TLS object in `pid`, then attaches to
    /// the TLS objects it maps that are new (its executable after an exec).
    fn track(&mut self, pid: u32) {
        if let Err(error) = self.probes.track(pid)
            && is_alive(pid)
        {
            tracing::warn!(
                pid,
                "cannot capture this process: {:#}",
                anyhow::Error::new(error)
            );
        }
        self.attach_libraries_of(pid);
    }

    /// Attaches to the TLS libraries `pid` maps. A process that exits while
    /// this runs makes its paths (`/proc/PID/root/...`) vanish: that, or any
    /// other failure with one object, is a warning, never the end of the capture.
    fn attach_libraries_of(&mut self, pid: u32) {
        let Ok(libraries) = self.scanner.libraries_of(pid) else {
            return; // exited
        };
        for library in libraries {
            match self.probes.attach_tls_library(&library) {
                Ok(true) => {
                    tracing::info!(pid, path = %library.path.display(), "attached to a TLS library");
                }
                Ok(false) => {}
                Err(error) if !is_alive(pid) => {
                    tracing::debug!(
                        pid,
                        "process exited while attaching: {:#}",
                        anyhow::Error::new(error)
                    );
                }
                Err(error) => {
                    tracing::warn!(
                        pid,
                        "cannot capture this TLS library: {:#}",
                        anyhow::Error::new(error)
                    );
                }
            }
        }
    }

    /// Attaches to libraries loaded since the last scan and finishes the
    /// connections of exited processes. True when no target is left: every
    /// `--pid` exited, or the `--cgroup` was removed.
    fn rescan(&mut self) -> anyhow::Result<bool> {
        let targets = match &self.target {
            Target::Pids(pids) => pids.clone(),
            Target::Cgroup(_) | Target::Command { .. } => {
                self.cgroup.as_ref().map(Cgroup::pids).unwrap_or_default()
            }
            Target::All => all_pids(),
        };
        let alive: Vec<u32> = targets.into_iter().filter(|&pid| is_alive(pid)).collect();
        for tgid in self.probes.tracked() {
            if !is_alive(tgid) {
                self.probes.forget(tgid);
            }
        }
        for &pid in &alive {
            // A process that moved into the cgroup is tracked from here.
            self.track(pid);
        }
        let mut exited: Vec<u32> = self
            .tracker
            .tgids()
            .into_iter()
            .chain(self.processes.keys().copied())
            .filter(|&tgid| !is_alive(tgid))
            .collect();
        exited.sort_unstable();
        exited.dedup();
        if !exited.is_empty() {
            // Their last events may still be in the ring.
            self.drain()?;
        }
        for tgid in exited {
            let mut done = end_sequences(&mut self.probes, &mut self.tracker, tgid);
            done.extend(self.tracker.finish_process(tgid, sys::monotonic_ns()));
            let finished = done
                .into_iter()
                .map(|done| {
                    let process = self.process(tgid);
                    (done, process)
                })
                .collect();
            self.record_all(finished)?;
            self.processes.remove(&tgid);
        }
        Ok(match &self.target {
            Target::Pids(_) => alive.is_empty(),
            Target::Cgroup(_) => self.cgroup.as_ref().is_some_and(|c| !c.path().exists()),
            Target::All | Target::Command { .. } => false,
        })
    }

    /// Records finished exchanges.
    fn record_all(&mut self, finished: Vec<Finished>) -> anyhow::Result<()> {
        for (done, process) in finished {
            self.recorder
                .record(done, process)
                .context("writing the snapshot")?;
        }
        Ok(())
    }
}

/// Hands the kernel's final sequence accounting of each connection of
/// `tgid`, which has exited or exec'd, to the tracker (see
/// [`Tracker::on_end`]); a connection freed with its `SSL_free` was handed
/// over with that event already.
fn end_sequences(probes: &mut Probes, tracker: &mut Tracker, tgid: u32) -> Vec<ConnectionExchange> {
    let mut done = Vec::new();
    for ssl in tracker.connections_of(tgid) {
        if tracker.skipped_in_kernel(tgid, ssl) {
            end_skipping(probes, tracker, tgid, ssl);
        }
        let mut ends = [SequenceEnd::default(); 2];
        for (end, direction) in ends.iter_mut().zip([Direction::Write, Direction::Read]) {
            match probes.take_conn_loss(tgid, ssl, direction) {
                Ok(Some(loss)) => {
                    *end = SequenceEnd {
                        next_seq: loss.next_seq,
                        lost: loss.pending,
                        lost_bytes: loss.bytes,
                    };
                }
                Ok(None) => {}
                Err(error) => tracing::warn!("{:#}", anyhow::Error::new(error)),
            }
        }
        done.extend(tracker.on_end(tgid, ssl, ends));
    }
    done
}

/// Whether the kernel is to skip the rest of the TLS connection `data` arrived on, after the
/// exchanges it finished (`done`): the agent stopped parsing it (the process is its server,
/// or it is not HTTP), or it has no SNI event (an address, a client that sets none, Go,
/// rustls) and a whole exchange on it named a host that is not recorded: its requests' host
/// is the connection's. An exchange cut short (a capture joined mid-way, a loss) tells
/// nothing.
fn skips_from_here(
    tracker: &Tracker,
    recorder: &Recorder,
    done: &[ConnectionExchange],
    data: &Data<'_>,
) -> bool {
    let (tgid, ssl) = (data.tgid, data.ssl);
    let unwanted = |d: &ConnectionExchange| {
        d.tgid == tgid
            && d.ssl == ssl
            && d.sni.is_none()
            && d.exchange.incomplete.is_none()
            && recorder
                .unrecorded_host(d)
                .is_some_and(|host| !host.is_empty())
    };
    tracker.unparsed_yet_delivered(tgid, ssl)
        || (!tracker.skipped_in_kernel(tgid, ssl) && done.iter().any(unwanted))
}

/// Tells the kernel to skip connection `ssl` of `tgid`, whose host is not
/// recorded or which the agent no longer parses: its calls cost no ring space
/// and no copy from now on.
fn skip(probes: &mut Probes, tracker: &mut Tracker, tgid: u32, ssl: u64) {
    match probes.skip_conn(tgid, ssl) {
        Ok(()) => tracker.skip(tgid, ssl),
        Err(error) => tracing::warn!("{:#}", anyhow::Error::new(error)),
    }
}

/// Ends the kernel's skipping of connection `ssl` of `tgid` (its process
/// exited, or a new connection took its identity): removes its entry and
/// counts what it skipped.
fn end_skipping(probes: &mut Probes, tracker: &mut Tracker, tgid: u32, ssl: u64) {
    match probes.take_skipped(tgid, ssl) {
        Ok(skipped) => tracker.on_skipped_end(tgid, ssl, skipped),
        Err(error) => tracing::warn!("{:#}", anyhow::Error::new(error)),
    }
}

/// Refuses map sizes the kernel would reject, before anything is loaded.
fn check_sizes(sizes: MapSizes) -> anyhow::Result<()> {
    if let Some(bytes) = sizes.ring_bytes
        && (bytes < 4096 || !bytes.is_power_of_two())
    {
        anyhow::bail!("--ring-size {bytes}: a power of two of at least 4096 bytes is needed");
    }
    if sizes.call_table == Some(0) {
        anyhow::bail!("--call-table-size 0: at least one entry is needed");
    }
    Ok(())
}

/// Checks what `--pid`, `--cgroup` or `-- CMD` names, before anything is
/// created or attached; a thread id is replaced by its process's id.
fn checked_target(target: &Target) -> anyhow::Result<Target> {
    Ok(match target {
        Target::Pids(pids) => {
            let mut tgids = Vec::with_capacity(pids.len());
            for &pid in pids {
                let tgid =
                    tgid_of(pid).ok_or_else(|| anyhow::anyhow!("no process with pid {pid}"))?;
                if tgid != pid {
                    tracing::warn!(pid, tgid, "pid is a thread; capturing its process");
                }
                if !tgids.contains(&tgid) {
                    tgids.push(tgid);
                }
            }
            Target::Pids(tgids)
        }
        Target::Cgroup(path) => {
            Cgroup::existing(path)?;
            target.clone()
        }
        Target::All => Target::All,
        Target::Command { argv, .. } => {
            let Some(program) = argv.first() else {
                anyhow::bail!("no command given after --");
            };
            if which(program).is_none() {
                anyhow::bail!(
                    "command not found or not executable: {}",
                    program.to_string_lossy()
                );
            }
            target.clone()
        }
    })
}

/// Attaches the probes to what is known before the capture starts: the
/// system's libssl, static-OpenSSL programs, and the libraries the initial
/// target processes map.
fn attach_initial(
    probes: &mut Probes,
    scanner: &mut Scanner,
    target: &Target,
    initial_pids: Vec<u32>,
) -> anyhow::Result<()> {
    for library in scanner.system_libraries() {
        probes.attach_tls_library(&library)?;
    }
    // Programs with OpenSSL linked in are attached before they run: those
    // named on the command line, and the usual runtimes on PATH, which make
    // their first TLS call sooner after exec than an exec event can turn a
    // 100 MB binary into attached probes.
    let mut programs: Vec<PathBuf> = STATIC_TLS_RUNTIMES
        .iter()
        .filter_map(|name| which(&OsString::from(name)))
        .collect();
    if let Target::Command { argv, .. } = &target {
        programs.extend(argv.iter().filter_map(which));
    }
    for program in programs {
        if let Ok(Some(library)) = scanner.library_at(&program)
            && let Err(error) = probes.attach_tls_library(&library)
        {
            tracing::warn!(
                "cannot capture {}: {:#}",
                program.display(),
                anyhow::Error::new(error)
            );
        }
    }
    let mut without_tls = Vec::new();
    for pid in initial_pids {
        match scanner.libraries_of(pid) {
            Ok(libraries) if libraries.is_empty() => without_tls.push(pid),
            Ok(libraries) => {
                for library in libraries {
                    // As in `attach_libraries_of`: one process (in
                    // `--all`, any process) exiting meanwhile is no reason to stop.
                    if let Err(error) = probes.attach_tls_library(&library)
                        && is_alive(pid)
                    {
                        tracing::warn!(
                            pid,
                            "cannot capture this TLS library: {:#}",
                            anyhow::Error::new(error)
                        );
                    }
                }
            }
            Err(_) => {} // exited meanwhile
        }
    }
    if matches!(target, Target::Pids(_)) {
        for pid in without_tls {
            tracing::warn!(pid, "no TLS library is mapped yet; watching for one");
        }
    }
    Ok(())
}

/// What `tgid` is, from the cache or, the first time, from /proc.
fn known(processes: &mut HashMap<u32, ProcessInfo>, tgid: u32) -> ProcessInfo {
    processes
        .entry(tgid)
        .or_insert_with(|| process_info(tgid))
        .clone()
}

/// Resolves when `deadline` passes; never without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Resolves a command-line word to an executable file: a path, or a name on PATH.
fn which(word: &OsString) -> Option<PathBuf> {
    let executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let word = Path::new(word);
    if word.components().count() > 1 {
        return executable(word).then(|| word.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(word))
        .find(|candidate| executable(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_finds_programs_on_path_and_refuses_others() {
        assert!(which(&OsString::from("sh")).is_some());
        assert!(which(&OsString::from("/bin/sh")).is_some());
        assert!(which(&OsString::from("llmsim-no-such-program")).is_none());
        assert!(which(&OsString::from("/etc/passwd")).is_none());
    }
}
