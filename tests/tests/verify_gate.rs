//! `llmsim-agent verify` as a user runs it, unprivileged: a clean snapshot passes with exit 0; a
//! key planted in a body fails with exit 1 and one line naming the file and the JSON pointer,
//! without printing the key; a missing directory is exit 2.

use std::{path::Path, process::Command, time::Duration};

use llmsim_tests::{CommandOutput, llmsim_agent, repo_root, run_command};
use serde_json::Value;

const PLANTED: &str = "sk-proj-Pl4nted9Key8For7Verify6Test5xyz";

/// The complete example exchange of docs/snapshot-format.md.
fn example_exchange() -> Value {
    let doc = std::fs::read_to_string(repo_root().join("docs/snapshot-format.md"))
        .expect("docs/snapshot-format.md");
    let (_, after) = doc
        .split_once("## A complete example")
        .expect("example heading");
    let (_, block) = after.split_once("```json\n").expect("example block");
    let (example, _) = block.split_once("```").expect("block end");
    serde_json::from_str(example).expect("the example parses")
}

fn write(dir: &Path, name: &str, exchange: &Value) {
    std::fs::create_dir_all(dir.join("exchanges")).expect("exchanges dir");
    let text = serde_json::to_string_pretty(exchange).expect("JSON");
    std::fs::write(dir.join("exchanges").join(name), text).expect("write exchange");
}

fn verify(dir: &Path) -> CommandOutput {
    let mut cmd = Command::new(llmsim_agent());
    cmd.arg("verify").arg(dir);
    run_command(cmd, "llmsim-agent verify", Duration::from_secs(60))
}

#[test]
fn verify_passes_a_clean_snapshot_and_catches_a_planted_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut exchange = example_exchange();
    write(
        dir.path(),
        "000003-anthropic-post-v1-messages.json",
        &exchange,
    );
    let clean = verify(dir.path());
    clean.assert_success();
    assert_eq!(
        clean.stdout.trim(),
        "verify: 1 exchange file, no problems",
        "{clean}"
    );

    exchange["seq"] = 4.into();
    exchange["request"]["body"]["json"]["messages"][0]["content"] =
        format!("Say hi. My key is {PLANTED}").into();
    write(
        dir.path(),
        "000004-anthropic-post-v1-messages.json",
        &exchange,
    );
    let dirty = verify(dir.path());
    assert_eq!(dirty.status.code(), Some(1), "{dirty}");
    let lines: Vec<&str> = dirty.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one problem line and the summary:\n{dirty}");
    assert!(
        lines[0].contains("000004-anthropic-post-v1-messages.json")
            && lines[0].contains("secret in request body /messages/0/content"),
        "{dirty}"
    );
    assert_eq!(lines[1], "verify: 2 exchange files, 1 problem (1 secret)");
    assert!(
        !dirty.stdout.contains(PLANTED) && !dirty.stderr.contains(PLANTED),
        "the key was printed:\n{dirty}"
    );

    let missing = verify(&dir.path().join("missing"));
    assert_eq!(missing.status.code(), Some(2), "{missing}");
}
