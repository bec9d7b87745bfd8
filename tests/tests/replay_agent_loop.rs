//! Agent-loop matching end to end: streamed tool loops (the `anthropic` SDK's messages and the
//! `openai` SDK's chat completions) whose local tool stamps every result with the current time
//! and a random reading id, so no two runs send the same conversation. Each turn's request
//! carries every earlier tool result, so without help every turn after the first would miss.
//! With `[match] mask` rules in the snapshot's `llmsim.toml` on the tool results' content, turn
//! N of the replay matches turn N of the recording, and the tool-call ids the conversation
//! carries (`toolu_...`, `call_...`) go through the signature's id normalisation. Without the
//! rules, the same replay misses on the first stamped tool result, and the miss names the field.

use std::{path::Path, process::Command, time::Duration};

use llmsim_tests::{
    ClientRun, CommandOutput, ProviderRequest,
    flows::{Recording, record_client, replay_client},
    llmsim_agent, privileged, replayd, run_command,
};
use serde_json::Value;

/// Makes the client's tool stamp its results with the time and a random id.
const STAMPED: &[(&str, &str)] = &[("TOOL_RESULT_STAMP", "1")];

/// `llmsim.toml` masking what changes per run in the tool results at `pointer`:
/// `Observed at 2025-06-01T12:34:56.789012+00:00, reading 0123456789abcdef.`
fn mask_rules(pointer: &str) -> String {
    format!(
        r#"# Tool results carry the time of the reading and a random reading id.
[match]

[[match.mask]]
pointer = "{pointer}"
pattern = '\d{{4}}-\d{{2}}-\d{{2}}T\d{{2}}:\d{{2}}:\d{{2}}(\.\d+)?(Z|[+-]\d{{2}}:\d{{2}})'

[[match.mask]]
pointer = "{pointer}"
pattern = 'reading [0-9a-f]{{16}}'
"#
    )
}

/// The tool results the app sent, in order.
fn tool_results(run: &ClientRun) -> Vec<String> {
    run.report
        .results
        .iter()
        .filter_map(|r| r.raw.get("tool_result").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

/// `replayd explain snapshot REQUEST.json` for `body` sent to `request`'s host and path.
fn explain(snapshot: &Path, request: &ProviderRequest, body: &Value) -> CommandOutput {
    let file = tempfile::NamedTempFile::new().expect("request file");
    let host = request.host.as_deref().expect("the request's Host");
    let request_file = serde_json::json!({
        "method": request.method,
        "host": host,
        "path": request.path,
        "body": body,
    });
    std::fs::write(file.path(), request_file.to_string()).expect("write the request file");
    let mut cmd = Command::new(replayd());
    cmd.arg("explain").arg(snapshot).arg(file.path());
    run_command(cmd, "replayd explain", Duration::from_secs(60))
}

/// Tool-call ids are matched by their order of appearance, not their value: the last turn's
/// recorded request with every tool-call id replaced by a fresh one (as a live rerun of the
/// loop would get) still matches the last recording; with the third call's id replaced by the
/// first call's, the conversation no longer has the recorded shape and misses.
fn tool_ids_match_by_order(snapshot: &Path, recording: &Recording) {
    let ids: Vec<String> = recording
        .run
        .report
        .results
        .iter()
        .filter_map(|r| r.tool_call["id"].as_str())
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 3, "{}", recording.run.output);
    let last = recording.served.last().expect("a recorded request");
    let text = last.body.to_string();
    for id in &ids {
        assert!(text.contains(id.as_str()), "the last turn carries {id}");
    }
    let renamed = |map: &dyn Fn(usize, &str) -> String| -> Value {
        let mut text = text.clone();
        for (i, id) in ids.iter().enumerate() {
            text = text.replace(id.as_str(), &map(i, id));
        }
        serde_json::from_str(&text).expect("still JSON")
    };

    let fresh = renamed(&|i, id| {
        let prefix: String = id.chars().take_while(|c| *c != '_').collect();
        format!("{prefix}_FreshRerunId{i}x{}", "0".repeat(12))
    });
    let output = explain(snapshot, last, &fresh);
    assert!(
        output.status.success() && output.stdout.starts_with("match: "),
        "fresh tool-call ids must still match:\n{output}"
    );
    let file = format!("{:06}-", recording.served.len());
    assert!(
        output.stdout.contains(&file),
        "the last turn matches the last recording ({file}...):\n{output}"
    );

    let reused = renamed(&|i, id| {
        if i == 2 {
            ids[0].clone()
        } else {
            id.to_owned()
        }
    });
    let output = explain(snapshot, last, &reused);
    assert!(
        !output.status.success() && output.stdout.starts_with("miss: "),
        "reusing the first tool-call id for the third call must miss:\n{output}"
    );
}

fn replay(snapshot: &Path, client: &str) -> CommandOutput {
    replay_client(snapshot, &["--repeat", "fail"], client, STAMPED)
}

/// Records `client`'s stamped tool loop; replays it without mask rules (a miss at
/// `missed_field`), then with rules masking the stamps at `mask_pointer` (no misses).
fn tool_loop_replays_only_with_a_mask_rule(client: &str, mask_pointer: &str, missed_field: &str) {
    let snapshot = tempfile::tempdir().expect("tempdir");
    let recording = record_client(client, STAMPED, snapshot.path());
    let recorded_results = tool_results(&recording.run);
    assert_eq!(recorded_results.len(), 3, "{}", recording.run.output);
    assert!(
        recorded_results.iter().all(|r| r.contains("Observed at ")),
        "{recorded_results:?}"
    );
    assert_eq!(recording.served.len(), 6);

    // Without the rule: the first call matches, the second carries the first stamped tool
    // result and misses; the diff points at the tool result's content.
    let output = replay(snapshot.path(), client);
    assert!(
        !output.status.success(),
        "without a mask rule the stamped tool result must miss:\n{output}"
    );
    let report = &output.stderr;
    assert!(
        report.contains("served 1 requests (0 repeats), 1 misses"),
        "only the first turn matches:\n{output}"
    );
    assert!(
        report.contains(&format!("{missed_field}: recorded")) && report.contains("Observed at"),
        "the miss names the tool result:\n{output}"
    );

    // With the rule, every turn matches its recorded turn.
    std::fs::write(
        snapshot.path().join("llmsim.toml"),
        mask_rules(mask_pointer),
    )
    .expect("write llmsim.toml");
    let output = replay(snapshot.path(), client);
    assert!(
        output.status.success(),
        "replay with the mask rule failed:\n{output}"
    );
    assert!(
        output
            .stderr
            .contains("served 6 requests (0 repeats), 0 misses"),
        "{output}"
    );
    let replayed = ClientRun::finish(output);
    assert_eq!(
        replayed.answers(),
        recording.run.answers(),
        "turn N of the replay must get turn N's recorded answer"
    );
    // The tool really did produce different results this time: the same cities (the recorded
    // tool inputs), a different time and reading id.
    let replayed_results = tool_results(&replayed);
    assert_eq!(replayed_results.len(), 3);
    for (recorded, replayed) in recorded_results.iter().zip(&replayed_results) {
        assert_ne!(
            recorded, replayed,
            "the tool result must change between runs"
        );
        let city = |r: &str| r.split(" Observed at ").next().map(str::to_owned);
        assert_eq!(city(recorded), city(replayed));
    }

    tool_ids_match_by_order(snapshot.path(), &recording);

    // The snapshot with its match rules is still a clean one.
    let mut cmd = Command::new(llmsim_agent());
    cmd.arg("verify").arg(snapshot.path());
    let output = run_command(cmd, "llmsim-agent verify", Duration::from_secs(60));
    output.assert_success();
    assert!(output.stdout.contains("no problems"), "{output}");
}

#[test]
fn an_anthropic_tool_loop_with_fresh_timestamps_replays_with_a_mask_rule() {
    if privileged("replay of an anthropic-python agent loop with timestamped tool results") {
        // messages[2] is the user turn holding the first tool_result block.
        tool_loop_replays_only_with_a_mask_rule(
            "anthropic_tool_loop.py",
            "/messages/*/content/*/content",
            "/messages/2/content/0/content",
        );
    }
}

#[test]
fn an_openai_chat_tool_loop_with_fresh_timestamps_replays_with_a_mask_rule() {
    if privileged("replay of an openai-python agent loop with timestamped tool results") {
        // messages[2] is the first `tool` message.
        tool_loop_replays_only_with_a_mask_rule(
            "openai_tool_loop.py",
            "/messages/*/content",
            "/messages/2/content",
        );
    }
}
