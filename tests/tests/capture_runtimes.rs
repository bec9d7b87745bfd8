//! JavaScript runtimes without a probeable TLS library, under capture. Bun (npm package
//! `bun`, pinned in `tests/clients/package.json`) links `BoringSSL` in with hidden symbols:
//! neither `.dynsym` nor its small `.symtab` names `SSL_read` or `SSL_write`, so no probe can
//! be placed without guessing, and none is. Deno (npm package `deno`) is a stripped release
//! build on rustls. The `fetch` of `tests/clients/node_fetch.mjs` run by each (trusting the
//! test CA through `NODE_EXTRA_CA_CERTS` or `DENO_CERT`) to the fake provider records
//! nothing, and every connection it made is listed in the coverage report with its reason
//! (`BoringSSL linked in without symbols`, `rustls`), hint, SNI, peer and executable.

mod capture_support;

use std::{process::Command, time::Duration};

use capture_support::assert_not_decrypted;

use llmsim_tests::{
    FakeProvider, TestCa, TestNetns, configure_client_env, js_runtime_fetch, llmsim_agent, npm_bin,
    run_command,
};
use serde_json::Value;

#[test]
fn a_bun_fetch_is_listed_as_not_decrypted_with_the_boringssl_reason() {
    is_listed(
        "bun",
        &[],
        "BoringSSL linked in without symbols: SSL_read and SSL_write cannot be located",
        "record it through replayd: `replayd --on-miss record -- CMD`",
    );
}

#[test]
fn a_deno_fetch_is_listed_as_not_decrypted_with_the_rustls_reason() {
    is_listed(
        "deno",
        &["run", "--allow-env", "--allow-net"],
        "rustls",
        "build the program with its symbols kept, or record it through replayd: `replayd --on-miss record -- CMD`",
    );
}

/// Captures `node_fetch.mjs` run by the runtime `name` (with `args` before the script) and
/// checks that nothing is recorded and every connection is listed with `reason` and `hint`.
fn is_listed(name: &str, args: &[&str], reason: &str, hint: &str) {
    let Some(client) = js_runtime_fetch(name, args, &format!("{name} capture coverage")) else {
        return;
    };
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let work = tempfile::tempdir().expect("tempdir");
    let out = work.path().join("snapshot");
    let mut cmd = Command::new(llmsim_agent());
    cmd.arg("capture")
        .arg("--out")
        .arg(&out)
        .arg("--json")
        .arg("--")
        .args(netns.exec_prefix())
        .args(&client);
    configure_client_env(&mut cmd, &ca);
    cmd.env("DENO_CERT", ca.bundle_path())
        .env("DENO_NO_UPDATE_CHECK", "1");
    let output = run_command(cmd, &format!("capture of {name}"), Duration::from_secs(240));
    assert!(output.status.success(), "{output}");
    let at = output.stdout.rfind("\n{").map_or(0, |i| i + 1);
    let summary: Value = serde_json::from_str(&output.stdout[at..])
        .unwrap_or_else(|e| panic!("agent summary is not JSON ({e}):\n{output}"));
    assert_eq!(summary["exit_code"], 0, "{name}'s fetch failed:\n{output}");
    assert_eq!(
        provider.requests().len(),
        2,
        "both calls reached the provider:\n{output}"
    );
    assert_eq!(summary["exchanges_written"], 0, "{output}");
    let listed = summary["not_decrypted"]
        .as_array()
        .unwrap_or_else(|| panic!("no not_decrypted array:\n{output}"));
    assert!(
        !listed.is_empty(),
        "{name}'s connections are not listed:\n{output}"
    );
    let exe = std::fs::canonicalize(npm_bin(name)).expect("the runtime's executable");
    for entry in listed {
        assert_not_decrypted(entry, reason, "api.openai.com", &exe, &provider);
        assert_eq!(entry["hint"], hint, "{entry}");
    }
    assert!(
        output.stderr.contains(&format!(
            "(SNI api.openai.com): {reason}\nllmsim-agent:     hint: {hint}"
        )),
        "{output}"
    );
}
