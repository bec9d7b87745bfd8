//! The capture probes, built on `llmsim_kernel`'s loader: sets the process
//! filter, attaches the raw tracepoints and, per TLS library, the `SSL_*`
//! uprobes (Go's `crypto/tls` ones in a Go binary) where its [`Placement`]
//! says, remembers each library's placement for the summary, and reads the
//! ring buffer and the loss counters.

use std::{
    collections::HashSet,
    io,
    num::NonZeroU32,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        ProgramError, RawTracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use llmsim_ebpf_common::{
    ConnLoss, DROP_REASONS, DropReason, Filter, FilterMode, LossKey, LossTotals, PlainDestination,
};
use llmsim_kernel::object::{MapSizes, Object, ObjectError, Purpose, map_error, program_error};
use serde::Serialize;
use thiserror::Error;

use crate::{
    placement::{Cost, Placement, PlacementKind, ProbeRole},
    tls_libs::TlsLibrary,
};

/// Raw tracepoints attached at start: program name, tracepoint name.
const RAW_TRACEPOINTS: [(&str, &str); 4] = [
    ("sys_enter", "sys_enter"),
    ("sys_exit", "sys_exit"),
    ("sys_exit_accept", "sys_exit"),
    ("sched_process_exec", "sched_process_exec"),
];
/// The syscall program that finds rustls's sockets, on `sys_enter`: attached with the
/// first rustls object, so captures without one do not run it.
const RUSTLS_SYSCALLS: &str = "rustls_sys_enter";

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
/// costs every call through it two traps, even in a process the filter then
/// ignores, so the probes go only into the targets when they are known
/// processes; targets that start later (a cgroup's, a command's) must find
/// the probes already in the libraries they map.
#[derive(Clone, Debug)]
pub enum Reach {
    /// Every process that maps the library (`--all`, `--cgroup`, a command).
    Everywhere,
    /// These processes, threads included, across their execs (`--pid`).
    Processes(Vec<u32>),
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
    reach: Reach,
    /// (device, inode) of every object the uprobes are attached to.
    attached: HashSet<(u64, u64)>,
    /// Where each attached object's probes went, in attach order.
    placed: Vec<PlacedObject>,
    /// Whether [`RUSTLS_SYSCALLS`] is attached.
    rustls_syscalls: bool,
}

impl Probes {
    /// Loads the object and attaches the raw tracepoints. Uprobes come later,
    /// per TLS library, through [`Probes::attach_tls_library`].
    pub fn load() -> Result<Self, ProbeError> {
        Self::load_sized(MapSizes::default())
    }

    /// Like [`Probes::load`], with the maps sized by `sizes`.
    pub fn load_sized(sizes: MapSizes) -> Result<Self, ProbeError> {
        let mut object = Object::load_sized(Purpose::Capture, sizes)?;
        for (name, tracepoint) in RAW_TRACEPOINTS {
            let program: &mut RawTracePoint = object.program_mut(name)?;
            program.load().map_err(program_error(name))?;
            program.attach(tracepoint).map_err(program_error(name))?;
        }
        for name in UPROBE_PROGRAMS {
            let program: &mut UProbe = object.program_mut(name)?;
            program.load().map_err(program_error(name))?;
        }
        let program: &mut RawTracePoint = object.program_mut(RUSTLS_SYSCALLS)?;
        program.load().map_err(program_error(RUSTLS_SYSCALLS))?;
        Ok(Self {
            object,
            reach: Reach::Everywhere,
            attached: HashSet::new(),
            placed: Vec::new(),
            rustls_syscalls: false,
        })
    }

    /// Sets which processes the probes report.
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
                    pad: 0,
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
        Ok(())
    }

    /// Selects the ports whose accepted connections are captured as inbound (`--app-port`).
    pub fn select_app_ports(&mut self, ports: &[u16]) -> Result<(), ProbeError> {
        let mut map: HashMap<_, u16, u8> = self.object.map_mut("APP_PORTS")?;
        for port in ports {
            map.insert(port, &1, 0).map_err(map_error("APP_PORTS"))?;
        }
        Ok(())
    }

    /// Sets where libraries attached from now on get their probes.
    pub fn set_reach(&mut self, reach: Reach) {
        self.reach = reach;
    }

    /// Attaches the `SSL_*` probes to `library` where its placement says, in
    /// the processes of the current [`Reach`] (the filter decides what is
    /// reported). A placement that single-steps, or that was asked for and
    /// does not fit, is one warning naming the object and why. Returns false
    /// when it was attached already.
    pub fn attach_tls_library(&mut self, library: &TlsLibrary) -> Result<bool, ProbeError> {
        let meta = std::fs::metadata(&library.path).map_err(|e| ProbeError::Uprobe {
            path: library.path.clone(),
            symbol: "(open)",
            source: ProgramError::IOError(e),
        })?;
        let identity = (meta.dev(), meta.ino());
        if self.attached.contains(&identity) {
            return Ok(false);
        }
        let scopes: Vec<UProbeScope> = match &self.reach {
            Reach::Everywhere => vec![UProbeScope::AllProcesses],
            Reach::Processes(pids) => pids
                .iter()
                .filter_map(|&pid| NonZeroU32::new(pid))
                .map(UProbeScope::OneProcess)
                .collect(),
        };
        let placement = &library.placement;
        if placement.kind == PlacementKind::Rustls && !self.rustls_syscalls {
            let program: &mut RawTracePoint = self.object.program_mut(RUSTLS_SYSCALLS)?;
            program
                .attach("sys_enter")
                .map_err(program_error(RUSTLS_SYSCALLS))?;
            self.rustls_syscalls = true;
        }
        for point in &placement.points {
            for &scope in &scopes {
                self.attach_uprobe(
                    point.role.program(),
                    point.function,
                    point.offset,
                    &library.path,
                    scope,
                )?;
            }
        }
        self.attached.insert(identity);
        // The file's own name, not a symlink's (`libssl.so` -> `libssl.so.3`).
        let real = std::fs::canonicalize(&library.path).unwrap_or_else(|_| library.path.clone());
        let object = real.file_name().map_or_else(
            || real.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        warn_about(&object, placement);
        self.placed.push(PlacedObject {
            object,
            placement: placement.kind,
            description: placement.to_string(),
        });
        Ok(true)
    }

    /// Where each attached object's probes went, in attach order.
    pub fn placed(&self) -> &[PlacedObject] {
        &self.placed
    }

    /// A process of the scope that exited meanwhile is skipped: it makes no more calls.
    fn attach_uprobe(
        &mut self,
        program: &'static str,
        symbol: &'static str,
        offset: u64,
        path: &Path,
        scope: UProbeScope,
    ) -> Result<(), ProbeError> {
        let probe: &mut UProbe = self.object.program_mut(program)?;
        match probe.attach([UProbeAttachLocation::AbsoluteOffset(offset)], path, scope) {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(scope, UProbeScope::OneProcess(_)) && is_no_such_process(&error) =>
            {
                Ok(())
            }
            Err(source) => Err(ProbeError::Uprobe {
                path: path.to_path_buf(),
                symbol,
                source,
            }),
        }
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

/// True when attaching failed because the process is gone (`ESRCH`).
fn is_no_such_process(error: &ProgramError) -> bool {
    std::iter::successors(Some(error as &dyn std::error::Error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.raw_os_error() == Some(libc::ESRCH))
}

/// Every uprobe program in the object, one per [`ProbeRole`].
const UPROBE_PROGRAMS: [&str; 15] = [
    ProbeRole::WriteEntry.program(),
    ProbeRole::WriteCountedEntry.program(),
    ProbeRole::ReadEntry.program(),
    ProbeRole::ReadCountedEntry.program(),
    ProbeRole::Ctrl.program(),
    ProbeRole::Free.program(),
    ProbeRole::Return.program(),
    ProbeRole::CallReturn.program(),
    ProbeRole::GoWrite.program(),
    ProbeRole::GoRead.program(),
    ProbeRole::GoReadReturn.program(),
    ProbeRole::GoClose.program(),
    ProbeRole::RustlsWrite.program(),
    ProbeRole::RustlsRead.program(),
    ProbeRole::RustlsReturn.program(),
];

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
