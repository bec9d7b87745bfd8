//! The SSE parser, through the body capture builds for `text/event-stream`: events cut
//! anywhere across reads replay as the recorded bytes (see `llmsim_fuzz::check_body`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    llmsim_fuzz::check_body(Some("text/event-stream"), None, seed, bytes);
});
