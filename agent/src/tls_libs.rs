//! Finds the ELF objects that implement OpenSSL's plaintext API: the system's
//! dynamic libssl, a binary with OpenSSL linked in statically (node), or a copy
//! bundled by a wheel or an app. An object qualifies when it *defines* (not
//! merely imports) `SSL_write`, `SSL_read`, `SSL_write_ex` or `SSL_read_ex`.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use object::{Object as _, ObjectSymbol as _, read::ReadCache};
use thiserror::Error;

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

/// Which `SSL_*` functions an object defines.
#[expect(
    clippy::struct_excessive_bools,
    reason = "one flag per exported function"
)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslSymbols {
    /// `SSL_write`.
    pub write: bool,
    /// `SSL_write_ex`.
    pub write_ex: bool,
    /// `SSL_read`.
    pub read: bool,
    /// `SSL_read_ex`.
    pub read_ex: bool,
    /// `SSL_ctrl` (for the SNI).
    pub ctrl: bool,
}

impl SslSymbols {
    fn any_data_function(self) -> bool {
        self.write || self.write_ex || self.read || self.read_ex
    }

    fn note(&mut self, name: &[u8]) {
        match name {
            b"SSL_write" => self.write = true,
            b"SSL_write_ex" => self.write_ex = true,
            b"SSL_read" => self.read = true,
            b"SSL_read_ex" => self.read_ex = true,
            b"SSL_ctrl" => self.ctrl = true,
            _ => {}
        }
    }
}

/// An object to attach the TLS probes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsLibrary {
    /// A path that reaches the object from the agent's mount namespace.
    pub path: PathBuf,
    /// What it defines.
    pub symbols: SslSymbols,
}

/// Reads ELF symbol tables (.dynsym, and .symtab when present) for `SSL_*`
/// definitions. Objects that are not ELF or cannot be parsed define nothing.
pub fn inspect(path: &Path) -> Result<SslSymbols, TlsLibError> {
    let file = File::open(path).map_err(|source| TlsLibError::Read {
        path: path.into(),
        source,
    })?;
    let cache = ReadCache::new(file);
    let Ok(object) = object::File::parse(&cache) else {
        return Ok(SslSymbols::default());
    };
    let mut symbols = SslSymbols::default();
    for symbol in object.dynamic_symbols().chain(object.symbols()) {
        if symbol.is_definition()
            && let Ok(name) = symbol.name_bytes()
        {
            symbols.note(name);
        }
    }
    Ok(symbols)
}

/// Remembers what each object (by device and inode) defines, so rescans of
/// many processes parse each object once.
#[derive(Default)]
pub struct Scanner {
    seen: HashMap<(u64, u64), Option<TlsLibrary>>,
}

impl Scanner {
    /// The TLS library at `path`, if it is one; cached by identity.
    pub fn library_at(&mut self, path: &Path) -> Result<Option<TlsLibrary>, TlsLibError> {
        let meta = std::fs::metadata(path).map_err(|source| TlsLibError::Read {
            path: path.into(),
            source,
        })?;
        let key = (meta.dev(), meta.ino());
        if let Some(known) = self.seen.get(&key) {
            return Ok(known.clone());
        }
        let symbols = inspect(path)?;
        let library = symbols.any_data_function().then(|| TlsLibrary {
            path: path.to_path_buf(),
            symbols,
        });
        self.seen.insert(key, library.clone());
        Ok(library)
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
        assert_eq!(inspect(&path).unwrap(), SslSymbols::default());
    }

    #[test]
    fn the_system_libssl_defines_the_data_functions() {
        let libraries = Scanner::default().system_libraries();
        let libssl = libraries.first().expect("Debian ships libssl3");
        assert!(
            libssl.symbols.write && libssl.symbols.read && libssl.symbols.ctrl,
            "{libssl:?}"
        );
    }
}
