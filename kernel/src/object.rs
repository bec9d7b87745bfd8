//! The eBPF object built by build.rs from `llmsim-ebpf` (the capture probes and
//! the replay redirect hooks in one object) and the one way to load it. Every
//! map in the object is created on load whatever it is loaded for; [`Purpose`]
//! sizes what the purpose does not use down to nothing.

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
    /// The replay redirect's cgroup hooks, which never use the `EVENTS` ring:
    /// it gets the smallest size the kernel accepts.
    Redirect,
}

/// The loaded object. Dropping it detaches every program attached from it.
pub struct Object {
    ebpf: Ebpf,
}

impl Object {
    /// Loads the object into the kernel; no program is loaded or attached yet.
    pub fn load(purpose: Purpose) -> Result<Self, ObjectError> {
        let mut loader = EbpfLoader::new();
        if purpose == Purpose::Redirect {
            loader.map_max_entries("EVENTS", SMALLEST_RING_BYTES);
        }
        let ebpf = loader.load(OBJECT).map_err(ObjectError::Load)?;
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

/// Wraps a failed operation on the map `name`.
pub fn map_error(name: &'static str) -> impl Fn(MapError) -> ObjectError {
    move |source| ObjectError::Map { name, source }
}

/// Wraps a program `name` that could not be loaded or attached.
pub fn program_error(name: &'static str) -> impl Fn(ProgramError) -> ObjectError {
    move |source| ObjectError::Program { name, source }
}
