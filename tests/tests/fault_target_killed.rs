//! The captured app killed with SIGKILL in the middle of a streamed answer: the exchange is
//! written flagged incomplete, never as a whole one, and the capture's summary counts it so.
//! The fake provider sends an event every 300 ms; the app is killed 1 s after the provider got
//! its request, so some events reached it and the rest never did.

mod capture_support;

use std::{process::Stdio, time::Duration};

use capture_support::{Agent, TIMEOUT, command_args, exchanges, figure, poll, wait_gone};
use llmsim_tests::{FakeProvider, FakeProviderConfig, TestCa, TestNetns, privileged};

#[test]
fn an_app_killed_mid_stream_leaves_its_exchange_flagged_incomplete() {
    if !privileged("SIGKILL of the captured app mid-stream") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start_with(
        &netns,
        &ca,
        &FakeProviderConfig {
            event_delay: Duration::from_millis(300),
            ..FakeProviderConfig::default()
        },
    );
    let out = tempfile::tempdir().expect("tempdir");
    let mut agent = Agent::spawn_with(
        out.path(),
        &ca,
        &command_args(&netns, "openai_steps.py"),
        |cmd| {
            cmd.stdin(Stdio::piped());
        },
    );
    agent.wait_started();
    let ready = agent
        .stdout
        .wait_for(|l| l.starts_with("ready "), TIMEOUT, String::new);
    let app_pid: u32 = ready["ready ".len()..].parse().expect("app pid");

    agent.send_line("stream");
    poll("the provider got the request", TIMEOUT, || {
        (!provider.requests().is_empty()).then_some(())
    });
    // Not a synchronisation: it places the kill after the first events, and whatever it
    // lands on, the answer is cut short.
    std::thread::sleep(Duration::from_secs(1));
    let status = std::process::Command::new("kill")
        .args(["-KILL", &app_pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_gone(app_pid, "the killed app", TIMEOUT);

    let finished = agent.finish();
    // The capture passes on the app's end: killed by signal 9.
    assert_eq!(finished.status.code(), Some(137), "{}", finished.dump());
    assert_eq!(finished.summary["exit_code"], 137, "{}", finished.dump());

    let recorded = exchanges(out.path());
    assert_eq!(
        figure(&finished.summary, "exchanges_written"),
        recorded.len() as u64,
        "{}",
        finished.dump()
    );
    assert_eq!(recorded.len(), 1, "{}", finished.dump());
    let exchange = &recorded[0];
    assert!(
        exchange["incomplete"].is_string(),
        "an answer cut short is written as a whole one: {exchange:#}"
    );
    assert_eq!(
        figure(&finished.summary, "exchanges_incomplete"),
        1,
        "{}",
        finished.dump()
    );
    let events = exchange["response"]["body"]["events"]
        .as_array()
        .expect("a streamed answer");
    assert!(
        !events.is_empty() && events.iter().all(|e| e["data"] != "[DONE]"),
        "the answer holds its first events and not its end: {exchange:#}"
    );
}
