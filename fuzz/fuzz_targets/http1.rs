//! The HTTP/1.1 reassembler fed arbitrary splits: the same client and server bytes cut into
//! chunks anywhere give the same exchanges, and the same success or failure, as fed whole.
//! Timing is erased and response body segments merged before comparing, as those follow
//! the cuts by design.

#![no_main]

use libfuzzer_sys::fuzz_target;
use llmsim_agent::http1::{Direction, Exchange, Http1Connection};
use llmsim_fuzz::{Splitter, TwoSided};

/// Feeds the chunks, writes first, then reads; the exchanges or the first error.
fn reassemble(client: &[&[u8]], server: &[&[u8]]) -> Result<Vec<Exchange>, String> {
    let mut conn = Http1Connection::new();
    let mut out = Vec::new();
    let mut ts = 0;
    let feeds = client
        .iter()
        .map(|c| (Direction::Write, c))
        .chain(server.iter().map(|c| (Direction::Read, c)));
    for (dir, chunk) in feeds {
        ts += 1;
        match conn.push(dir, ts, chunk) {
            Ok(exchanges) => out.extend(exchanges),
            Err(e) => return Err(e.to_string()),
        }
    }
    out.extend(conn.finish(ts + 1));
    Ok(out.into_iter().map(normalized).collect())
}

fn normalized(mut ex: Exchange) -> Exchange {
    ex.request.start_ns = 0;
    ex.request.end_ns = 0;
    if let Some(r) = ex.response.as_mut() {
        let body = r.body();
        r.body_segments = if body.is_empty() {
            vec![]
        } else {
            vec![(0, body)]
        };
        r.first_byte_ns = 0;
        r.end_ns = 0;
    }
    ex
}

fuzz_target!(|data: &[u8]| {
    let input = TwoSided::parse(data);
    let whole = reassemble(&[input.client], &[input.server]);
    let mut splitter = Splitter::new(input.seed);
    let client = splitter.split(input.client);
    let server = splitter.split(input.server);
    let split = reassemble(&client, &server);
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "split feed gave other exchanges"),
        (Err(_), Err(_)) => {}
        _ => panic!("whole feed gave {whole:?}, split feed gave {split:?}"),
    }
});
