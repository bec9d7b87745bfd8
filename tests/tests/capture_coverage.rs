//! Capture's coverage report end to end: a Java `HttpClient` program
//! (`tests/clients/java/Client.java`, Debian's `default-jdk-headless`) talks HTTPS to the fake
//! provider under its real host name, trusting the test CA through a truststore of its own.
//! Its TLS is JSSE, Java code inside the JVM, which no probe decrypts: `llmsim-agent capture`
//! lists the connection under "TLS connections not decrypted" and in `--json`'s
//! `not_decrypted`, with the JVM reason, the `ClientHello`'s server name and the peer the
//! socket connected to. An OpenSSL client (openai-python) captured the same way is decrypted,
//! and listed nowhere.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use llmsim_tests::{
    CommandOutput, FakeProvider, TestCa, TestNetns, configure_client_env, llmsim_agent,
    netns_client_argv, on_path, privileged, requires, run_command,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(240);

/// `llmsim-agent capture --json -- ARGV` with the client environment; the agent's JSON
/// summary (the last object on stdout) and the whole output.
fn capture(
    ca: &TestCa,
    out: &Path,
    argv: Vec<OsString>,
    env: &[(&str, OsString)],
) -> (Value, CommandOutput) {
    let mut cmd = Command::new(llmsim_agent());
    cmd.arg("capture")
        .arg("--out")
        .arg(out)
        .arg("--json")
        .arg("--")
        .args(argv);
    configure_client_env(&mut cmd, ca);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let output = run_command(cmd, "capture", TIMEOUT);
    let at = output.stdout.rfind("\n{").map_or(0, |i| i + 1);
    let summary: Value = serde_json::from_str(&output.stdout[at..])
        .unwrap_or_else(|e| panic!("agent summary is not JSON ({e}):\n{output}"));
    assert_eq!(summary["exit_code"], 0, "the client failed:\n{output}");
    (summary, output)
}

/// A PKCS12 truststore in `dir` holding the test CA, for `-Djavax.net.ssl.trustStore`.
fn java_truststore(ca: &TestCa, dir: &Path) -> PathBuf {
    let truststore = dir.join("truststore.p12");
    let keytool = run_command(
        {
            let mut cmd = Command::new("keytool");
            cmd.args([
                "-importcert",
                "-noprompt",
                "-alias",
                "llmsim-test-ca",
                "-storetype",
                "PKCS12",
            ])
            .args(["-storepass", "changeit", "-file"])
            .arg(ca.ca_cert_path())
            .arg("-keystore")
            .arg(&truststore);
            cmd
        },
        "keytool -importcert",
        TIMEOUT,
    );
    assert!(keytool.status.success(), "keytool failed:\n{keytool}");

    truststore
}

#[test]
fn a_jvm_connection_is_listed_as_not_decrypted_and_an_openssl_one_is_not() {
    if !privileged("capture's coverage report")
        || !requires(
            on_path("java") && on_path("keytool"),
            "capture's coverage report of a Java client",
            "java and keytool are not on PATH (Debian's default-jdk-headless, scripts/setup.sh)",
        )
    {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let work = tempfile::tempdir().expect("tempdir");
    let truststore = java_truststore(&ca, work.path());
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/java/Client.java");
    let mut argv = netns.exec_prefix();
    argv.extend([OsString::from("java"), source.into_os_string()]);
    let mut options =
        OsString::from("-Djavax.net.ssl.trustStorePassword=changeit -Djavax.net.ssl.trustStore=");
    options.push(&truststore);
    let out = work.path().join("java-snapshot");
    let (summary, output) = capture(&ca, &out, argv, &[("JAVA_TOOL_OPTIONS", options)]);
    assert_eq!(
        provider.requests().len(),
        2,
        "both calls reached the provider:\n{output}"
    );
    let listed = summary["not_decrypted"]
        .as_array()
        .unwrap_or_else(|| panic!("no not_decrypted array:\n{output}"));
    assert!(
        !listed.is_empty(),
        "the JVM's connection is not listed:\n{output}"
    );
    for entry in listed {
        assert_eq!(
            entry["reason"], "JVM (JSSE): TLS inside the JVM",
            "{entry}\n{output}"
        );
        assert_eq!(
            entry["hint"], "record it through replayd: `replayd --on-miss record -- CMD`",
            "{entry}"
        );
        assert_eq!(entry["sni"], "api.openai.com", "{entry}");
        assert_eq!(entry["command"], "java", "{entry}");
        assert!(
            entry["exe"]
                .as_str()
                .is_some_and(|exe| exe.ends_with("/java")),
            "{entry}"
        );
        let peer: std::net::SocketAddr = entry["peer"]
            .as_str()
            .and_then(|peer| peer.parse().ok())
            .unwrap_or_else(|| panic!("peer is not an address: {entry}"));
        assert!(
            provider.addrs().contains(&peer),
            "peer {peer} is not the provider's {:?}",
            provider.addrs()
        );
        assert!(entry["pid"].as_u64().is_some_and(|pid| pid > 0), "{entry}");
    }
    assert!(
        output
            .stderr
            .contains(&format!("TLS connections not decrypted: {}", listed.len())),
        "{output}"
    );
    assert!(
        output
            .stderr
            .contains("(SNI api.openai.com): JVM (JSSE): TLS inside the JVM"),
        "{output}"
    );
    assert!(
        output
            .stderr
            .contains("hint: record it through replayd: `replayd --on-miss record -- CMD`"),
        "{output}"
    );

    let out = work.path().join("python-snapshot");
    let (summary, output) = capture(&ca, &out, netns_client_argv(&netns, "openai_chat.py"), &[]);
    assert_eq!(summary["exchanges_written"], 2, "{output}");
    assert_eq!(
        summary["not_decrypted"],
        Value::Array(Vec::new()),
        "an OpenSSL connection is decrypted:\n{output}"
    );
    assert!(!output.stderr.contains("not decrypted"), "{output}");
}
