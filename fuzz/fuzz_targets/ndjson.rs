//! NDJSON body parsing (`application/x-ndjson`, Ollama's streaming): lines cut anywhere
//! across reads replay as the recorded bytes (see `llmsim_fuzz::check_body`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    llmsim_fuzz::check_body(Some("application/x-ndjson"), None, seed, bytes);
});
