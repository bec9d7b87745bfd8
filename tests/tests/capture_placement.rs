//! The three probe placements (worker, wrapper, entry; see docs/capture.md) record the same
//! bytes. Three captures, each forced to one placement through `LLMSIM_PROBE_PLACEMENT`, watch
//! one `openai_steps.py` client (`--pid`) make a plain and a streamed chat completion; their
//! snapshots are identical except for the timing fields, which come from each probe's own
//! clock reading (a worker probe fires a few instructions after an entry probe).

mod capture_support;

use std::path::Path;

use capture_support::{Agent, Finished, StepClient};
use llmsim_tests::{FakeProvider, TestCa, TestNetns, privileged};
use serde_json::Value;

/// The fields of an exchange file that record when something happened (from the probes' clock
/// readings), as paths of object keys; `[]` stands for every element of an array.
const TIMING_FIELDS: [&[&str]; 6] = [
    &["started_at"],
    &["ttfb_ms"],
    &["duration_ms"],
    &["summary", "ttft_ms"],
    &["summary", "tokens_per_second"],
    &["response", "body", "events", "[]", "offset_ms"],
];

/// Removes the field at `path` from `value`, wherever the path leads.
fn remove(value: &mut Value, path: &[&str]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match (value, *first) {
        (Value::Array(items), "[]") => items.iter_mut().for_each(|item| remove(item, rest)),
        (Value::Object(map), key) if rest.is_empty() => {
            map.remove(key);
        }
        (Value::Object(map), key) => {
            if let Some(inner) = map.get_mut(key) {
                remove(inner, rest);
            }
        }
        _ => {}
    }
}

/// Each exchange file of a snapshot, by name, without its timing fields, pretty-printed.
fn snapshot_without_timing(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("exchanges"))
        .unwrap_or_else(|e| panic!("reading {}/exchanges: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(file).expect("exchange file");
            let mut exchange: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            for path in TIMING_FIELDS {
                remove(&mut exchange, path);
            }
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            (name, serde_json::to_string_pretty(&exchange).unwrap())
        })
        .collect()
}

#[test]
fn every_forced_placement_records_the_same_snapshot() {
    if !privileged("capture with each probe placement") {
        return;
    }
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let _provider = FakeProvider::start(&netns, &ca);
    let mut client = StepClient::in_netns(&netns, &ca);
    let pid = client.pid.to_string();

    let placements = ["worker", "wrapper", "entry"];
    let outs: Vec<_> = placements
        .iter()
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let agents: Vec<Agent> = placements
        .iter()
        .zip(&outs)
        .map(|(placement, out)| {
            let agent = Agent::spawn_with(
                out.path(),
                &ca,
                &["--pid".into(), pid.clone().into()],
                |cmd| {
                    cmd.env("LLMSIM_PROBE_PLACEMENT", placement);
                },
            );
            agent.wait_started();
            agent
        })
        .collect();
    client.step("plain");
    client.step("stream");
    for agent in &agents {
        agent.wait_live_lines(2);
    }
    client.quit();

    let mut snapshots = Vec::new();
    for ((agent, placement), out) in agents.into_iter().zip(placements).zip(&outs) {
        let finished = agent.finish();
        assert!(finished.status.success(), "{}", finished.dump());
        assert_eq!(
            finished.summary["exchanges_incomplete"],
            0,
            "{}",
            finished.dump()
        );
        assert_eq!(
            finished.summary["events_dropped_total"],
            0,
            "{}",
            finished.dump()
        );
        // The placement asked for is the one used for the client's libssl, and said so.
        let libssl = libssl_probes(&finished);
        assert_eq!(libssl["placement"], placement, "{}", finished.dump());
        let line = format!(
            "llmsim-agent: {}: {}",
            libssl["object"].as_str().unwrap(),
            libssl["description"].as_str().unwrap()
        );
        assert!(
            finished.stderr.contains(&line),
            "{line:?} missing\n{}",
            finished.dump()
        );
        let snapshot = snapshot_without_timing(out.path());
        assert_eq!(snapshot.len(), 2, "{}", finished.dump());
        snapshots.push((placement, snapshot));
    }
    let (first, expected) = &snapshots[0];
    for (placement, snapshot) in &snapshots[1..] {
        for ((name, want), (other, got)) in expected.iter().zip(snapshot) {
            assert_eq!(name, other, "file names of {first} and {placement}");
            assert!(
                want == got,
                "{name} differs between {first} and {placement}:\n--- {first} ---\n{want}\n--- {placement} ---\n{got}"
            );
        }
    }
}

/// A capture whose breakpoints are in every process (`-- CMD`) also puts them into the read-only
/// mapping another agent inspects libssl through; that agent still decodes the code the file
/// holds and chooses the worker probes, not the entry probes a breakpoint byte would lead it to.
#[test]
fn a_second_capture_decodes_the_code_not_the_first_captures_breakpoints() {
    if !privileged("two captures at once") {
        return;
    }
    let ca = TestCa::new();
    let first_out = tempfile::tempdir().expect("tempdir");
    let first = Agent::start(
        first_out.path(),
        &ca,
        &["--".into(), "sleep".into(), "600".into()],
    );
    let second_out = tempfile::tempdir().expect("tempdir");
    let second = Agent::start(second_out.path(), &ca, &["--".into(), "true".into()]).finish();
    let first = first.stop("INT");
    assert!(second.status.success(), "{}", second.dump());
    for finished in [&first, &second] {
        let libssl = libssl_probes(finished);
        assert_eq!(
            libssl["description"],
            "worker probes (emulated push)",
            "{}",
            finished.dump()
        );
    }
}

/// The summary's `probes` entry of the libssl the client loaded.
fn libssl_probes(finished: &Finished) -> Value {
    finished.summary["probes"]
        .as_array()
        .expect("probes in the summary")
        .iter()
        .find(|p| {
            p["object"]
                .as_str()
                .is_some_and(|o| o.starts_with("libssl.so"))
        })
        .unwrap_or_else(|| panic!("no libssl placement\n{}", finished.dump()))
        .clone()
}
