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

use llmsim_tests::{flows::record_then_replay_through_replayd, on_path, privileged, requires};

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
    // The JVM gets only the trust replayd gives it.
    let runs = record_then_replay_through_replayd(
        &java_client(),
        "E2EJAVASECRET",
        &[],
        &["JAVA_TOOL_OPTIONS"],
    );
    let recorded = &runs.recorded;
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
}
