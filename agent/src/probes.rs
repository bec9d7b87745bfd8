//! The capture probes, built on `llmsim_kernel`'s loader: sets the process
//! filter, attaches the tracepoints (raw ones on the process lifecycle, syscall ones
//! on the syscalls followed) and, per TLS library, the `SSL_*` uprobes (Go's
//! `crypto/tls` ones in a Go binary) where its [`Placement`] says, in every process or
//! only in each target process (see [`Reach`]), detaches a target's probes when it is
//! gone, remembers each library's placement for the summary, and reads the ring buffer
//! and the loss counters.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fs::File,
    io,
    num::NonZeroU32,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::PathBuf,
    thread::JoinHandle,
};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        ProgramError, RawTracePoint, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeLink, UProbeLinkId, UProbeScope},
    },
    sys::UProbeMultiFeature,
};
use llmsim_ebpf_common::{
    ConnKey, ConnLoss, DROP_REASONS, DropReason, Filter, FilterMode, LossKey, LossTotals,
    PlainDestination, SkipTotals, SkippedConn, syscall,
};
use llmsim_kernel::object::{MapSizes, Object, ObjectError, Purpose, map_error, program_error};
use serde::Serialize;
use thiserror::Error;

use crate::{
    placement::{Cost, Placement, PlacementKind, ProbeRole},
    tls_libs::TlsLibrary,
};

/// Where a kernel program is attached.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    /// A raw tracepoint, by name.
    Raw(&'static str),
    /// The entry tracepoints (`syscalls/sys_enter_*`) of these syscalls.
    Entries(&'static [u64]),
    /// Their exit tracepoints (`syscalls/sys_exit_*`).
    Exits(&'static [u64]),
}

/// A program and where it goes, attached once ([`Probes::attach_once`]): some only once
/// a capture needs them, since every syscall, or every task created or exiting, on the
/// machine runs them once attached.
type Attachment = (&'static str, Hook);
/// Attached at start: execs of traced processes, the socket calls and `close()`.
const AT_START: [Attachment; 3] = [
    ("sched_process_exec", Hook::Raw("sched_process_exec")),
    ("sys_enter", Hook::Entries(&syscall::SOCKET_CALLS)),
    ("sys_enter_close", Hook::Entries(&[syscall::CLOSE])),
];
/// The syscall-exit program, for a syscall's result ([`Probes::need_exits`]).
const SYSCALL_EXITS: Attachment = ("sys_exit", Hook::Exits(&syscall::EXITS));
/// The programs that note a traced process's new tasks and catch each one's first
/// syscall, where a new process is held: attached with the first [`Probes::set_holding`].
const NEW_TASK_WATCH: [Attachment; 3] = [
    ("sched_process_fork", Hook::Raw("sched_process_fork")),
    ("sched_process_exit", Hook::Raw("sched_process_exit")),
    ("sys_enter_first", Hook::Entries(&syscall::FIRST_CALLS)),
];
/// The syscall programs that find rustls's sockets: attached with the first rustls object.
const RUSTLS_SYSCALLS: [Attachment; 2] = [
    ("rustls_sys_enter", Hook::Entries(&syscall::SOCKET_IO)),
    ("rustls_sys_enter_close", Hook::Entries(&[syscall::CLOSE])),
];
/// The raw tracepoint programs and the syscall tracepoint programs, loaded at start.
const RAW_PROGRAMS: [&str; 3] = [
    "sched_process_exec",
    "sched_process_fork",
    "sched_process_exit",
];
const SYSCALL_PROGRAMS: [&str; 6] = [
    "sys_enter",
    "sys_enter_close",
    "sys_enter_first",
    "sys_exit",
    "rustls_sys_enter",
    "rustls_sys_enter_close",
];

/// Failures of the capture probes.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// The object could not be loaded, or a program or map in it used.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// A uprobe could not be attached to a TLS library.
    #[error("attaching `{symbol}` in {} failed", path.display())]
    Uprobe {
        /// The object.
        path: PathBuf,
        /// The function.
        symbol: &'static str,
        /// The cause.
        #[source]
        source: ProgramError,
    },
}

/// Which processes to report.
#[derive(Clone, Debug)]
pub enum Selection {
    /// These thread group ids.
    Tgids(Vec<u32>),
    /// Processes in these cgroup v2 ids.
    Cgroups(Vec<u64>),
    /// Every process.
    All,
}

/// Which processes a TLS library's breakpoints are planted in. A breakpoint
/// costs every call through it a trap, even in a process the filter then
/// ignores, so by default the probes go only into the target processes, each
/// as it is tracked ([`Probes::track`]): a probe planted for a process before
/// it maps the library is installed by the kernel when the mapping appears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Every process that maps the library (`--all`).
    Everywhere,
    /// Each tracked process, threads included, across its execs (`--pid`,
    /// `--cgroup`, a command).
    Processes,
}

/// A TLS object probes are attached to: kept open, so a process's path to
/// it (`/proc/PID/root/...`) may vanish and later processes still get it.
struct KnownObject {
    identity: (u64, u64),
    library: TlsLibrary,
    file: File,
}

/// The probes attached in one tracked process.
#[derive(Default)]
struct ProcessProbes {
    /// (device, inode) of the objects attached in it.
    objects: HashSet<(u64, u64)>,
    /// Every link, with the program it belongs to.
    links: Vec<(&'static str, UProbeLinkId)>,
}

/// Where one object's probes went, for the summary.
#[derive(Clone, Debug, Serialize)]
pub struct PlacedObject {
    /// The object's file name (`libssl.so.3`, `node`).
    pub object: String,
    /// Which placement.
    pub placement: PlacementKind,
    /// The placement and its cost, e.g. `worker probes (emulated push)`.
    pub description: String,
}

/// The loaded probes. Dropping it detaches everything.
pub struct Probes {
    object: Object,
    /// The multi-uprobe programs are loaded, not the perf-event ones.
    multi: bool,
    reach: Reach,
    /// Every TLS object found, in the order found.
    known: Vec<KnownObject>,
    /// The tracked processes and their probes ([`Reach::Processes`]).
    processes: StdHashMap<u32, ProcessProbes>,
    /// Where each object's probes go, in the order found.
    placed: Vec<PlacedObject>,
    /// The [`Attachment`]s made so far.
    attached: Vec<Attachment>,
    /// Threads detaching the links of processes that are gone.
    releasing: Vec<JoinHandle<()>>,
}

impl Probes {
    /// Loads the object and attaches the tracepoints, which needs tracefs reachable
    /// (`crate::preflight::check` sees to it). Uprobes come later, per TLS library,
    /// through [`Probes::attach_tls_library`].
    pub fn load() -> Result<Self, ProbeError> {
        Self::load_sized(MapSizes::default())
    }

    /// Like [`Probes::load`], with the maps sized by `sizes`.
    pub fn load_sized(sizes: MapSizes) -> Result<Self, ProbeError> {
        let mut object = Object::load_sized(Purpose::Capture, sizes)?;
        for name in RAW_PROGRAMS {
            let program: &mut RawTracePoint = object.program_mut(name)?;
            program.load().map_err(program_error(name))?;
        }
        for name in SYSCALL_PROGRAMS {
            let program: &mut TracePoint = object.program_mut(name)?;
            program.load().map_err(program_error(name))?;
        }
        // Multi-uprobes where the kernel filters them by process (6.6 and
        // later): a process's links then detach without the global lock and
        // grace periods each perf-event uprobe holds on its way out.
        let multi = aya::sys::is_uprobe_multi_supported(UProbeMultiFeature::ProcessScopedPidFilter)
            .unwrap_or(false);
        for role in ProbeRole::ALL {
            let name = program_of(role, multi);
            let program: &mut UProbe = object.program_mut(name)?;
            program.load().map_err(program_error(name))?;
        }
        let mut probes = Self {
            object,
            multi,
            reach: Reach::Everywhere,
            known: Vec::new(),
            processes: StdHashMap::new(),
            placed: Vec::new(),
            attached: Vec::new(),
            releasing: Vec::new(),
        };
        for attachment in AT_START {
            probes.attach_once(attachment)?;
        }
        Ok(probes)
    }

    /// Sets which processes the probes report (new processes are not held:
    /// see [`Probes::set_holding`]).
    pub fn select(&mut self, selection: &Selection) -> Result<(), ProbeError> {
        let mode = match selection {
            Selection::Tgids(tgids) => {
                let mut map: HashMap<_, u32, u8> = self.object.map_mut("TARGET_TGIDS")?;
                for tgid in tgids {
                    map.insert(tgid, &1, 0).map_err(map_error("TARGET_TGIDS"))?;
                }
                FilterMode::Tgids
            }
            Selection::Cgroups(ids) => {
                let mut map: HashMap<_, u64, u8> = self.object.map_mut("TARGET_CGROUPS")?;
                for id in ids {
                    map.insert(id, &1, 0).map_err(map_error("TARGET_CGROUPS"))?;
                }
                FilterMode::Cgroups
            }
            Selection::All => FilterMode::All,
        };
        let mut filter: Array<_, Filter> = self.object.map_mut("FILTER")?;
        filter
            .set(
                0,
                &Filter {
                    mode: mode as u32,
                    hold: 0,
                },
                0,
            )
            .map_err(map_error("FILTER"))?;
        Ok(())
    }

    /// Sets which plain TCP destinations the syscall probes copy (see [`crate::plain`]).
    pub fn select_plain(&mut self, destinations: &[PlainDestination]) -> Result<(), ProbeError> {
        let mut map: HashMap<_, PlainDestination, u8> =
            self.object.map_mut("PLAIN_DESTINATIONS")?;
        for destination in destinations {
            map.insert(destination, &1, 0)
                .map_err(map_error("PLAIN_DESTINATIONS"))?;
        }
        if !destinations.is_empty() {
            self.need_exits()?;
        }
        Ok(())
    }

    /// Selects the ports whose accepted connections are captured as inbound (`--app-port`).
    pub fn select_app_ports(&mut self, ports: &[u16]) -> Result<(), ProbeError> {
        let mut map: HashMap<_, u16, u8> = self.object.map_mut("APP_PORTS")?;
        for port in ports {
            map.insert(port, &1, 0).map_err(map_error("APP_PORTS"))?;
        }
        if !ports.is_empty() {
            self.need_exits()?;
        }
        Ok(())
    }

    /// With `hold`, each selected process that starts or execs from now on
    /// is stopped before it can make a TLS call (an exec before the new
    /// program's first instruction, a new child at its first syscall, before
    /// `fork()` returns in it) and reported held, to be
    /// continued (`SIGCONT`) once [`Probes::track`] planted its probes;
    /// without, none is, and those held already are in the ring buffer.
    pub fn set_holding(&mut self, hold: bool) -> Result<(), ProbeError> {
        let mut filter: Array<_, Filter> = self.object.map_mut("FILTER")?;
        let mut current = filter.get(&0, 0).map_err(map_error("FILTER"))?;
        current.hold = u32::from(hold);
        filter.set(0, &current, 0).map_err(map_error("FILTER"))?;
        if hold {
            for program in NEW_TASK_WATCH {
                self.attach_once(program)?;
            }
        }
        Ok(())
    }

    /// Attaches [`SYSCALL_EXITS`]: the plain path's reads and accepts on app ports need
    /// syscalls' results.
    fn need_exits(&mut self) -> Result<(), ProbeError> {
        self.attach_once(SYSCALL_EXITS)
    }

    /// Makes an [`Attachment`] unless it is made already. Left attached with the object:
    /// what it follows (a connection, a held process) may outlive the need.
    fn attach_once(&mut self, attachment: Attachment) -> Result<(), ProbeError> {
        if self.attached.contains(&attachment) {
            return Ok(());
        }
        let (name, hook) = attachment;
        match hook {
            Hook::Raw(tracepoint) => {
                let program: &mut RawTracePoint = self.object.program_mut(name)?;
                program.attach(tracepoint).map_err(program_error(name))?;
            }
            Hook::Entries(calls) => self.attach_syscalls(name, "enter", calls)?,
            Hook::Exits(calls) => self.attach_syscalls(name, "exit", calls)?,
        }
        self.attached.push(attachment);
        Ok(())
    }

    /// Attaches program `name` to the `syscalls/sys_{end}_*` tracepoint of each of `calls`.
    fn attach_syscalls(
        &mut self,
        name: &'static str,
        end: &str,
        calls: &[u64],
    ) -> Result<(), ProbeError> {
        let program: &mut TracePoint = self.object.program_mut(name)?;
        for &nr in calls {
            let tracepoint = format!("sys_{end}_{}", syscall::name(nr));
            program
                .attach("syscalls", &tracepoint)
                .map_err(program_error(name))?;
        }
        Ok(())
    }

    /// Whether this kernel plants per-process probes cheaply (multi-uprobe
    /// links filtered by process, Linux 6.6 and later): many short-lived
    /// processes each get and drop their own.
    pub fn cheap_per_process(&self) -> bool {
        self.multi
    }

    /// Sets where libraries get their probes ([`Reach::Everywhere`] unless
    /// set); call before the first one.
    pub fn set_reach(&mut self, reach: Reach) {
        self.reach = reach;
    }

    /// Attaches the `SSL_*` probes to `library` where its placement says: in
    /// every process ([`Reach::Everywhere`]), or in every tracked process and
    /// each one tracked later (the filter decides what is reported). A
    /// placement that single-steps, or that was asked for and does not fit,
    /// is one warning naming the object and why. Returns false when the
    /// object was known already.
    pub fn attach_tls_library(&mut self, library: &TlsLibrary) -> Result<bool, ProbeError> {
        let open_error = |source| ProbeError::Uprobe {
            path: library.path.clone(),
            symbol: "(open)",
            source: ProgramError::IOError(source),
        };
        let file = File::open(&library.path).map_err(open_error)?;
        let meta = file.metadata().map_err(open_error)?;
        let identity = (meta.dev(), meta.ino());
        if self.known.iter().any(|known| known.identity == identity) {
            return Ok(false);
        }
        let known = KnownObject {
            identity,
            library: library.clone(),
            file,
        };
        if library.placement.kind == PlacementKind::Rustls {
            for attachment in RUSTLS_SYSCALLS {
                self.attach_once(attachment)?;
            }
        }
        // In the tracked processes, one failing is no reason to skip the
        // others: the first failure is returned once the object is known.
        let mut failure = Ok(());
        match self.reach {
            Reach::Everywhere => {
                attach_object(
                    &mut self.object,
                    self.multi,
                    &known,
                    UProbeScope::AllProcesses,
                )?;
            }
            Reach::Processes => {
                for pid in self.tracked() {
                    if let Err(error) = self.attach_in(pid, &known)
                        && failure.is_ok()
                    {
                        failure = Err(error);
                    }
                }
            }
        }
        self.known.push(known);
        // The file's own name, not a symlink's (`libssl.so` -> `libssl.so.3`).
        let real = std::fs::canonicalize(&library.path).unwrap_or_else(|_| library.path.clone());
        let object = real.file_name().map_or_else(
            || real.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        let placement = &library.placement;
        warn_about(&object, placement);
        self.placed.push(PlacedObject {
            object,
            placement: placement.kind,
            description: placement.to_string(),
        });
        failure.map(|()| true)
    }

    /// Plants the probes of every known TLS object in process `pid`, and of
    /// every object found from now on ([`Reach::Processes`]; nothing to do
    /// with [`Reach::Everywhere`]). Probes planted before the process maps an
    /// object are installed when it does. A process that is gone is skipped.
    pub fn track(&mut self, pid: u32) -> Result<(), ProbeError> {
        if self.reach == Reach::Everywhere {
            return Ok(());
        }
        self.processes.entry(pid).or_default();
        let known = std::mem::take(&mut self.known);
        let mut result = Ok(());
        for object in &known {
            result = self.attach_in(pid, object);
            if result.is_err() {
                break;
            }
        }
        self.known = known;
        result
    }

    /// Detaches the probes planted for `pid`: it exited, or its pid now
    /// names another process. Detaching a uprobe waits for RCU grace
    /// periods, so it happens on other threads, all links at once, and the
    /// event loop goes on meanwhile.
    pub fn forget(&mut self, pid: u32) {
        let Some(process) = self.processes.remove(&pid) else {
            return;
        };
        let links: Vec<UProbeLink> = process
            .links
            .into_iter()
            .filter_map(|(program, link)| {
                let probe = self.object.program_mut::<UProbe>(program).ok()?;
                probe.take_link(link).ok()
            })
            .collect();
        self.releasing.retain(|thread| !thread.is_finished());
        match std::thread::Builder::new()
            .name("llmsim-detach".into())
            .spawn(move || release(links))
        {
            Ok(thread) => self.releasing.push(thread),
            Err(error) => tracing::debug!("detaching on the event loop: {error}"),
        }
    }

    /// The processes tracked.
    pub fn tracked(&self) -> Vec<u32> {
        self.processes.keys().copied().collect()
    }

    /// Attaches `known` in process `pid` unless it is there already.
    fn attach_in(&mut self, pid: u32, known: &KnownObject) -> Result<(), ProbeError> {
        let Some(scope) = NonZeroU32::new(pid).map(UProbeScope::OneProcess) else {
            return Ok(());
        };
        let process = self.processes.entry(pid).or_default();
        if !process.objects.insert(known.identity) {
            return Ok(());
        }
        match attach_object(&mut self.object, self.multi, known, scope) {
            Ok(links) => {
                process.links.extend(links);
                Ok(())
            }
            Err(error) => {
                process.objects.remove(&known.identity);
                Err(error)
            }
        }
    }

    /// Where each attached object's probes went, in attach order.
    pub fn placed(&self) -> &[PlacedObject] {
        &self.placed
    }

    /// Takes the ring buffer; call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        Ok(self.object.take_map("EVENTS")?)
    }

    /// Undeliverable events so far, summed over CPUs, per reason.
    pub fn drop_counts(&mut self) -> Result<Vec<(DropReason, u64)>, ProbeError> {
        let counters: PerCpuArray<_, u64> = self.object.map_mut("DROP_COUNTERS")?;
        let mut out = Vec::with_capacity(DROP_REASONS as usize);
        for reason in DropReason::ALL {
            let per_cpu = counters
                .get(&(reason as u32), 0)
                .map_err(map_error("DROP_COUNTERS"))?;
            out.push((reason, per_cpu.iter().sum()));
        }
        Ok(out)
    }

    /// What each [`DropReason`] cost so far, summed over CPUs.
    pub fn loss_totals(&mut self) -> Result<Vec<(DropReason, LossTotals)>, ProbeError> {
        let totals: PerCpuArray<_, LossTotals> = self.object.map_mut("LOSS_TOTALS")?;
        let mut out = Vec::with_capacity(DROP_REASONS as usize);
        for reason in DropReason::ALL {
            let per_cpu = totals
                .get(&(reason as u32), 0)
                .map_err(map_error("LOSS_TOTALS"))?;
            let mut sum = LossTotals::default();
            for cpu in per_cpu.iter() {
                sum.calls += cpu.calls;
                sum.whole_calls += cpu.whole_calls;
                sum.chunks += cpu.chunks;
                sum.bytes += cpu.bytes;
            }
            out.push((reason, sum));
        }
        Ok(out)
    }

    /// Calls and bytes the data probes skipped on unwanted connections, summed over CPUs.
    pub fn skip_totals(&mut self) -> Result<SkipTotals, ProbeError> {
        let totals: PerCpuArray<_, SkipTotals> = self.object.map_mut("SKIP_TOTALS")?;
        let per_cpu = totals.get(&0, 0).map_err(map_error("SKIP_TOTALS"))?;
        Ok(per_cpu
            .iter()
            .fold(SkipTotals::default(), |sum, cpu| SkipTotals {
                calls: sum.calls + cpu.calls,
                bytes: sum.bytes + cpu.bytes,
            }))
    }

    /// From now on, the data probes skip connection `ssl` of `tgid`: no ring
    /// space, no copy (see [`SkippedConn`]).
    pub fn skip_conn(&mut self, tgid: u32, ssl: u64) -> Result<(), ProbeError> {
        let mut map: HashMap<_, ConnKey, SkippedConn> = self.object.map_mut("SKIPPED_CONNS")?;
        let entry = SkippedConn {
            present: 1,
            ..SkippedConn::default()
        };
        map.insert(
            &ConnKey {
                tgid,
                pad: 0,
                conn: ssl,
            },
            &entry,
            0,
        )
        .map_err(map_error("SKIPPED_CONNS"))?;
        Ok(())
    }

    /// The skipped-calls entry of connection `ssl` of `tgid`, removed from the
    /// kernel's map: for a connection of a process that exited; all zero
    /// when it has none.
    pub fn take_skipped(&mut self, tgid: u32, ssl: u64) -> Result<SkippedConn, ProbeError> {
        let mut map: HashMap<_, ConnKey, SkippedConn> = self.object.map_mut("SKIPPED_CONNS")?;
        let key = ConnKey {
            tgid,
            pad: 0,
            conn: ssl,
        };
        match map.get(&key, 0) {
            Ok(entry) => {
                let _ = map.remove(&key);
                Ok(entry)
            }
            Err(MapError::KeyNotFound) => Ok(SkippedConn::default()),
            Err(source) => Err(map_error("SKIPPED_CONNS")(source).into()),
        }
    }

    /// The sequence and loss accounting of one direction of one connection,
    /// removed from the kernel's map: for a connection of a process that
    /// exited, which nothing will touch again.
    pub fn take_conn_loss(
        &mut self,
        tgid: u32,
        ssl: u64,
        direction: llmsim_ebpf_common::Direction,
    ) -> Result<Option<ConnLoss>, ProbeError> {
        let mut map: HashMap<_, LossKey, ConnLoss> = self.object.map_mut("CONN_LOSS")?;
        let key = LossKey {
            tgid,
            direction: direction as u32,
            conn: ssl,
        };
        match map.get(&key, 0) {
            Ok(loss) => {
                let _ = map.remove(&key);
                Ok(Some(loss))
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_error("CONN_LOSS")(source).into()),
        }
    }
}

impl Drop for Probes {
    /// Detaches every process's probes at once and waits for that; the
    /// object's own links go with it.
    fn drop(&mut self) {
        for pid in self.tracked() {
            self.forget(pid);
        }
        for thread in self.releasing.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Drops `links`, each on a thread of its own, so their RCU grace periods
/// overlap; a link whose thread cannot start is dropped here.
fn release(links: Vec<UProbeLink>) {
    std::thread::scope(|scope| {
        for link in links {
            // The link moves into the closure; if the thread cannot start,
            // the closure (and the link) is dropped right here.
            let _ = std::thread::Builder::new().spawn_scoped(scope, move || drop(link));
        }
    });
}

/// Attaches every probe point of `known` in `scope`; returns the links. A
/// process of the scope that exited meanwhile is skipped: it makes no more calls.
fn attach_object(
    object: &mut Object,
    multi: bool,
    known: &KnownObject,
    scope: UProbeScope,
) -> Result<Vec<(&'static str, UProbeLinkId)>, ProbeError> {
    // Through the agent's own descriptor: the path the object was found by
    // may name a process that has exited since.
    let path = PathBuf::from(format!("/proc/self/fd/{}", known.file.as_raw_fd()));
    // One link per program, holding all its points (one multi-uprobe link,
    // or one perf event per point).
    let mut by_program: Vec<(&'static str, &'static str, Vec<u64>)> = Vec::new();
    for point in &known.library.placement.points {
        let program = program_of(point.role, multi);
        match by_program.iter_mut().find(|(p, _, _)| *p == program) {
            Some((_, _, offsets)) => offsets.push(point.offset),
            None => by_program.push((program, point.function, vec![point.offset])),
        }
    }
    let mut links = Vec::new();
    for (program, symbol, offsets) in by_program {
        let probe: &mut UProbe = object.program_mut(program)?;
        let points = offsets
            .into_iter()
            .map(UProbeAttachLocation::AbsoluteOffset);
        match probe.attach(points, &path, scope) {
            Ok(link) => links.push((program, link)),
            Err(error)
                if matches!(scope, UProbeScope::OneProcess(_)) && is_no_such_process(&error) =>
            {
                break;
            }
            Err(source) => {
                for (program, link) in links {
                    if let Ok(probe) = object.program_mut::<UProbe>(program) {
                        let _ = probe.detach(link);
                    }
                }
                return Err(ProbeError::Uprobe {
                    path: known.library.path.clone(),
                    symbol,
                    source,
                });
            }
        }
    }
    Ok(links)
}

/// True when attaching failed because the process is gone (`ESRCH`).
fn is_no_such_process(error: &ProgramError) -> bool {
    std::iter::successors(Some(error as &dyn std::error::Error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.raw_os_error() == Some(libc::ESRCH))
}

/// The program of `role`: its multi-uprobe twin, or the perf-event uprobe.
fn program_of(role: ProbeRole, multi: bool) -> &'static str {
    if multi {
        role.multi_program()
    } else {
        role.program()
    }
}

/// One warning line when `placement` is not what it should be: a placement
/// asked for that does not fit, or probes that single-step, with the reasons
/// the better placements were refused.
fn warn_about(object: &str, placement: &Placement) {
    if let Some((kind, why)) = &placement.unforced {
        tracing::warn!(
            "{object}: {} probes cannot be placed ({why}); using {placement}",
            kind.name()
        );
    } else if placement.cost == Cost::SingleStep && !placement.refusals.is_empty() {
        let reasons: Vec<String> = placement
            .refusals
            .iter()
            .map(|(kind, why)| format!("{}: {why}", kind.name()))
            .collect();
        tracing::warn!("{object}: {placement}; {}", reasons.join("; "));
    }
}
