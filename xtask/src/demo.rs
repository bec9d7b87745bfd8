//! `cargo xtask demo`: the README's main job on the bundled example. It records
//! an ordinary app (the official openai SDK) talking HTTPS to the bundled fake
//! provider under api.openai.com, in a private network namespace, with
//! `llmsim-agent capture`; then replays the recording to the same app with
//! `replayd` in a namespace that has no network and no hosts mapping at all.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use llmsim_tests::{
    FakeProvider, TestCa, TestNetns, configure_client_env, llmsim_agent, netns_client_argv,
    replayd, run_command,
};

/// The bundled example app.
const EXAMPLE: &str = "openai_chat.py";
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

pub fn run(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    println!(
        "== 1. capture: llmsim-agent capture --out {} -- python3 {EXAMPLE}",
        out.display()
    );
    {
        let ca = TestCa::new();
        let netns = TestNetns::new();
        let _provider = FakeProvider::start(&netns, &ca);
        let mut capture = Command::new(llmsim_agent());
        capture
            .arg("capture")
            .arg("--out")
            .arg(out)
            .arg("--")
            .args(netns_client_argv(&netns, EXAMPLE));
        configure_client_env(&mut capture, &ca);
        let output = run_command(capture, "capture of the example", STEP_TIMEOUT);
        print!("{}", output.stdout);
        eprint!("{}", output.stderr);
        if !output.status.success() {
            bail!("the capture failed ({})", output.status);
        }
    }
    println!(
        "\n== 2. replay, offline: replayd --in {} -- python3 {EXAMPLE}",
        out.display()
    );
    let offline = TestNetns::offline();
    let mut replay = offline.command(replayd());
    replay
        .arg("--in")
        .arg(out)
        .arg("--")
        .args(llmsim_tests::client_argv(EXAMPLE));
    // The app needs a key to start; replay needs no real one.
    replay
        .env("OPENAI_API_KEY", "sk-replay-needs-no-key")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let output = run_command(replay, "replay of the example", STEP_TIMEOUT);
    print!("{}", output.stdout);
    eprint!("{}", output.stderr);
    if !output.status.success() {
        bail!("the replay failed ({})", output.status);
    }
    Ok(())
}
