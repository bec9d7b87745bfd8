//! Go's function table, `.gopclntab`: what the runtime reads for stack traces,
//! and the one place a stripped (`-ldflags="-s -w"`) Go binary still names its
//! functions. Only the parts needed to find a function's entry and end by
//! name are read: the header (`runtime.pcHeader`), the function table
//! (`functab`, sorted by entry, with one closing entry holding the end of the
//! last function) and each function's name offset (`runtime._func.nameOff`).
//!
//! Layouts, from `runtime/symtab.go`:
//! - Go 1.18 and 1.19 (magic `0xfffffff0`) and 1.20 and later (`0xfffffff1`):
//!   `magic u32, pad u8, pad u8, minLC u8, ptrSize u8, nfunc, nfiles,
//!   textStart, funcnameOffset, cuOffset, filetabOffset, pctabOffset,
//!   pclnOffset` (pointer-sized words); `functab` entries are
//!   `(entryOff u32, funcOff u32)` with entries relative to `textStart`, and a
//!   `_func` starts `entryOff u32, nameOff i32`.
//! - Go 1.16 and 1.17 (`0xfffffffa`): the same header without `textStart`;
//!   `functab` entries are `(entry, funcOff)` pointer-sized words, and a
//!   `_func` starts `entry uintptr, nameOff i32`.
//!
//! Offsets in the header are from the start of the table; `funcOff` is from
//! the start of `functab`. Only 64-bit tables are read (the probes are
//! x86-64 only).

use thiserror::Error;

/// Failures reading a `.gopclntab`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PclntabError {
    /// The magic number is none of the versions read here.
    #[error("unknown .gopclntab magic {magic:#010x} (Go 1.16 or later is needed)")]
    UnknownMagic {
        /// The first four bytes, little-endian.
        magic: u32,
    },
    /// The table is for another pointer size than 8.
    #[error(".gopclntab is for {size}-byte pointers, not 8")]
    PointerSize {
        /// The header's `ptrSize`.
        size: u8,
    },
    /// A field lies outside the table.
    #[error(".gopclntab is truncated: its {what} at offset {offset:#x} is outside the table")]
    OutOfBounds {
        /// The field.
        what: &'static str,
        /// Its offset in the table.
        offset: u64,
    },
}

/// The table layouts this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Go 1.16 and 1.17.
    Go116,
    /// Go 1.18 and later.
    Go118,
}

/// A function found by name: its entry address and its size (up to the next
/// function's entry, so alignment padding included).
pub type Function = (u64, u64);

/// Finds each of `names` in `table`: its entry and size, or None when the
/// table has no function of that name. `text` is the address of the `.text`
/// section, used when the header's `textStart` is 0 (it is relocated at load
/// time in position-independent builds).
pub fn find(
    table: &[u8],
    text: u64,
    names: &[&str],
) -> Result<Vec<Option<Function>>, PclntabError> {
    let mut found = vec![None; names.len()];
    each(table, text, |name, function| {
        if let Some(slot) = names.iter().position(|wanted| wanted.as_bytes() == name) {
            found[slot] = Some(function);
        }
    })?;
    Ok(found)
}

/// Calls `f` with the name, entry and size of every function in `table`
/// (`text` as for [`find`]).
pub fn each(
    table: &[u8],
    text: u64,
    mut f: impl FnMut(&[u8], Function),
) -> Result<(), PclntabError> {
    let reader = Reader(table);
    let magic = reader.u32(0, "magic")?;
    let layout = match magic {
        0xffff_fff0 | 0xffff_fff1 => Layout::Go118,
        0xffff_fffa => Layout::Go116,
        _ => return Err(PclntabError::UnknownMagic { magic }),
    };
    let size = reader.u8(7, "pointer size")?;
    if size != 8 {
        return Err(PclntabError::PointerSize { size });
    }
    let word = |index: u64, what| reader.u64(8 + 8 * index, what);
    let functions = word(0, "function count")?;
    let (text_start, names_at, functab) = match layout {
        Layout::Go118 => {
            let start = word(2, "text start")?;
            let start = if start == 0 { text } else { start };
            (
                start,
                word(3, "name table offset")?,
                word(7, "function table offset")?,
            )
        }
        Layout::Go116 => (
            0,
            word(2, "name table offset")?,
            word(6, "function table offset")?,
        ),
    };
    let entry_size = match layout {
        Layout::Go118 => 8,
        Layout::Go116 => 16,
    };
    // (entry, offset of its `_func`) of function `index`.
    let entry = |index: u64| -> Result<(u64, u64), PclntabError> {
        // Offsets from a corrupt table saturate, and so fall outside it; entry addresses
        // wrap, as Go's own uintptr arithmetic does.
        let at = functab.saturating_add(index.saturating_mul(entry_size));
        match layout {
            Layout::Go118 => Ok((
                text_start.wrapping_add(u64::from(reader.u32(at, "function entry")?)),
                u64::from(reader.u32(at.saturating_add(4), "function offset")?),
            )),
            Layout::Go116 => Ok((
                reader.u64(at, "function entry")?,
                reader.u64(at.saturating_add(8), "function offset")?,
            )),
        }
    };
    let name_field = match layout {
        Layout::Go118 => 4,
        Layout::Go116 => 8,
    };
    for index in 0..functions {
        let (start, func) = entry(index)?;
        let name_offset = reader.u32(
            functab.saturating_add(func).saturating_add(name_field),
            "function name offset",
        )?;
        let name = reader.c_str(names_at.saturating_add(u64::from(name_offset)))?;
        let (end, _) = entry(index + 1)?;
        f(name, (start, end.saturating_sub(start)));
    }
    Ok(())
}

/// Bounds-checked little-endian reads.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes<const N: usize>(&self, at: u64, what: &'static str) -> Result<[u8; N], PclntabError> {
        usize::try_from(at)
            .ok()
            .and_then(|from| self.0.get(from..from.checked_add(N)?))
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(PclntabError::OutOfBounds { what, offset: at })
    }

    fn u8(&self, at: u64, what: &'static str) -> Result<u8, PclntabError> {
        self.bytes::<1>(at, what).map(|[byte]| byte)
    }

    fn u32(&self, at: u64, what: &'static str) -> Result<u32, PclntabError> {
        self.bytes(at, what).map(u32::from_le_bytes)
    }

    fn u64(&self, at: u64, what: &'static str) -> Result<u64, PclntabError> {
        self.bytes(at, what).map(u64::from_le_bytes)
    }

    /// The NUL-terminated string at `at`, without its NUL.
    fn c_str(&self, at: u64) -> Result<&[u8], PclntabError> {
        let out_of_bounds = PclntabError::OutOfBounds {
            what: "function name",
            offset: at,
        };
        let rest = usize::try_from(at)
            .ok()
            .and_then(|from| self.0.get(from..))
            .ok_or(out_of_bounds.clone())?;
        let len = rest.iter().position(|&b| b == 0).ok_or(out_of_bounds)?;
        Ok(&rest[..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Go 1.16/1.17 table of two functions, `main.a` at 0x401000 (0x20 bytes)
    /// and `main.b` at 0x401020, ending at 0x401060.
    fn go116_table() -> Vec<u8> {
        let mut table = Vec::new();
        table.extend(0xffff_fffa_u32.to_le_bytes());
        table.extend([0, 0, 1, 8]);
        let names_at = 8 + 7 * 8;
        let functab = names_at + 16;
        // nfunc, nfiles, funcnameOffset, cuOffset, filetabOffset, pctabOffset, pclnOffset
        for word in [2, 0, names_at, 0, 0, 0, functab] {
            table.extend(u64::to_le_bytes(word));
        }
        table.extend(b"main.a\0main.b\0\0\0");
        // Three entries (16 bytes each), then the two `_func`s.
        let funcs = 3 * 16;
        for (entry, func) in [(0x40_1000, funcs), (0x40_1020, funcs + 16), (0x40_1060, 0)] {
            table.extend(u64::to_le_bytes(entry));
            table.extend(u64::to_le_bytes(func));
        }
        for (entry, name) in [(0x40_1000_u64, 0_u32), (0x40_1020, 7)] {
            table.extend(entry.to_le_bytes());
            table.extend(name.to_le_bytes());
            table.extend([0; 4]);
        }
        table
    }

    #[test]
    fn a_go_1_16_table_names_its_functions() {
        let table = go116_table();
        assert_eq!(
            find(&table, 0, &["main.b", "main.a", "main.c"]),
            Ok(vec![Some((0x40_1020, 0x40)), Some((0x40_1000, 0x20)), None])
        );
    }

    /// Found by the `pclntab` fuzz target: a text start near the top of the address
    /// space overflowed the entry address.
    #[test]
    fn offsets_and_addresses_near_the_top_of_u64_do_not_overflow() {
        let mut table = vec![0xf0, 0xff, 0xff, 0xff, 0x69, 0x69, 0x69, 0x08];
        // nfunc 0xff, text start 0xff..ff, then offsets 0 (entries at the header).
        for word in [0xff, 0x1000_0000_0000_0000, u64::MAX, 0, 0, 0, 0, 0] {
            table.extend(u64::to_le_bytes(word));
        }
        assert!(find(&table, 0, &["main.a"]).is_err());
        let mut far = table.clone();
        // A function table offset at the top: its entries lie outside the table.
        far[64..72].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            find(&far, 0, &["main.a"]),
            Err(PclntabError::OutOfBounds { .. })
        ));
    }

    #[test]
    fn a_truncated_or_foreign_table_is_an_error_not_a_panic() {
        let table = go116_table();
        for len in 0..table.len() {
            let _ = find(&table[..len], 0, &["main.b"]);
        }
        assert!(matches!(
            find(&table[..70], 0, &["main.b"]),
            Err(PclntabError::OutOfBounds { .. })
        ));
        assert_eq!(
            find(&[0xfb, 0xff, 0xff, 0xff, 0, 0, 1, 8], 0, &[]),
            Err(PclntabError::UnknownMagic { magic: 0xffff_fffb })
        );
        let mut narrow = table.clone();
        narrow[7] = 4;
        assert_eq!(
            find(&narrow, 0, &[]),
            Err(PclntabError::PointerSize { size: 4 })
        );
    }
}
