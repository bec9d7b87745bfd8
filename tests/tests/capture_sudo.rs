//! Under sudo, `-- CMD` runs as the invoking user (`SUDO_UID`/`SUDO_GID`, that user's groups,
//! `HOME`, `USER`, `LOGNAME`), not as root, and is still captured; `--as-root` keeps root. The
//! snapshot the agent creates belongs to that user too. The tests set the variables sudo would
//! set, for the `nobody` user, and run as root themselves.

mod capture_support;

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use capture_support::{Agent, assert_summary_matches_disk, exchanges};
use llmsim_tests::{FakeProvider, FakeProviderConfig, TEST_API_KEYS, TestCa, privileged};

const NOBODY: &str = "65534";

/// The name and home directory of uid 65534, from /etc/passwd.
fn nobody() -> (String, String) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() > 5 && fields[2] == NOBODY)
        .map(|fields| (fields[0].to_owned(), fields[5].to_owned()))
        .expect("a user with uid 65534")
}

fn as_sudo(cmd: &mut std::process::Command) {
    cmd.env("SUDO_UID", NOBODY)
        .env("SUDO_GID", NOBODY)
        .env("SUDO_USER", "someone")
        .env("HOME", "/root")
        .env("USER", "root");
}

fn run_id(ca: &TestCa, extra: &[&str]) -> Vec<String> {
    let out = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<OsString> = extra.iter().map(OsString::from).collect();
    args.extend([
        "--".into(),
        "sh".into(),
        "-c".into(),
        r#"id -u; id -g; id -G; echo "$USER $HOME""#.into(),
    ]);
    let agent = Agent::spawn_with(out.path(), ca, &args, as_sudo);
    let finished = agent.finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert_eq!(finished.summary["exit_code"], 0, "{}", finished.dump());
    finished
        .command_stdout()
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

#[test]
fn under_sudo_the_command_runs_as_the_invoking_user() {
    if !privileged("capture under sudo") {
        return;
    }
    let ca = TestCa::new();
    let (name, home) = nobody();
    let lines = run_id(&ca, &[]);
    assert_eq!(
        lines,
        [
            NOBODY.to_owned(),
            NOBODY.to_owned(),
            NOBODY.to_owned(),
            format!("{name} {home}")
        ],
        "uid, gid, groups (root's are dropped), USER and HOME"
    );
}

#[test]
fn as_root_keeps_root_under_sudo() {
    if !privileged("capture --as-root under sudo") {
        return;
    }
    let ca = TestCa::new();
    let lines = run_id(&ca, &["--as-root"]);
    assert_eq!(lines[..2], ["0", "0"], "{lines:?}");
}

#[test]
fn a_command_run_as_the_invoking_user_is_captured() {
    if !privileged("capture of a command run as the invoking user") {
        return;
    }
    let ca = TestCa::new();
    let provider = FakeProvider::start_on_loopback(Some(&ca), &FakeProviderConfig::default());
    // The CA lives in a private directory: give nobody a readable copy.
    let public = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let ca_file = public.path().join("ca.pem");
    std::fs::copy(ca.ca_cert_path(), &ca_file).expect("copy CA");
    std::fs::set_permissions(&ca_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let key = TEST_API_KEYS[0].1;

    let parent = tempfile::tempdir().expect("tempdir");
    let out = parent.path().join("llmsim");
    let url = format!("{}/v1/chat/completions", provider.origin());
    let body =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello from nobody."}]}"#;
    let args: Vec<OsString> = vec![
        "--any-host".into(),
        "--".into(),
        "curl".into(),
        "-sS".into(),
        "--fail".into(),
        "--cacert".into(),
        ca_file.into(),
        "-H".into(),
        format!("Authorization: Bearer {key}").into(),
        "-H".into(),
        "Content-Type: application/json".into(),
        "-d".into(),
        body.into(),
        url.into(),
    ];
    let finished = Agent::spawn_with(&out, &ca, &args, as_sudo).finish();
    assert!(finished.status.success(), "{}", finished.dump());
    assert_eq!(finished.summary["exit_code"], 0, "{}", finished.dump());

    let served = provider.requests();
    assert_eq!(served.len(), 1);
    let recorded = exchanges(&out);
    assert_eq!(recorded.len(), 1, "{}", finished.dump());
    let exchange = &recorded[0];
    assert_eq!(exchange["process"]["comm"], "curl");
    // The snapshot belongs to the invoking user, who edits and commits it without root.
    let files = std::fs::read_dir(out.join("exchanges"))
        .expect("exchanges/")
        .map(|e| e.expect("entry").path());
    for path in [out.clone(), out.join("exchanges")]
        .into_iter()
        .chain(files)
    {
        let meta = std::fs::metadata(&path).expect("metadata");
        assert_eq!(
            (meta.uid().to_string(), meta.gid().to_string()),
            (NOBODY.to_owned(), NOBODY.to_owned()),
            "owner of {}",
            path.display()
        );
    }
    assert_eq!(exchange["request"]["body"]["json"], served[0].body);
    served[0].assert_recorded_as_sent(exchange);
    assert!(exchange["incomplete"].is_null(), "{exchange:#}");
    let nonce = served[0].nonce.as_deref().expect("nonce");
    assert!(exchange["response"]["body"].to_string().contains(nonce));
    assert!(
        !exchange.to_string().contains(key),
        "the key reached the snapshot"
    );
    assert_summary_matches_disk(&finished, &out);
}
