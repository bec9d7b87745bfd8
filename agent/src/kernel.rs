//! The agent's only door to the kernel: loads the embedded eBPF object, sets the
//! process filter, attaches the probes, and reads the ring buffer and counters.

use std::{
    collections::HashSet,
    io,
    num::NonZeroU32,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        ProgramError, RawTracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use llmsim_ebpf_common::{ConnKey, DROP_REASONS, DropReason, Filter, FilterMode};
use thiserror::Error;

use crate::tls_libs::{SslSymbols, TlsLibrary};

/// The eBPF object built by build.rs from `llmsim-ebpf`: the capture probes and
/// the replay redirect hooks.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/llmsim-ebpf"));

/// Raw tracepoints attached at start: program name = tracepoint name.
const RAW_TRACEPOINTS: [&str; 3] = ["sys_enter", "sys_exit", "sched_process_exec"];

/// Failures talking to the kernel.
#[derive(Debug, Error)]
pub enum KernelError {
    /// The eBPF object could not be loaded (verifier, missing BTF, privileges).
    #[error("loading the eBPF object failed")]
    Load(#[source] EbpfError),
    /// A program is missing from the object: a build mismatch.
    #[error("eBPF program `{name}` is missing from the object")]
    MissingProgram {
        /// Program name.
        name: &'static str,
    },
    /// A map is missing from the object: a build mismatch.
    #[error("eBPF map `{name}` is missing from the object")]
    MissingMap {
        /// Map name.
        name: &'static str,
    },
    /// Loading or attaching a program failed.
    #[error("eBPF program `{name}` could not be loaded or attached")]
    Program {
        /// Program name.
        name: &'static str,
        /// The cause.
        #[source]
        source: ProgramError,
    },
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
    /// A map operation failed.
    #[error("eBPF map `{name}` operation failed")]
    Map {
        /// Map name.
        name: &'static str,
        /// The cause.
        #[source]
        source: MapError,
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
    ebpf: Ebpf,
    reach: Reach,
    /// (device, inode) of every object the uprobes are attached to.
    attached: HashSet<(u64, u64)>,
}

impl Probes {
    /// Loads the object and attaches the raw tracepoints. Uprobes come later,
    /// per TLS library, through [`Probes::attach_tls_library`].
    pub fn load() -> Result<Self, KernelError> {
        let ebpf = Ebpf::load(OBJECT).map_err(KernelError::Load)?;
        let mut probes = Self {
            ebpf,
            reach: Reach::Everywhere,
            attached: HashSet::new(),
        };
        for name in RAW_TRACEPOINTS {
            let program: &mut RawTracePoint = probes.program(name)?;
            program
                .load()
                .map_err(|source| KernelError::Program { name, source })?;
            program
                .attach(name)
                .map_err(|source| KernelError::Program { name, source })?;
        }
        for name in UPROBE_PROGRAMS {
            let program: &mut UProbe = probes.program(name)?;
            program
                .load()
                .map_err(|source| KernelError::Program { name, source })?;
        }
        Ok(probes)
    }

    fn program<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, KernelError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(KernelError::MissingProgram { name })?;
        program
            .try_into()
            .map_err(|source| KernelError::Program { name, source })
    }

    /// Sets which processes the probes report.
    pub fn select(&mut self, selection: &Selection) -> Result<(), KernelError> {
        let mode = match selection {
            Selection::Tgids(tgids) => {
                let mut map: HashMap<_, u32, u8> = self.map_mut("TARGET_TGIDS")?;
                for tgid in tgids {
                    map.insert(tgid, &1, 0).map_err(map_error("TARGET_TGIDS"))?;
                }
                FilterMode::Tgids
            }
            Selection::Cgroups(ids) => {
                let mut map: HashMap<_, u64, u8> = self.map_mut("TARGET_CGROUPS")?;
                for id in ids {
                    map.insert(id, &1, 0).map_err(map_error("TARGET_CGROUPS"))?;
                }
                FilterMode::Cgroups
            }
            Selection::All => FilterMode::All,
        };
        let mut filter: Array<_, Filter> = self.map_mut("FILTER")?;
        filter
            .set(
                0,
                &Filter {
                    mode: mode as u32,
                    pad: 0,
                },
                0,
            )
            .map_err(map_error("FILTER"))
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, KernelError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(KernelError::MissingMap { name })?;
        T::try_from(map).map_err(map_error(name))
    }

    /// Sets where libraries attached from now on get their probes.
    pub fn set_reach(&mut self, reach: Reach) {
        self.reach = reach;
    }

    /// Attaches the `SSL_*` probes to `library` in the processes of the
    /// current [`Reach`] (the filter decides what is reported). Returns false
    /// when it was attached already.
    pub fn attach_tls_library(&mut self, library: &TlsLibrary) -> Result<bool, KernelError> {
        let meta = std::fs::metadata(&library.path).map_err(|e| KernelError::Uprobe {
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
    ) -> Result<(), KernelError> {
        let probe: &mut UProbe = self.program(program)?;
        match probe.attach([UProbeAttachLocation::AbsoluteOffset(offset)], path, scope) {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(scope, UProbeScope::OneProcess(_)) && is_no_such_process(&error) =>
            {
                Ok(())
            }
            Err(source) => Err(KernelError::Uprobe {
                path: path.to_path_buf(),
                symbol,
                source,
            }),
        }
    }

    /// Takes the ring buffer; call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(KernelError::MissingMap { name: "EVENTS" })?;
        RingBuf::try_from(map).map_err(map_error("EVENTS"))
    }

    /// Undeliverable events so far, summed over CPUs, per reason.
    pub fn drop_counts(&mut self) -> Result<Vec<(DropReason, u64)>, KernelError> {
        let counters: PerCpuArray<_, u64> = self.map_mut("DROP_COUNTERS")?;
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
    pub fn lost_bytes(&mut self, tgid: u32, ssl: u64) -> Result<u64, KernelError> {
        let map: HashMap<_, ConnKey, u64> = self.map_mut("LOST_BYTES")?;
        match map.get(&ConnKey { tgid, pad: 0, ssl }, 0) {
            Ok(lost) => Ok(lost),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(source) => Err(KernelError::Map {
                name: "LOST_BYTES",
                source,
            }),
        }
    }
}

/// True when attaching failed because the process is gone (`ESRCH`).
fn is_no_such_process(error: &ProgramError) -> bool {
    std::iter::successors(Some(error as &dyn std::error::Error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.raw_os_error() == Some(libc::ESRCH))
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
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
