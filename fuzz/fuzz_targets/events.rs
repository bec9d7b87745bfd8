//! The ring-buffer event decoder: any record decodes or is refused with a typed error.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = llmsim_agent::events::decode(data);
});
