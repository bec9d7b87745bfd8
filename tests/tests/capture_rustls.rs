//! rustls capture end to end: a Rust client on rustls (`llmsim-rustls-client`, a bin target
//! of this crate, built and locked with the workspace) talks HTTP/1.1 to the fake provider
//! under its real host name (TLS on loopback in a namespace of its own, trusting the test CA
//! only), a chat completion and a streamed one on one kept-alive connection. With its
//! symbols, `llmsim-agent capture -- CMD` reads its plaintext at rustls's `Writer::write` and
//! `Reader::read`: bodies byte-equal to what the provider received and sent and to what the
//! client sent and read, the SSE events complete and in order, no key on disk, the peer the
//! provider's socket, no drops, and nothing listed as not decrypted; the recording replays
//! offline (`replayd -- CMD`, the client trusting the replay CA through `SSL_CERT_FILE`) to the
//! same bytes. Stripped (`strip` into a temporary file), the same client records nothing and
//! its connection is listed in the coverage report with the reason rustls.

mod capture_support;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use capture_support::{
    Agent, Finished, assert_bodies_as_exchanged, assert_keys_absent, assert_no_events_dropped,
    assert_not_decrypted, assert_paced_sse, exchanges, figure,
};
use llmsim_tests::{
    FakeProvider, TestCa, TestNetns,
    flows::{REPLAY_API_KEY, replayd_command},
    on_path, privileged, requires, run_command, stripped_copy,
};
use serde_json::Value;

const HOST: &str = "api.openai.com";

/// The client as built with the workspace (debug, with its symbols).
fn client() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_llmsim-rustls-client"))
}

/// `llmsim-agent capture --json -- ip netns exec NAME CLIENT api.openai.com`, to its end.
fn capture(netns: &TestNetns, ca: &TestCa, out: &Path, client: &Path) -> Finished {
    let mut args = vec![OsString::from("--")];
    args.extend(netns.exec_prefix());
    args.extend([client.into(), OsString::from(HOST)]);
    let agent = Agent::spawn_with(out, ca, &args, |_| {});
    agent.wait_started();
    agent.finish()
}

/// The client's own report: its `results`.
fn client_results(finished: &Finished) -> Vec<Value> {
    let report = finished
        .command_stdout()
        .iter()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("no client report\n{}", finished.dump()));
    let results = report["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 2, "{report}");
    for result in &results {
        assert!(
            result.get("error").is_none(),
            "the rustls client failed: {result}\n{}",
            finished.dump()
        );
    }
    results
}

#[test]
fn a_rustls_client_with_symbols_is_captured_and_replayed() {
    if !privileged("rustls capture") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");
    let finished = capture(&netns, &ca, out.path(), &client());
    assert!(finished.status.success(), "{}", finished.dump());
    assert_eq!(finished.summary["exit_code"], 0, "{}", finished.dump());
    let results = client_results(&finished);

    let recorded = exchanges(out.path());
    assert_eq!(recorded.len(), 2, "{}", finished.dump());
    let served = provider.requests();
    assert_eq!(served.len(), 2);
    for (i, exchange) in recorded.iter().enumerate() {
        assert_eq!(exchange["provider"], "openai", "{exchange:#}");
        assert_eq!(exchange["host"], HOST);
        assert_eq!(exchange["scheme"], "https");
        assert_eq!(exchange["request"]["method"], "POST");
        assert_eq!(exchange["request"]["path"], "/v1/chat/completions");
        assert_eq!(exchange["response"]["status"], 200);
        assert!(exchange["incomplete"].is_null(), "{exchange:#}");
        assert_eq!(exchange["streamed"], i == 1);
        // The socket the plaintext was attributed to: the provider's.
        let peer: std::net::SocketAddr = exchange["peer"]
            .as_str()
            .and_then(|peer| peer.parse().ok())
            .unwrap_or_else(|| panic!("no peer: {exchange:#}"));
        assert!(
            provider.addrs().contains(&peer),
            "peer {peer} is not the provider's {:?}",
            provider.addrs()
        );
        assert_bodies_as_exchanged(i, exchange, &results[i], &served[i]);
    }
    assert_paced_sse(&recorded[1]);
    assert_keys_absent(out.path());
    assert_eq!(figure(&finished.summary, "exchanges_incomplete"), 0);
    assert_no_events_dropped(&finished);
    assert_eq!(
        finished.summary["not_decrypted"],
        Value::Array(Vec::new()),
        "{}",
        finished.dump()
    );
    let probes = finished.summary["probes"].as_array().expect("probes");
    let rustls = probes
        .iter()
        .find(|p| p["placement"] == "rustls")
        .unwrap_or_else(|| panic!("no rustls probes in the summary\n{}", finished.dump()));
    assert_eq!(rustls["object"], "llmsim-rustls-client", "{rustls}");

    // A fresh namespace with no provider: only replayd answers.
    let offline = TestNetns::offline();
    let mut cmd = replayd_command(
        &offline,
        out.path(),
        [client().into(), OsString::from(HOST)],
    );
    cmd.env(REPLAY_API_KEY.0, REPLAY_API_KEY.1);
    let output = run_command(cmd, "replay of the rustls client", Duration::from_secs(120));
    assert!(output.status.success(), "{output}");
    let replayed = output
        .stdout
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("no client report from the replay\n{output}"));
    let replayed = replayed["results"].as_array().expect("results");
    assert_eq!(replayed.len(), results.len());
    for (got, recorded) in replayed.iter().zip(&results) {
        assert!(got.get("error").is_none(), "{got}\n{output}");
        assert_eq!(got["sent"], recorded["sent"]);
        assert_eq!(got["received"], recorded["received"], "the same bytes");
    }
}

#[test]
fn a_stripped_rustls_client_is_listed_as_not_decrypted() {
    if !privileged("rustls coverage report")
        || !requires(
            on_path("strip"),
            "rustls coverage report",
            "needs strip (Debian's binutils, scripts/setup.sh)",
        )
    {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let stripped = stripped_copy(&client(), work.path());
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let out = work.path().join("snapshot");
    let finished = capture(&netns, &ca, &out, &stripped);
    assert!(finished.status.success(), "{}", finished.dump());
    client_results(&finished);
    assert_eq!(provider.requests().len(), 2, "{}", finished.dump());
    assert_eq!(
        figure(&finished.summary, "exchanges_written"),
        0,
        "{}",
        finished.dump()
    );
    let listed = finished.summary["not_decrypted"]
        .as_array()
        .unwrap_or_else(|| panic!("no not_decrypted array\n{}", finished.dump()));
    assert_eq!(listed.len(), 1, "one connection\n{}", finished.dump());
    let entry = &listed[0];
    assert_not_decrypted(entry, "rustls", HOST, &stripped, &provider);
    assert_eq!(
        entry["hint"],
        "build the program with its symbols kept, or record it through replayd: `replayd --on-miss record -- CMD`",
        "{entry}"
    );
    assert!(
        finished
            .stderr
            .iter()
            .any(|l| l.contains(&format!("(SNI {HOST}): rustls"))),
        "{}",
        finished.dump()
    );
}
