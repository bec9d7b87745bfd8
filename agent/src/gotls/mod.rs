//! Go's `crypto/tls` in a Go executable: where `(*Conn).Write`, `(*Conn).Read`
//! and `(*Conn).Close` are, from `.symtab` when the binary keeps it, else from
//! the function table every Go binary carries (`.gopclntab`, see [`pclntab`]),
//! so a stripped binary (`-ldflags="-s -w"`) is found as well. Go links its
//! TLS stack into the executable, so the executable is the TLS object.
//!
//! The probes rely on the register ABI of Go 1.17 and later (amd64). Tested
//! with Debian bookworm's Go 1.19; the layouts read here and by the kernel
//! programs (`ebpf/src/probes/gotls.rs`) are those of Go 1.17 to 1.22.

pub mod pclntab;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use thiserror::Error;

/// `func (c *Conn) Write(b []byte) (int, error)`.
pub const WRITE: &str = "crypto/tls.(*Conn).Write";
/// `func (c *Conn) Read(b []byte) (int, error)`.
pub const READ: &str = "crypto/tls.(*Conn).Read";
/// `func (c *Conn) Close() error`.
pub const CLOSE: &str = "crypto/tls.(*Conn).Close";
/// `func memmove(to, from unsafe.Pointer, n uintptr)`, which `(*Conn).Read`
/// calls to copy its result into the caller's buffer.
pub const MEMMOVE: &str = "runtime.memmove";

/// Whether a runtime function of this name never returns: the panics Go's
/// compiler calls (bounds, nil, division, conversions) and fatal errors. A
/// call to one ends its path through a function. (`runtime.panicCheck*`
/// return when the panic is allowed, so they are not among them.)
pub fn never_returns(name: &[u8]) -> bool {
    (name.starts_with(b"runtime.panic") && !name.starts_with(b"runtime.panicCheck"))
        || name.starts_with(b"runtime.goPanic")
        || [&b"runtime.gopanic"[..], b"runtime.throw", b"runtime.fatal"].contains(&name)
}

/// Failures finding `crypto/tls` in a Go binary.
#[derive(Debug, Error)]
pub enum GoTlsError {
    /// `.gopclntab` could not be read from the file.
    #[error("the .gopclntab section cannot be read")]
    Section {
        /// The cause.
        #[source]
        source: object::Error,
    },
    /// `.gopclntab` is not a table this version reads.
    #[error(transparent)]
    Pclntab(#[from] pclntab::PclntabError),
}

/// Where a Go binary defines the probed functions: virtual address and size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Functions {
    /// `(*Conn).Write`.
    pub write: Option<(u64, u64)>,
    /// `(*Conn).Read`.
    pub read: Option<(u64, u64)>,
    /// `(*Conn).Close`.
    pub close: Option<(u64, u64)>,
    /// `runtime.memmove`.
    pub memmove: Option<(u64, u64)>,
    /// The entries of the functions that never return ([`never_returns`]).
    pub never_return: Vec<u64>,
}

/// The `crypto/tls` functions of `object` if it is a Go binary that links
/// `crypto/tls` (it has a `.gopclntab` and defines `(*Conn).Write` or
/// `(*Conn).Read`); None for anything else.
pub fn find(object: &object::File<'_>) -> Result<Option<Functions>, GoTlsError> {
    let Some(table) = object.section_by_name(".gopclntab") else {
        return Ok(None);
    };
    let mut found = Functions::default();
    for symbol in object.symbols() {
        let Ok(name) = symbol.name_bytes() else {
            continue;
        };
        if symbol.is_definition() && symbol.size() > 0 {
            found.add(name, (symbol.address(), symbol.size()));
        }
    }
    if found.write.is_none() || found.read.is_none() {
        let data = table
            .uncompressed_data()
            .map_err(|source| GoTlsError::Section { source })?;
        let text = object
            .section_by_name(".text")
            .map_or(0, |text| text.address());
        found = Functions::default();
        pclntab::each(&data, text, |name, function| found.add(name, function))?;
    }
    Ok((found.write.is_some() || found.read.is_some()).then_some(found))
}

impl Functions {
    /// Notes the function `name` at `function` if it is one of these.
    fn add(&mut self, name: &[u8], function: (u64, u64)) {
        let slot = match name {
            _ if name == WRITE.as_bytes() => &mut self.write,
            _ if name == READ.as_bytes() => &mut self.read,
            _ if name == CLOSE.as_bytes() => &mut self.close,
            _ if name == MEMMOVE.as_bytes() => &mut self.memmove,
            _ if never_returns(name) => {
                self.never_return.push(function.0);
                return;
            }
            _ => return,
        };
        slot.get_or_insert(function);
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, process::Command};

    use crate::{
        placement::{PlacementKind, ProbeRole},
        tls_libs,
    };

    use super::*;

    /// Builds the test suite's Go client (`tests/clients/go`) into `dir`, with
    /// `ldflags`; Debian's `golang-go`, offline, in a cache of its own.
    fn build_client(dir: &Path, name: &str, ldflags: &str) -> std::path::PathBuf {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/go");
        let out = dir.join(name);
        let status = Command::new("go")
            .args(["build", "-trimpath", "-ldflags", ldflags, "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&source)
            .env("GOCACHE", dir.join("cache"))
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0")
            .status()
            .expect("go (scripts/setup.sh installs golang-go)");
        assert!(status.success(), "go build failed: {status}");
        out
    }

    #[test]
    fn a_stripped_go_binary_gets_the_same_probes_as_one_with_symbols() {
        let dir = tempfile::tempdir().unwrap();
        let full = build_client(dir.path(), "full", "");
        let stripped = build_client(dir.path(), "stripped", "-s -w");
        let bytes = std::fs::read(&stripped).unwrap();
        let object = object::File::parse(&*bytes).unwrap();
        assert!(object.section_by_name(".symtab").is_none(), "stripped");
        let functions = find(&object).unwrap().expect("crypto/tls");
        assert!(
            functions.write.is_some() && functions.read.is_some() && functions.close.is_some(),
            "{functions:?}"
        );
        let placements = [&full, &stripped].map(|path| {
            tls_libs::inspect(path, None)
                .unwrap()
                .1
                .expect("a Go placement")
        });
        let [with_symbols, without] = &placements;
        assert_eq!(with_symbols.kind, PlacementKind::Go);
        let offsets = |role| -> Vec<u64> {
            with_symbols
                .points
                .iter()
                .filter(|p| p.role == role)
                .map(|p| p.offset)
                .collect()
        };
        assert_eq!(offsets(ProbeRole::GoRead).len(), 1);
        assert_eq!(offsets(ProbeRole::GoWrite).len(), 1);
        assert_eq!(offsets(ProbeRole::GoClose).len(), 1);
        assert_ne!(offsets(ProbeRole::GoReadReturn), Vec::<u64>::new());
        let roles = |placement: &crate::placement::Placement| -> Vec<(ProbeRole, u64)> {
            placement
                .points
                .iter()
                .map(|p| (p.role, p.offset))
                .collect()
        };
        // The two builds differ only in their symbols: the code is the same.
        assert_eq!(roles(with_symbols), roles(without));
        // A stripped binary whose table is not one this version reads gets no probes.
        let table = object.section_by_name(".gopclntab").unwrap();
        let (at, _) = table.file_range().unwrap();
        let mut corrupt = bytes.clone();
        let at = usize::try_from(at).unwrap();
        corrupt[at..at + 4].copy_from_slice(&0xffff_fffb_u32.to_le_bytes());
        let object = object::File::parse(&*corrupt).unwrap();
        assert!(matches!(
            find(&object),
            Err(GoTlsError::Pclntab(pclntab::PclntabError::UnknownMagic {
                magic: 0xffff_fffb
            }))
        ));
        let path = dir.path().join("corrupt");
        std::fs::write(&path, &corrupt).unwrap();
        assert_eq!(tls_libs::inspect(&path, None).unwrap().1, None);
        let returns = offsets(ProbeRole::GoReadReturn).len();
        // Debian's Go inlines `bytes.(*Reader).Read` into `(*Conn).Read`: its one
        // `runtime.memmove` call is where the result is read.
        assert_eq!(offsets(ProbeRole::GoReadCopy).len(), 1);
        assert_eq!(with_symbols.refusals, []);
        assert_eq!(
            with_symbols.to_string(),
            format!(
                "go probes (entries on emulated jcc + reads on emulated call + {returns} \
                 error-exit ret probes, single-step)"
            )
        );
    }
}
