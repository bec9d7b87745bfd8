//! The eBPF object built by build.rs from `llmsim-ebpf` (the capture probes and
//! the replay redirect hooks in one object) and the one way to load it. Every
//! map in the object is created on load whatever it is loaded for; [`Purpose`]
//! sizes what the purpose does not use down to nothing.
//!
//! The capture probes' debug lines (aya-log) are off unless tracing enables
//! debug for the target `llmsim_ebpf` (the agent: `LLMSIM_LOG=llmsim_ebpf=debug`).
//! Off costs nothing at run time: the level is `AYA_LOG_LEVEL`, a constant in
//! the object's frozen .rodata, so the verifier knows every log branch is never
//! taken, skips it (`ssl_return` verifies in about 15,700 instructions instead
//! of 17,800) and removes it from the program; the log ring is cut to one page.
//! When on, a thread forwards the lines into tracing. The redirect hooks do not
//! log.

use std::os::fd::AsFd as _;

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Map, MapError},
    programs::{Program, ProgramError},
};
use thiserror::Error;

/// The object, embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/llmsim-ebpf"));

/// The smallest ring buffer the kernel accepts (one page).
const SMALLEST_RING_BYTES: u32 = 4096;

/// The tracing target the probes' log lines arrive under (their module paths
/// start with the eBPF crate's name).
const LOG_TARGET: &str = "llmsim_ebpf";

/// aya-log's ring buffer of log lines.
const LOG_RING: &str = "AYA_LOGS";

/// Failures loading the object or reaching into it.
#[derive(Debug, Error)]
pub enum ObjectError {
    /// The eBPF object could not be loaded (verifier, missing BTF, privileges).
    #[error("loading the eBPF object failed")]
    Load(#[source] EbpfError),
    /// A program is missing from the object: a build mismatch.
    #[error("eBPF program `{name}` is missing from the object")]
    MissingProgram {
        /// Program name.
        name: &'static str,
    },
    /// A map is missing from the object (or was taken already): a build mismatch.
    #[error("eBPF map `{name}` is missing from the object")]
    MissingMap {
        /// Map name.
        name: &'static str,
    },
    /// A program is not of the type asked for, or could not be loaded or attached.
    #[error("eBPF program `{name}` could not be loaded or attached")]
    Program {
        /// Program name.
        name: &'static str,
        /// The cause.
        #[source]
        source: ProgramError,
    },
    /// A map is not of the type asked for, or an operation on it failed.
    #[error("eBPF map `{name}` operation failed")]
    Map {
        /// Map name.
        name: &'static str,
        /// The cause.
        #[source]
        source: MapError,
    },
}

/// What the object is loaded for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The capture probes: TLS uprobes, syscall tracepoints, the `EVENTS` ring.
    Capture,
    /// The replay redirect's cgroup hooks, which neither use the `EVENTS`
    /// ring nor log: both rings get the smallest size the kernel accepts.
    Redirect,
}

/// Sizes of the capture's maps other than their built-in defaults, for tests
/// that force the losses the capture must account for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapSizes {
    /// Bytes of the `EVENTS` ring buffer: a power of two, at least a page.
    pub ring_bytes: Option<u32>,
    /// Entries of `SSL_CALLS`, the calls in progress.
    pub call_table: Option<u32>,
}

/// The loaded object. Dropping it detaches every program attached from it.
pub struct Object {
    ebpf: Ebpf,
}

impl Object {
    /// Loads the object into the kernel with the maps' built-in sizes; no
    /// program is loaded or attached yet.
    pub fn load(purpose: Purpose) -> Result<Self, ObjectError> {
        Self::load_sized(purpose, MapSizes::default())
    }

    /// Loads the object with the capture's maps sized by `sizes`.
    pub fn load_sized(purpose: Purpose, sizes: MapSizes) -> Result<Self, ObjectError> {
        let log = purpose == Purpose::Capture
            && tracing::enabled!(target: LOG_TARGET, tracing::Level::DEBUG);
        let level = if log { aya_log::Level::Debug as u8 } else { 0 };
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &level, true);
        if purpose == Purpose::Redirect {
            loader.map_max_entries("EVENTS", SMALLEST_RING_BYTES);
        } else if let Some(bytes) = sizes.ring_bytes {
            loader.map_max_entries("EVENTS", bytes);
        }
        if let Some(entries) = sizes.call_table {
            loader.map_max_entries("SSL_CALLS", entries);
        }
        if !log {
            loader.map_max_entries(LOG_RING, SMALLEST_RING_BYTES);
        }
        let mut ebpf = loader.load(OBJECT).map_err(ObjectError::Load)?;
        if log {
            forward_log(&mut ebpf);
        }
        Ok(Self { ebpf })
    }

    /// The program `name`, as its type `T` (`UProbe`, `CgroupSockAddr`, ...).
    pub fn program_mut<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, ObjectError>
    where
        &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
    {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(ObjectError::MissingProgram { name })?;
        program
            .try_into()
            .map_err(|source| ObjectError::Program { name, source })
    }

    /// The map `name`, borrowed as its type `T` (`HashMap<&mut MapData, K, V>`, ...).
    pub fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, ObjectError>
    where
        T: TryFrom<&'a mut Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ObjectError::MissingMap { name })?;
        T::try_from(map).map_err(map_error(name))
    }

    /// Takes the map `name` out of the object, as its owned type `T` (the
    /// ring buffer a reader keeps); a second call finds it missing.
    pub fn take_map<T>(&mut self, name: &'static str) -> Result<T, ObjectError>
    where
        T: TryFrom<Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(ObjectError::MissingMap { name })?;
        T::try_from(map).map_err(map_error(name))
    }
}

/// Forwards the probes' log lines into tracing (through `log`, which
/// tracing-subscriber bridges) from a thread that lives as long as the
/// process. Failing that, the probes' lines are lost, not the capture.
fn forward_log(ebpf: &mut Ebpf) {
    let mut logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(error) => {
            tracing::warn!(target: LOG_TARGET, "the probes' debug lines cannot be read: {error}");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("llmsim-ebpf-log".into())
        .spawn(move || {
            while crate::sys::wait_readable(logger.as_fd()).is_ok() {
                logger.flush();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(target: LOG_TARGET, "the probes' debug lines cannot be read: {error}");
    }
}

/// Wraps a failed operation on the map `name`.
pub fn map_error(name: &'static str) -> impl Fn(MapError) -> ObjectError {
    move |source| ObjectError::Map { name, source }
}

/// Wraps a program `name` that could not be loaded or attached.
pub fn program_error(name: &'static str) -> impl Fn(ProgramError) -> ObjectError {
    move |source| ObjectError::Program { name, source }
}
