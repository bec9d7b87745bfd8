//! `replayd --pace model`: 500 streams served from a recording of 41 streams whose times
//! to first token and tokens per second spread around known medians; the served streams'
//! medians, measured at the client, are within 10% of the recording's. Needs no root.

mod load_support;

use std::time::Duration;

use llmsim_tests::snapshot::write_exchanges;
use load_support::{Replayd, chat_request, chat_stream, post_bytes, stream_arrivals};

/// Recorded streams.
const RECORDED: u32 = 41;
/// Output tokens of every recorded stream.
const TOKENS: u64 = 20;
/// Served streams, and the clients sending them at once.
const SERVED: usize = 500;
const CLIENTS: usize = 50;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Recording `i`: first event at 100 + 5i ms, ten events over 200 + 10i ms. Long enough
/// that a client thread kept a few milliseconds from a CPU does not move the medians.
fn recorded(i: u32) -> (f64, f64) {
    let i = f64::from(i);
    (100.0 + 5.0 * i, 200.0 + 10.0 * i)
}

#[test]
fn model_pace_serves_the_recorded_median_latencies() {
    let snapshot = tempfile::tempdir().expect("tempdir");
    let words = ["w"; 10];
    write_exchanges(
        snapshot.path(),
        (0..RECORDED).map(|i| {
            let (ttft, span) = recorded(i);
            let offsets: Vec<f64> = (0..10).map(|k| ttft + span * f64::from(k) / 9.0).collect();
            chat_stream(&format!("p{i}"), &words, &offsets, TOKENS)
        }),
    );
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let tokens = TOKENS as f64;
    let recorded_ttft = median((0..RECORDED).map(|i| recorded(i).0).collect());
    let recorded_rate = median(
        (0..RECORDED)
            .map(|i| tokens * 1000.0 / recorded(i).1)
            .collect(),
    );

    let replay = Replayd::start(
        snapshot.path(),
        &["--pace", "model", "--repeat", "cycle", "--seed", "1"],
    );
    let addr = replay.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            std::thread::spawn(move || {
                (0..SERVED / CLIENTS)
                    .map(|k| {
                        let prompt = format!("p{}", (client * 10 + k) % RECORDED as usize);
                        let request =
                            post_bytes(addr, "/v1/chat/completions", &chat_request(&prompt, true));
                        let arrivals = stream_arrivals(addr, &request);
                        assert_eq!(arrivals.len(), 12, "ten words, usage, [DONE]");
                        let first = arrivals[0].0;
                        let last = arrivals[9].0;
                        (first, last.saturating_sub(first))
                    })
                    .collect::<Vec<(Duration, Duration)>>()
            })
        })
        .collect();
    let streams: Vec<(Duration, Duration)> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("a client"))
        .collect();
    assert_eq!(streams.len(), SERVED);
    let (code, report) = replay.stop();
    assert_eq!(code, Some(0), "{report:#?}");

    let served_ttft = median(streams.iter().map(|(t, _)| t.as_secs_f64() * 1e3).collect());
    let served_rate = median(
        streams
            .iter()
            .map(|(_, span)| tokens / span.as_secs_f64())
            .collect(),
    );
    println!(
        "time to first token: recorded median {recorded_ttft:.1} ms, served {served_ttft:.1} ms; \
         tokens/s: recorded median {recorded_rate:.1}, served {served_rate:.1}"
    );
    assert!(
        (served_ttft - recorded_ttft).abs() <= recorded_ttft * 0.1,
        "served median time to first token {served_ttft:.1} ms, recorded {recorded_ttft:.1} ms"
    );
    assert!(
        (served_rate - recorded_rate).abs() <= recorded_rate * 0.1,
        "served median rate {served_rate:.1} tokens/s, recorded {recorded_rate:.1}"
    );
    // Not the recording replayed as it was: the draws spread the timings.
    let distinct: std::collections::BTreeSet<u128> =
        streams.iter().map(|(t, _)| t.as_millis()).collect();
    assert!(distinct.len() > 30, "{distinct:?}");
}
