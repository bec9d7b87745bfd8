//! `replayd --metrics ADDR`: Prometheus metrics scraped while a stream is being served
//! (one active stream, its first event timed only once it went out), then after a run of
//! hits, injected faults and a miss, checked against replayd's own end-of-run report:
//! requests served, misses, faults by kind, answers timed, tokens. Needs no root.

mod load_support;

use std::time::{Duration, Instant};

use llmsim_tests::snapshot::write_exchanges;
use load_support::{
    OPENAI_MODEL, Replayd, chat_answer, chat_request, chat_stream, exchange_bytes, post_bytes,
    sample, split_head, stream_arrivals,
};

/// The number in a report line `prefix N suffix`.
fn number_after(report: &[String], prefix: &str) -> f64 {
    report
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no line {prefix:?} in {report:#?}"))
        .parse()
        .expect("a count")
}

/// Requests served, faults injected and misses, as the end-of-run report says.
fn report_counts(report: &[String]) -> (f64, f64, f64) {
    let misses: f64 = report
        .iter()
        .find_map(|l| l.strip_prefix("replayd: served "))
        .and_then(|l| l.rsplit(", ").next())
        .and_then(|l| l.strip_suffix(" misses"))
        .expect("the served line")
        .parse()
        .expect("a count");
    (
        number_after(report, "replayd: served "),
        number_after(report, "replayd: injected "),
        misses,
    )
}

/// Request 1: a stream, 900 ms long, watched through the metrics while it is being sent.
fn stream_while_scraping(replay: &Replayd, labels: &str) {
    let addr = replay.addr;
    let streamed = post_bytes(
        addr,
        "/v1/chat/completions",
        &chat_request("Stream hi", true),
    );
    let stream = std::thread::spawn(move || stream_arrivals(addr, &streamed));
    let deadline = Instant::now() + Duration::from_secs(10);
    let during = loop {
        let scrape = replay.scrape();
        if sample(&scrape, "llmsim_replay_active_streams") >= 1.0 {
            break scrape;
        }
        assert!(Instant::now() < deadline, "no active stream: {scrape}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        (sample(&during, "llmsim_replay_active_streams") - 1.0).abs() < f64::EPSILON,
        "{during}"
    );
    assert!(
        sample(
            &during,
            &format!("gen_ai_client_operation_duration_seconds_count{{{labels}}}")
        ) < 1.0,
        "the stream has not ended: {during}"
    );
    let events = stream.join().expect("the streaming client");
    assert_eq!(events.len(), 5, "three words, usage and [DONE]: {events:?}");
}

#[test]
fn metrics_scraped_during_a_run_agree_with_the_end_report() {
    let snapshot = tempfile::tempdir().expect("tempdir");
    write_exchanges(
        snapshot.path(),
        [
            chat_answer("Say hi", "Hi!"),
            chat_stream(
                "Stream hi",
                &["Hel", "lo", " there"],
                &[300.0, 600.0, 900.0],
                3,
            ),
        ],
    );
    let replay = Replayd::start(
        snapshot.path(),
        &["--metrics", "127.0.0.1:0", "--fault", "kind=503,every=2"],
    );
    let addr = replay.addr;
    let labels = format!("gen_ai_system=\"openai\",gen_ai_request_model=\"{OPENAI_MODEL}\"");

    stream_while_scraping(&replay, &labels);

    // Requests 2 to 6: every second one gets a 503, the miss included.
    let plain = post_bytes(addr, "/v1/chat/completions", &chat_request("Say hi", false));
    let miss = post_bytes(
        addr,
        "/v1/chat/completions",
        &chat_request("Say bye", false),
    );
    let mut statuses = Vec::new();
    for request in [&plain, &plain, &plain, &miss, &miss] {
        let (head, _) = split_head(&exchange_bytes(addr, request));
        statuses.push(head.split(' ').nth(1).unwrap_or_default().to_owned());
    }
    assert_eq!(statuses, ["503", "200", "503", "404", "503"]);

    let after = replay.scrape();
    let (code, report) = replay.stop();
    assert_eq!(code, Some(1), "a miss fails the run: {report:#?}");
    let (served, faults, misses) = report_counts(&report);
    assert_eq!((served, faults, misses), (2.0, 3.0, 1.0), "{report:#?}");
    let requests = |outcome: &str| {
        sample(
            &after,
            &format!(
                "llmsim_replay_requests_total{{provider=\"openai\",model=\"{OPENAI_MODEL}\",\
                 outcome=\"{outcome}\"}}"
            ),
        )
    };
    for (got, want, what) in [
        (requests("served"), served, "served requests"),
        (requests("fault"), faults, "requests answered by a fault"),
        (requests("miss"), misses, "misses by outcome"),
        (
            sample(&after, "llmsim_replay_misses_total"),
            misses,
            "misses",
        ),
        (
            sample(&after, "llmsim_replay_faults_total{kind=\"503\"}"),
            faults,
            "503 faults",
        ),
        (
            sample(
                &after,
                &format!("gen_ai_client_operation_duration_seconds_count{{{labels}}}"),
            ),
            served,
            "answers timed",
        ),
        (
            sample(
                &after,
                &format!("llmsim_replay_time_to_first_token_seconds_count{{{labels}}}"),
            ),
            1.0,
            "streams timed to their first event",
        ),
        (
            sample(
                &after,
                &format!("gen_ai_client_token_usage_sum{{{labels},gen_ai_token_type=\"output\"}}"),
            ),
            2.0 + 3.0,
            "recorded output tokens served",
        ),
        (
            sample(&after, "llmsim_replay_active_streams"),
            0.0,
            "active streams",
        ),
    ] {
        assert!(
            (got - want).abs() < f64::EPSILON,
            "{what}: {got} scraped, {want} in the report\n{after}"
        );
    }
    // The stream's first event went out at 300 ms at the earliest.
    let first_event_sum = sample(
        &after,
        &format!("llmsim_replay_time_to_first_token_seconds_sum{{{labels}}}"),
    );
    assert!(first_event_sum >= 0.3, "{after}");
}
