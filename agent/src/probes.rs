//! The capture probes, built on `llmsim_kernel`'s loader: sets the process
//! filter, attaches the raw tracepoints and, per TLS library, the `SSL_*`
//! uprobes, and reads the ring buffer and the loss counters.

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
use llmsim_ebpf_common::{ConnKey, DROP_REASONS, DropReason, Filter, FilterMode};
use llmsim_kernel::object::{Object, ObjectError, Purpose, map_error, program_error};
use thiserror::Error;

use crate::tls_libs::{SslSymbols, TlsLibrary};

/// Raw tracepoints attached at start: program name = tracepoint name.
const RAW_TRACEPOINTS: [&str; 3] = ["sys_enter", "sys_exit", "sched_process_exec"];

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

/// The loaded probes. Dropping it detaches everything.
pub struct Probes {
    object: Object,
    reach: Reach,
    /// (device, inode) of every object the uprobes are attached to.
    attached: HashSet<(u64, u64)>,
}

impl Probes {
    /// Loads the object and attaches the raw tracepoints. Uprobes come later,
    /// per TLS library, through [`Probes::attach_tls_library`].
    pub fn load() -> Result<Self, ProbeError> {
        let mut object = Object::load(Purpose::Capture)?;
        for name in RAW_TRACEPOINTS {
            let program: &mut RawTracePoint = object.program_mut(name)?;
            program.load().map_err(program_error(name))?;
            program.attach(name).map_err(program_error(name))?;
        }
        for name in UPROBE_PROGRAMS {
            let program: &mut UProbe = object.program_mut(name)?;
            program.load().map_err(program_error(name))?;
        }
        Ok(Self {
            object,
            reach: Reach::Everywhere,
            attached: HashSet::new(),
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

    /// Sets where libraries attached from now on get their probes.
    pub fn set_reach(&mut self, reach: Reach) {
        self.reach = reach;
    }

    /// Attaches the `SSL_*` probes to `library` in the processes of the
    /// current [`Reach`] (the filter decides what is reported). Returns false
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
        // Return probes first: a call entered while the entry probes are
        // being attached is then either fully seen or not at all.
        let points = SSL_ENTRY_POINTS
            .iter()
            .filter_map(|&(symbol, _, offset)| Some((symbol, return_program(symbol)?, offset)))
            .chain(SSL_ENTRY_POINTS);
        for (symbol, program, offset) in points {
            let Some(offset) = offset(&library.symbols) else {
                continue;
            };
            for &scope in &scopes {
                self.attach_uprobe(program, symbol, offset, &library.path, scope)?;
            }
        }
        self.attached.insert(identity);
        Ok(true)
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

    /// Plaintext bytes of one connection the kernel could not deliver.
    pub fn lost_bytes(&mut self, tgid: u32, ssl: u64) -> Result<u64, ProbeError> {
        let map: HashMap<_, ConnKey, u64> = self.object.map_mut("LOST_BYTES")?;
        match map.get(&ConnKey { tgid, pad: 0, ssl }, 0) {
            Ok(lost) => Ok(lost),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(source) => Err(map_error("LOST_BYTES")(source).into()),
        }
    }
}

/// True when attaching failed because the process is gone (`ESRCH`).
fn is_no_such_process(error: &ProgramError) -> bool {
    std::iter::successors(Some(error as &dyn std::error::Error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.raw_os_error() == Some(libc::ESRCH))
}

type SymbolOffset = fn(&SslSymbols) -> Option<u64>;

/// Entry points: (function, entry program, where the object defines it).
/// Reads come before writes so a connection caught mid-attach loses whole
/// calls rather than seeing its answer without its question.
const SSL_ENTRY_POINTS: [(&str, &str, SymbolOffset); 6] = [
    ("SSL_read", "ssl_read", |s| s.read),
    ("SSL_read_ex", "ssl_read_ex", |s| s.read_ex),
    ("SSL_write", "ssl_write", |s| s.write),
    ("SSL_write_ex", "ssl_write_ex", |s| s.write_ex),
    ("SSL_ctrl", "ssl_ctrl", |s| s.ctrl),
    ("SSL_free", "ssl_free", |s| s.free),
];

/// Every uprobe program in the object.
const UPROBE_PROGRAMS: [&str; 7] = [
    "ssl_write",
    "ssl_write_ex",
    "ssl_read",
    "ssl_read_ex",
    "ssl_ctrl",
    "ssl_free",
    "ssl_return",
];

/// The return probe for a function, if it needs one: the data functions do;
/// `SSL_ctrl` and `SSL_free` read their arguments on entry.
fn return_program(symbol: &str) -> Option<&'static str> {
    (symbol.starts_with("SSL_read") || symbol.starts_with("SSL_write")).then_some("ssl_return")
}
