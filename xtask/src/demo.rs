//! `cargo xtask demo`: the README's main job. The support-ticket triage app
//! (examples/triage, 240 LLM calls through the official `openai`, `anthropic`
//! and `google-genai` SDKs, xAI through `openai`) runs under `replayd` from its bundled recording, in a
//! network namespace with no network, no hosts mapping and no keys; then the
//! recording's report is written as HTML.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use llmsim_tests::{
    TestNetns, flows::REPLAY_API_KEYS, llmsim_agent, replayd, repo_root, run_command,
};

const STEP_TIMEOUT: Duration = Duration::from_secs(300);

pub fn run(html: &Path) -> anyhow::Result<()> {
    let root = repo_root();
    let recording = root.join("examples/triage/llmsim");
    let app = root.join("examples/triage/app.py");
    println!(
        "== replayd --in examples/triage/llmsim -- python3 examples/triage/app.py   (offline, no keys)\n"
    );
    let offline = TestNetns::offline();
    let mut replay = offline.command(replayd());
    replay
        .arg("--in")
        .arg(&recording)
        .arg("--")
        .arg("python3")
        .arg(&app);
    // The SDKs refuse to start without a key; replay needs no real one.
    replay
        .envs(REPLAY_API_KEYS.iter().copied())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let output = run_command(replay, "replay of the triage app", STEP_TIMEOUT);
    print!("{}", output.stdout);
    eprint!("{}", output.stderr);
    if !output.status.success() {
        bail!("the replay failed ({})", output.status);
    }
    if let Some(dir) = html.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut report = std::process::Command::new(llmsim_agent());
    report.arg("report").arg(&recording).arg("--html").arg(html);
    let output = run_command(report, "report of the triage recording", STEP_TIMEOUT);
    print!("\n{}", output.stdout);
    if !output.status.success() {
        bail!("the report failed ({}): {}", output.status, output.stderr);
    }
    println!("HTML report: {}", html.display());
    Ok(())
}
