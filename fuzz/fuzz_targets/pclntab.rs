//! The Go `.gopclntab` parser: any table yields functions or a typed error, never a panic.
//! The first 8 bytes are the `.text` address; the rest is the table.

#![no_main]

use libfuzzer_sys::fuzz_target;
use llmsim_agent::gotls::{CLOSE, READ, WRITE, pclntab};

fuzz_target!(|data: &[u8]| {
    let Some((text, table)) = data.split_first_chunk::<8>() else {
        return;
    };
    let _ = pclntab::find(table, u64::from_le_bytes(*text), &[WRITE, READ, CLOSE]);
});
