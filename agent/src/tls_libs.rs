//! Finds the ELF objects that implement a TLS plaintext API: the system's
//! dynamic libssl, a binary with OpenSSL linked in statically (node), or a copy
//! bundled by a wheel or an app. An object qualifies when it *defines* (not
//! merely imports) `SSL_write`, `SSL_read`, `SSL_write_ex` or `SSL_read_ex`.
//! A Go executable that links `crypto/tls` is one more such object (see
//! [`crate::gotls`]): found as the process's executable mapping, like node;
//! so is a Rust executable that links rustls and keeps its symbols (see
//! [`crate::rustls`]).

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::unix::fs::{FileExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
use thiserror::Error;

use crate::{
    gotls,
    placement::{self, Definitions, Placement, PlacementKind},
    rustls,
};

/// Directories searched for the system's shared libssl.
const SYSTEM_LIBRARY_DIRS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
];

/// Failures inspecting objects and processes.
#[derive(Debug, Error)]
pub enum TlsLibError {
    /// The process does not exist (or exited).
    #[error("no process with pid {pid}")]
    NoSuchProcess {
        /// The pid.
        pid: u32,
    },
    /// A /proc file or an object could not be read.
    #[error("reading {} failed", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Where an object defines each `SSL_*` function: the file offset a uprobe
/// attaches at, so attaching never parses the object again (the node binary is
/// 100 MB, and its first TLS call races the attach).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslSymbols {
    /// `SSL_write`.
    pub write: Option<u64>,
    /// `SSL_write_ex`.
    pub write_ex: Option<u64>,
    /// `SSL_read`.
    pub read: Option<u64>,
    /// `SSL_read_ex`.
    pub read_ex: Option<u64>,
    /// `SSL_ctrl` (for the SNI).
    pub ctrl: Option<u64>,
    /// `SSL_free` (the end of a connection).
    pub free: Option<u64>,
}

impl SslSymbols {
    fn any_data_function(self) -> bool {
        self.write
            .or(self.write_ex)
            .or(self.read)
            .or(self.read_ex)
            .is_some()
    }
}

/// Notes a definition of one of the six functions, the first one seen.
fn note(definitions: &mut Definitions, name: &[u8], at: (u64, u64)) {
    let slot = match name {
        b"SSL_write" => &mut definitions.write,
        b"SSL_write_ex" => &mut definitions.write_ex,
        b"SSL_read" => &mut definitions.read,
        b"SSL_read_ex" => &mut definitions.read_ex,
        b"SSL_ctrl" => &mut definitions.ctrl,
        b"SSL_free" => &mut definitions.free,
        _ => return,
    };
    slot.get_or_insert(at);
}

/// An ELF object's code, for [`placement::choose`]. Code is read from the
/// file, not from the mapping the symbols come from: a uprobe attached to
/// the object for every process (by another capture, or any other tracer)
/// also puts its breakpoint into that read-only mapping, which the kernel
/// counts as one that may execute, and the decoder would see `int3`.
struct ElfCode<'a, 'data> {
    object: &'a object::File<'data>,
    file: &'a File,
}

impl placement::Code for ElfCode<'_, '_> {
    fn is_x86_64(&self) -> bool {
        self.object.architecture() == object::Architecture::X86_64
    }

    fn bytes(&self, address: u64, len: u64) -> Option<Vec<u8>> {
        let segment = self.object.segments().find(|segment| {
            (segment.address()..segment.address() + segment.size()).contains(&address)
        })?;
        let (file_start, file_size) = segment.file_range();
        let into = address - segment.address();
        let len = len.min(file_size.checked_sub(into)?);
        let mut bytes = vec![0; usize::try_from(len).ok()?];
        self.file
            .read_exact_at(&mut bytes, file_start + into)
            .ok()?;
        (!bytes.is_empty()).then_some(bytes)
    }

    fn file_offset(&self, address: u64) -> Option<u64> {
        file_offset(self.object, address)
    }
}

/// The file offset of a virtual address: where the loadable segment holding
/// it starts in the file, plus the distance into it.
fn file_offset(object: &object::File<'_>, address: u64) -> Option<u64> {
    object.segments().find_map(|segment| {
        let (start, size) = (segment.address(), segment.size());
        let (file_start, file_size) = segment.file_range();
        (address >= start && address < start + size && address - start < file_size)
            .then(|| file_start + (address - start))
    })
}

/// An object to attach the TLS probes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsLibrary {
    /// A path that reaches the object from the agent's mount namespace.
    pub path: PathBuf,
    /// What it defines.
    pub symbols: SslSymbols,
    /// Where its probes go.
    pub placement: Placement,
}

/// Reads ELF symbol tables (.dynsym, and .symtab when .dynsym defines no data
/// function) for `SSL_*` definitions, and chooses where the probes go (the
/// `forced` placement where it fits). An object without them may be a Go
/// binary, which gets the go placement, or one warning line saying why its
/// `crypto/tls` cannot be probed. Objects that are not ELF or cannot be
/// parsed define nothing and get no placement.
///
/// The file is mapped, not read: only the pages of the headers and symbol
/// tables are touched, which matters for a 100 MB node binary that must be
/// probed between its exec and its first TLS call.
pub fn inspect(
    path: &Path,
    forced: Option<PlacementKind>,
) -> Result<(SslSymbols, Option<Placement>), TlsLibError> {
    let file = File::open(path).map_err(|source| TlsLibError::Read {
        path: path.into(),
        source,
    })?;
    let map = crate::sys::MappedFile::new(&file).map_err(|source| TlsLibError::Read {
        path: path.into(),
        source,
    })?;
    let Ok(object) = object::File::parse(map.bytes()) else {
        return Ok((SslSymbols::default(), None));
    };
    let note_all = |definitions: &mut Definitions, table: object::SymbolIterator<'_, '_>| {
        for symbol in table {
            if symbol.is_definition()
                && let Ok(name) = symbol.name_bytes()
            {
                note(definitions, name, (symbol.address(), symbol.size()));
            }
        }
    };
    let offsets = |definitions: &Definitions| {
        let offset =
            |at: Option<(u64, u64)>| at.and_then(|(address, _)| file_offset(&object, address));
        SslSymbols {
            write: offset(definitions.write),
            write_ex: offset(definitions.write_ex),
            read: offset(definitions.read),
            read_ex: offset(definitions.read_ex),
            ctrl: offset(definitions.ctrl),
            free: offset(definitions.free),
        }
    };
    // Exported definitions are in .dynsym; a static binary that does not
    // export them may still list them in .symtab, which is much larger.
    let mut definitions = Definitions::default();
    note_all(&mut definitions, object.dynamic_symbols());
    if !offsets(&definitions).any_data_function() {
        definitions = Definitions::default();
        note_all(&mut definitions, object.symbols());
    }
    let symbols = offsets(&definitions);
    let code = ElfCode {
        object: &object,
        file: &file,
    };
    if !symbols.any_data_function() {
        let placement =
            go_placement(path, &object, &code).or_else(|| rustls_placement(path, &object, &code));
        return Ok((symbols, placement));
    }
    Ok((
        symbols,
        Some(placement::choose(&code, &definitions, forced)),
    ))
}

/// The go placement when `object` is a Go binary that links `crypto/tls`; a
/// Go binary whose functions are laid out otherwise is one warning line.
fn go_placement(
    path: &Path,
    object: &object::File<'_>,
    code: &ElfCode<'_, '_>,
) -> Option<Placement> {
    let placed = match gotls::find(object) {
        Ok(None) => return None,
        Ok(Some(functions)) => placement::choose_go(code, &functions).map_err(anyhow::Error::new),
        Err(error) => Err(anyhow::Error::new(error)),
    };
    placed
        .map_err(|error| {
            tracing::warn!(
                "{}: Go crypto/tls found but not probed: {error:#}",
                path.display()
            );
        })
        .ok()
}

/// The rustls placement when `object` keeps rustls's plaintext functions in its
/// symbol table; one warning line when they cannot be probed.
fn rustls_placement(
    path: &Path,
    object: &object::File<'_>,
    code: &ElfCode<'_, '_>,
) -> Option<Placement> {
    let functions = rustls::find(object)?;
    placement::choose_rustls(code, &functions)
        .map_err(|error| {
            tracing::warn!("{}: rustls found but not probed: {error}", path.display());
        })
        .ok()
}

/// Remembers what each object (by device and inode) defines, so rescans of
/// many processes parse each object once.
#[derive(Default)]
pub struct Scanner {
    seen: HashMap<(u64, u64), (SslSymbols, Option<Placement>)>,
    /// The placement asked for, where an object allows it.
    forced: Option<PlacementKind>,
}

impl Scanner {
    /// A scanner that places probes as `forced` says where an object allows it.
    pub fn new(forced: Option<PlacementKind>) -> Self {
        Self {
            seen: HashMap::new(),
            forced,
        }
    }

    /// The TLS library at `path`, if it is one; cached by identity.
    pub fn library_at(&mut self, path: &Path) -> Result<Option<TlsLibrary>, TlsLibError> {
        let meta = std::fs::metadata(path).map_err(|source| TlsLibError::Read {
            path: path.into(),
            source,
        })?;
        let key = (meta.dev(), meta.ino());
        let (symbols, placement) = if let Some(known) = self.seen.get(&key) {
            known.clone()
        } else {
            let found = inspect(path, self.forced)?;
            self.seen.insert(key, found.clone());
            found
        };
        // The path asked for, not the one first seen: that one may name a
        // process (`/proc/PID/root/...`) that has exited since.
        Ok(placement.map(|placement| TlsLibrary {
            path: path.to_path_buf(),
            symbols,
            placement,
        }))
    }

    /// TLS libraries mapped by a process, reached through `/proc/PID/root` so
    /// processes in other mount namespaces resolve to the right file.
    pub fn libraries_of(&mut self, pid: u32) -> Result<Vec<TlsLibrary>, TlsLibError> {
        let maps_path = PathBuf::from(format!("/proc/{pid}/maps"));
        let maps = std::fs::read_to_string(&maps_path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                TlsLibError::NoSuchProcess { pid }
            } else {
                TlsLibError::Read {
                    path: maps_path,
                    source,
                }
            }
        })?;
        let mut found = Vec::new();
        for object in mapped_objects(&maps) {
            let path = PathBuf::from(format!("/proc/{pid}/root{object}"));
            // Unreadable or vanished mappings are not TLS libraries we can probe.
            if let Ok(Some(library)) = self.library_at(&path)
                && !found.contains(&library)
            {
                found.push(library);
            }
        }
        Ok(found)
    }

    /// The system's shared libssl copies.
    pub fn system_libraries(&mut self) -> Vec<TlsLibrary> {
        let mut found = Vec::new();
        for dir in SYSTEM_LIBRARY_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if name.to_string_lossy().starts_with("libssl.so")
                    && let Ok(Some(library)) = self.library_at(&entry.path())
                    && !found
                        .iter()
                        .any(|l: &TlsLibrary| same_file(&l.path, &library.path))
                {
                    found.push(library);
                }
            }
        }
        found
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Distinct file paths of executable mappings in a /proc/PID/maps text.
fn mapped_objects(maps: &str) -> Vec<&str> {
    let mut paths: Vec<&str> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let perms = fields.nth(1).unwrap_or("");
        let path = fields.nth(3).unwrap_or("");
        if perms.contains('x') && path.starts_with('/') && !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_objects_keeps_executable_file_mappings_once() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 fd:01 123 /usr/bin/python3.11
55d0c0001000-55d0c0002000 r-xp 00001000 fd:01 123 /usr/bin/python3.11
7f0000000000-7f0000001000 r-xp 00000000 fd:01 456 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000002000-7f0000003000 r-xp 00000000 00:00 0 [vdso]
7f0000004000-7f0000005000 rw-p 00000000 00:00 0
";
        assert_eq!(
            mapped_objects(maps),
            [
                "/usr/bin/python3.11",
                "/usr/lib/x86_64-linux-gnu/libssl.so.3"
            ]
        );
    }

    #[test]
    fn a_non_elf_file_defines_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-elf");
        std::fs::write(&path, b"#!/bin/sh\n").unwrap();
        assert_eq!(inspect(&path, None).unwrap(), (SslSymbols::default(), None));
    }

    #[test]
    fn a_library_is_named_by_the_path_asked_for_even_when_cached() {
        let mut scanner = Scanner::default();
        let libssl = scanner.system_libraries().remove(0);
        let dir = tempfile::tempdir().unwrap();
        let alias = dir.path().join("libssl-alias.so");
        std::os::unix::fs::symlink(&libssl.path, &alias).unwrap();
        let found = scanner.library_at(&alias).unwrap().expect("a TLS library");
        assert_eq!(found.path, alias);
        assert_eq!(found.symbols, libssl.symbols);
        drop(dir);
        let again = scanner
            .library_at(&libssl.path)
            .unwrap()
            .expect("a TLS library");
        assert_eq!(again.path, libssl.path);
    }

    #[test]
    fn the_system_libssl_defines_the_data_functions() {
        let libraries = Scanner::default().system_libraries();
        let libssl = libraries.first().expect("Debian ships libssl3");
        assert!(
            libssl.symbols.write.is_some()
                && libssl.symbols.read.is_some()
                && libssl.symbols.ctrl.is_some(),
            "{libssl:?}"
        );
    }

    #[test]
    fn the_system_libssl_gets_worker_probes_on_a_push() {
        let libssl = Scanner::default().system_libraries().remove(0);
        let placement = &libssl.placement;
        assert_eq!(placement.kind, PlacementKind::Worker, "{placement:?}");
        assert_eq!(placement.to_string(), "worker probes (emulated push)");
        // Two workers (entry and return each), SSL_ctrl, SSL_free.
        assert_eq!(placement.points.len(), 6, "{placement:?}");
        for forced in PlacementKind::ALL {
            let (_, placement) = inspect(&libssl.path, Some(forced)).unwrap();
            let placement = placement.expect("a placement");
            assert_eq!(placement.kind, forced, "{placement:?}");
            assert!(placement.unforced.is_none(), "{placement:?}");
        }
    }

    #[test]
    fn nodes_static_openssl_gets_entry_probes_on_a_push() {
        let Ok(node) = std::fs::canonicalize("/usr/bin/node") else {
            return;
        };
        let (_, placement) = inspect(&node, None).unwrap();
        let placement = placement.expect("node links OpenSSL in");
        assert_eq!(placement.to_string(), "entry probes (emulated push)");
    }
}
