//! Replay trust for the JVM end to end: a Java `HttpClient` program
//! (`tests/clients/java/Client.java`, run by Debian's `default-jdk-headless` through the
//! single-file source launcher) reads its trust only from the JVM's truststore, never from
//! `SSL_CERT_FILE`. `replayd --on-miss record -- java Client.java` records its plain and
//! streamed chat completions from the fake provider, then an offline `replayd -- java
//! Client.java` answers them from the recording; both runs reach replayd's TLS only because
//! replayd hands the JVM a truststore with the replay CA through `JAVA_TOOL_OPTIONS`, and the
//! replayed output is byte for byte the recorded one.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use llmsim_tests::{
    FakeProvider, TestCa, TestNetns,
    flows::{replayd_command, replayd_recording_command},
    on_path, privileged, requires, run_command,
    snapshot::exchange_paths,
};

const TIMEOUT: Duration = Duration::from_secs(240);
const API_KEY: &str = "sk-proj-E2EJAVASECRET0123456789abcdef";

fn java_client() -> Vec<OsString> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/java/Client.java");
    vec![OsString::from("java"), source.into_os_string()]
}

#[test]
fn a_java_client_records_through_replayd_and_replays_offline_through_the_jvm_truststore() {
    if !privileged("replay of a Java client")
        || !requires(
            on_path("java") && on_path("keytool"),
            "replay of a Java client",
            "java and keytool are not on PATH (Debian's default-jdk-headless, scripts/setup.sh)",
        )
    {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let snapshot = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");

    // The app must reach replayd, not the fake provider; the JVM gets only what replayd
    // gives it.
    let mut cmd =
        replayd_recording_command(&netns, &ca, snapshot.path(), data.path(), &java_client());
    cmd.env("OPENAI_API_KEY", API_KEY)
        .env_remove("JAVA_TOOL_OPTIONS")
        .env_remove("OPENAI_BASE_URL");
    let recorded = run_command(cmd, "replayd --on-miss record -- java Client.java", TIMEOUT);
    assert!(recorded.status.success(), "record run failed:\n{recorded}");
    let requests = provider.requests();
    assert_eq!(requests.len(), 2, "both calls reached the provider");
    for request in &requests {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {API_KEY}").as_str()),
            "the key is forwarded as sent"
        );
    }
    let texts: Vec<&str> = recorded.stdout.lines().collect();
    assert_eq!(
        texts.iter().filter(|l| **l == "status 200").count(),
        2,
        "two answers:\n{recorded}"
    );
    assert!(
        recorded.stdout.contains("Fake openai answer nonce-"),
        "the plain answer is the provider's:\n{recorded}"
    );
    assert!(
        recorded.stdout.contains("data: [DONE]"),
        "the stream is complete:\n{recorded}"
    );
    assert!(
        recorded
            .stderr
            .contains("passed through 2 requests to the real API (2 recorded)"),
        "report:\n{recorded}"
    );
    let files = exchange_paths(snapshot.path());
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read an exchange file");
        assert!(
            !text.contains("E2EJAVASECRET"),
            "the key leaked into {}",
            file.display()
        );
    }
    drop(provider);

    // Offline, with the default --on-miss fail: the recording answers, the same bytes.
    let offline = TestNetns::offline();
    let mut cmd = replayd_command(&offline, snapshot.path(), java_client());
    cmd.env("XDG_DATA_HOME", data.path())
        .env("OPENAI_API_KEY", "sk-replay-needs-no-key")
        .env_remove("JAVA_TOOL_OPTIONS")
        .env_remove("OPENAI_BASE_URL");
    let replayed = run_command(cmd, "offline replayd -- java Client.java", TIMEOUT);
    assert!(replayed.status.success(), "replay failed:\n{replayed}");
    assert_eq!(
        replayed.stdout, recorded.stdout,
        "the replayed answers are the recorded bytes"
    );
    assert!(
        replayed.stderr.contains("served 2 requests"),
        "report:\n{replayed}"
    );
    assert!(replayed.stderr.contains(" 0 misses"), "report:\n{replayed}");
}
