//! The HTTP/2 frame decoder and HPACK decoder, through the connection that drives them:
//! client and server bytes cut into chunks, never a panic, whatever the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use llmsim_agent::http2::Http2Connection;
use llmsim_ebpf_common::Direction;
use llmsim_fuzz::{Splitter, TwoSided};

fuzz_target!(|data: &[u8]| {
    let input = TwoSided::parse(data);
    let mut splitter = Splitter::new(input.seed);
    let client = splitter.split(input.client);
    let server = splitter.split(input.server);
    // A connection the agent joined late starts without the preface; the seed's low bit
    // picks which kind this is.
    let mut conn = if input.seed & 1 == 0 {
        Http2Connection::new()
    } else {
        Http2Connection::joined()
    };
    // Alternate the directions chunk by chunk, as a live connection interleaves them.
    let mut ts = 0;
    let mut client = client.into_iter();
    let mut server = server.into_iter();
    loop {
        let (c, s) = (client.next(), server.next());
        if c.is_none() && s.is_none() {
            break;
        }
        for (dir, chunk) in [(Direction::Write, c), (Direction::Read, s)] {
            if let Some(chunk) = chunk {
                ts += 1;
                let _ = conn.push(dir, ts, chunk);
            }
        }
    }
    let _ = conn.finish();
});
