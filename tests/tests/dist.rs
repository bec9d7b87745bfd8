//! The release artifacts (`cargo xtask dist`) work where no toolchain does: the
//! tarball, unpacked into an empty directory on a view of this machine without
//! the Rust and LLVM toolchains, and the `.deb`, installed there with `dpkg -i`,
//! each replay the triage demo offline (240 served, 0 misses, the recorded
//! output byte for byte); `scripts/install.sh` installs a tarball from a
//! loopback server and refuses a corrupted or unverifiable one with one line
//! and exit code 2; and the GitHub Action's script, run as plain bash with a
//! runner's environment, installs, caches and fails the step with replayd's exit
//! code and miss report.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use llmsim_tests::dist::{
    Artifacts, FileServer, VERSION, artifacts, can_build_artifacts, without_toolchains,
};
use llmsim_tests::{
    TestNetns, flows::REPLAY_API_KEYS, privileged, repo_root, run_command, snapshot::openai_models,
};

const TIMEOUT: Duration = Duration::from_secs(300);
const TRIAGE_SERVED: &str = "replayd: served 240 requests (0 repeats), 0 misses";

/// The release binary `name` as cargo built it for the artifacts.
fn release_binary(name: &str) -> PathBuf {
    repo_root()
        .join("target/x86_64-unknown-linux-musl/release")
        .join(name)
}

/// The triage demo under `replayd` (the program `replayd`, a path or a name on PATH), in an
/// offline namespace on a machine view without toolchains, after `setup`; checks the
/// summary line and that the app printed what the recorded run printed.
fn replay_the_triage_demo(setup: &str, replayd: &str, what: &str) {
    let triage = repo_root().join("examples/triage");
    let offline = TestNetns::offline();
    let mut cmd = without_toolchains(setup, "ip");
    cmd.args(["netns", "exec", offline.name(), replayd, "--in"])
        .arg(triage.join("llmsim"))
        .args(["--", "python3"])
        .arg(triage.join("app.py"))
        .arg("--no-timings")
        .envs(REPLAY_API_KEYS.iter().copied())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let output = run_command(cmd, what, TIMEOUT);
    assert!(output.status.success(), "{output}");
    assert!(
        output.stderr.lines().any(|line| line == TRIAGE_SERVED),
        "no `{TRIAGE_SERVED}`\n{output}"
    );
    let recorded = std::fs::read(triage.join("recorded-output.txt")).expect("recorded-output.txt");
    assert!(
        output.stdout.as_bytes() == recorded.as_slice(),
        "the replayed app printed something else than the recorded run\n{output}"
    );
}

/// Unpacks the tarball into `dir` (empty) and returns the directory it holds.
fn unpack(artifacts: &Artifacts, dir: &Path) -> PathBuf {
    let mut tar = Command::new("tar");
    tar.arg("-xzf").arg(&artifacts.tarball).arg("-C").arg(dir);
    run_command(tar, "unpacking the tarball", TIMEOUT).assert_success();
    dir.join(format!("llmsim-{VERSION}-x86_64-linux-musl"))
}

fn sha256(path: &Path) -> String {
    let mut cmd = Command::new("sha256sum");
    cmd.arg(path);
    let output = run_command(cmd, "sha256sum", TIMEOUT);
    output.assert_success();
    output
        .stdout
        .split_whitespace()
        .next()
        .expect("a checksum")
        .to_owned()
}

#[test]
fn the_unpacked_tarball_replays_the_triage_demo_without_a_toolchain() {
    if !privileged("dist tarball") || !can_build_artifacts("dist tarball") {
        return;
    }
    let artifacts = artifacts();
    let checksum = std::fs::read_to_string(&artifacts.checksum).expect("the checksum file");
    assert_eq!(
        checksum,
        format!(
            "{}  {}\n",
            sha256(&artifacts.tarball),
            artifacts.tarball_name()
        )
    );

    let empty = tempfile::tempdir().expect("tempdir");
    let tree = unpack(artifacts, empty.path());
    assert_the_tree_is_a_prefix(&tree);
    let replayd = tree.join("bin/replayd");
    let agent = tree.join("bin/llmsim-agent");
    assert_the_versions_say_commit_target_and_kernel(&replayd, &agent);
    let to_serving = time_to_serving(&replayd);
    eprintln!(
        "dist: from starting the unpacked replayd to the command running under replay: {} ms",
        to_serving.as_millis()
    );
    assert!(
        to_serving < Duration::from_secs(5),
        "replayd took {to_serving:?} to start serving"
    );
    replay_the_triage_demo(
        "",
        &replayd.display().to_string(),
        "the triage demo under the unpacked replayd",
    );
}

/// The unpacked tarball: the static release binaries, manual pages, completions, README.
fn assert_the_tree_is_a_prefix(tree: &Path) {
    let mut files: Vec<String> = walk(tree)
        .iter()
        .map(|p| {
            p.strip_prefix(tree)
                .expect("under the tree")
                .display()
                .to_string()
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "README.md",
            "bin/llmsim-agent",
            "bin/replayd",
            "share/bash-completion/completions/llmsim-agent.bash",
            "share/bash-completion/completions/replayd.bash",
            "share/fish/vendor_completions.d/llmsim-agent.fish",
            "share/fish/vendor_completions.d/replayd.fish",
            "share/man/man1/llmsim-agent-capture.1",
            "share/man/man1/llmsim-agent-coverage.1",
            "share/man/man1/llmsim-agent-export.1",
            "share/man/man1/llmsim-agent-replay.1",
            "share/man/man1/llmsim-agent-report.1",
            "share/man/man1/llmsim-agent-verify.1",
            "share/man/man1/llmsim-agent.1",
            "share/man/man1/replayd-explain.1",
            "share/man/man1/replayd-trust-install.1",
            "share/man/man1/replayd-trust-uninstall.1",
            "share/man/man1/replayd-trust.1",
            "share/man/man1/replayd.1",
            "share/zsh/site-functions/_llmsim-agent",
            "share/zsh/site-functions/_replayd",
        ]
    );
    for name in ["replayd", "llmsim-agent"] {
        let binary = tree.join("bin").join(name);
        assert_eq!(
            std::fs::read(&binary).expect("the unpacked binary"),
            std::fs::read(release_binary(name)).expect("the release binary"),
            "{name} in the tarball is not the release build"
        );
        let mut ldd = Command::new("ldd");
        ldd.arg(&binary);
        let output = run_command(ldd, "ldd", TIMEOUT);
        let text = format!("{}{}", output.stdout, output.stderr);
        assert!(
            text.contains("statically linked") || text.contains("not a dynamic executable"),
            "{name} is dynamically linked:\n{output}"
        );
    }
    let page = std::fs::read_to_string(tree.join("share/man/man1/replayd.1")).expect("man page");
    assert!(page.contains(".TH replayd 1"), "{page}");
    assert!(page.contains("\\-\\-no\\-network"), "{page}");
}

/// `--version` of each binary, from the view without toolchains.
fn assert_the_versions_say_commit_target_and_kernel(replayd: &Path, agent: &Path) {
    let commit = {
        let mut git = Command::new("git");
        git.args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(repo_root());
        let output = run_command(git, "git rev-parse", TIMEOUT);
        // Outside a git checkout the build says so.
        if output.status.success() {
            output.stdout.trim().to_owned()
        } else {
            "unknown".to_owned()
        }
    };
    for (binary, name, kernel) in [
        (
            replayd,
            "replayd",
            "kernel: Linux 5.8 or newer with cgroup v2",
        ),
        (
            agent,
            "llmsim-agent",
            "kernel: Linux 5.17 or newer with BTF",
        ),
    ] {
        let mut cmd = without_toolchains("", binary);
        cmd.arg("--version");
        let output = run_command(cmd, "--version", TIMEOUT);
        output.assert_success();
        let lines: Vec<&str> = output.stdout.lines().collect();
        assert_eq!(lines.len(), 4, "{output}");
        assert_eq!(lines[0], format!("{name} {VERSION}"), "{output}");
        assert_eq!(lines[1], format!("commit: {commit}"), "{output}");
        assert_eq!(lines[2], "target: x86_64-unknown-linux-musl", "{output}");
        assert!(lines[3].starts_with(kernel), "{output}");
    }
}

/// From starting `replayd` on the demo's snapshot to its command running under the redirect,
/// in the view without toolchains: start-up, loading the snapshot, the eBPF object and the
/// cgroup hooks, spawning the command (which prints the time it started).
fn time_to_serving(replayd: &Path) -> Duration {
    let triage = repo_root().join("examples/triage/llmsim");
    let offline = TestNetns::offline();
    let mut cmd = without_toolchains("", "ip");
    cmd.args(["netns", "exec", offline.name()])
        .arg(replayd)
        .arg("--in")
        .arg(&triage)
        .args(["--", "date", "+%s%N"]);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    let output = run_command(cmd, "replayd -- date", TIMEOUT);
    output.assert_success();
    let ran: u128 = output
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("date printed no nanoseconds ({e})\n{output}"));
    Duration::from_nanos(
        u64::try_from(ran - started.as_nanos()).expect("a duration in nanoseconds"),
    )
}

#[test]
fn the_deb_installs_with_dpkg_and_replays_the_triage_demo() {
    if !privileged("dist .deb") || !can_build_artifacts("dist .deb") {
        return;
    }
    let artifacts = artifacts();
    // dpkg -i writes /usr and /var: in the test's mount namespace those are overlays whose
    // changes land in a temporary directory, so the machine itself is left as it was.
    let layers = tempfile::tempdir().expect("tempdir");
    let quote = |path: &Path| format!("'{}'", path.display());
    let setup = format!(
        r#"
for dir in /usr /var; do
    mkdir -p {layers}$dir/upper {layers}$dir/work
    mount -t overlay llmsim-dpkg -o lowerdir=$dir,upperdir={layers}$dir/upper,workdir={layers}$dir/work $dir
done
dpkg -i {deb} >&2
dpkg-query -W -f='${{Status}} ${{Version}}\n' llmsim | grep -qx 'install ok installed {VERSION}'
test "$(command -v replayd)" = /usr/bin/replayd
test "$(command -v llmsim-agent)" = /usr/bin/llmsim-agent
cmp /usr/bin/replayd {replayd}
cmp /usr/bin/llmsim-agent {agent}
for file in /usr/share/man/man1/replayd.1.gz /usr/share/man/man1/llmsim-agent-capture.1.gz \
    /usr/share/bash-completion/completions/replayd /usr/share/zsh/vendor-completions/_replayd \
    /usr/share/fish/vendor_completions.d/replayd.fish /usr/share/doc/llmsim/copyright; do
    test -s "$file" || {{ echo "dpkg -i did not install $file" >&2; exit 1; }}
done
"#,
        layers = quote(layers.path()),
        deb = quote(&artifacts.deb),
        replayd = quote(&release_binary("replayd")),
        agent = quote(&release_binary("llmsim-agent")),
    );
    replay_the_triage_demo(
        &setup,
        "replayd",
        "the triage demo under the replayd dpkg installed",
    );
}

#[test]
fn install_sh_installs_a_verified_tarball_from_a_url() {
    if !can_build_artifacts("install.sh") {
        return;
    }
    let artifacts = artifacts();
    let server = FileServer::serve(&artifacts.dir);
    let prefix = tempfile::tempdir().expect("tempdir");
    let output = install_sh(&server.url(&artifacts.tarball_name()), prefix.path());
    output.assert_success();
    assert_eq!(
        output.stdout.lines().count(),
        1,
        "one line on success\n{output}"
    );
    for name in ["replayd", "llmsim-agent"] {
        assert_eq!(
            std::fs::read(prefix.path().join("bin").join(name)).expect("installed"),
            std::fs::read(release_binary(name)).expect("the release binary"),
            "{name} installed is not the release build"
        );
    }
    for file in [
        "share/man/man1/replayd.1",
        "share/man/man1/llmsim-agent.1",
        "share/bash-completion/completions/replayd.bash",
        "share/zsh/site-functions/_replayd",
        "share/fish/vendor_completions.d/replayd.fish",
    ] {
        assert!(prefix.path().join(file).is_file(), "no {file}\n{output}");
    }
}

#[test]
fn install_sh_refuses_a_corrupted_or_unverifiable_tarball() {
    if !can_build_artifacts("install.sh") {
        return;
    }
    let artifacts = artifacts();
    let name = artifacts.tarball_name();
    let mut tarball = std::fs::read(&artifacts.tarball).expect("the tarball");

    // One byte changed, the release's checksum file next to it.
    let corrupted = tempfile::tempdir().expect("tempdir");
    let middle = tarball.len() / 2;
    tarball[middle] ^= 0x01;
    std::fs::write(corrupted.path().join(&name), &tarball).expect("write");
    std::fs::copy(
        &artifacts.checksum,
        corrupted.path().join(format!("{name}.sha256")),
    )
    .expect("copy");
    // The right tarball with no checksum file at all.
    let unverifiable = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&artifacts.tarball, unverifiable.path().join(&name)).expect("copy");

    for (dir, says) in [
        (corrupted.path(), "checksum mismatch"),
        (unverifiable.path(), "refusing an unverified download"),
    ] {
        let server = FileServer::serve(dir);
        let prefix = tempfile::tempdir().expect("tempdir");
        let output = install_sh(&server.url(&name), prefix.path());
        assert_eq!(output.status.code(), Some(2), "{output}");
        assert_eq!(output.stdout, "", "{output}");
        let lines: Vec<&str> = output.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line\n{output}");
        assert!(
            lines[0].starts_with("install.sh: ") && lines[0].contains(says),
            "{output}"
        );
        assert_eq!(
            std::fs::read_dir(prefix.path()).expect("prefix").count(),
            0,
            "something was installed\n{output}"
        );
    }
}

fn install_sh(url: &str, prefix: &Path) -> llmsim_tests::CommandOutput {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/install.sh"))
        .arg(url)
        .arg("--prefix")
        .arg(prefix);
    run_command(cmd, "install.sh", TIMEOUT)
}

#[test]
fn the_action_script_installs_caches_and_fails_with_replayds_exit_code_and_misses() {
    if !privileged("GitHub Action script") || !can_build_artifacts("GitHub Action script") {
        return;
    }
    let artifacts = artifacts();
    let (snapshot, answer) = openai_models();
    let runner = tempfile::tempdir().expect("tempdir");
    let temp = runner.path().join("temp");
    let tool_cache = runner.path().join("tool-cache");
    let summary = runner.path().join("summary.md");
    for dir in [&temp, &tool_cache] {
        std::fs::create_dir_all(dir).expect("runner directories");
    }
    let action = |run: &str, url: &str| {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts/action-run.sh"))
            .current_dir(snapshot.path().parent().expect("the snapshot's directory"))
            .env("RUNNER_TEMP", &temp)
            .env("RUNNER_TOOL_CACHE", &tool_cache)
            .env("GITHUB_STEP_SUMMARY", &summary)
            .env("INPUT_SNAPSHOT", snapshot.path())
            .env("INPUT_RUN", run)
            .env("INPUT_VERSION", VERSION)
            .env("INPUT_RELEASE_URL", url)
            .env("INPUT_ARGS", "--no-network");
        run_command(cmd, "action-run.sh", TIMEOUT)
    };
    let server = FileServer::serve(&artifacts.dir);
    let url = server.url(&artifacts.tarball_name());

    let hit = action(
        "curl --silent --show-error --max-time 20 https://api.openai.com/v1/models",
        &url,
    );
    assert_eq!(hit.status.code(), Some(0), "{hit}");
    let body: serde_json::Value = serde_json::from_str(
        hit.stdout
            .lines()
            .find(|line| line.starts_with('{'))
            .unwrap_or_else(|| panic!("no answer on stdout\n{hit}")),
    )
    .unwrap_or_else(|e| panic!("the answer is not JSON ({e})\n{hit}"));
    assert_eq!(body, answer, "{hit}");
    assert!(
        hit.stderr
            .lines()
            .any(|l| l == "replayd: served 1 requests (0 repeats), 0 misses"),
        "{hit}"
    );
    let cached = tool_cache
        .join("llmsim")
        .join(VERSION)
        .join(artifacts.tarball_name());
    assert_eq!(
        std::fs::read(&cached).expect("the download is cached"),
        std::fs::read(&artifacts.tarball).expect("the tarball"),
    );

    // The download host is gone: the cached tarball is checked and used again.
    drop(server);
    let miss = action(
        "curl --silent --show-error --max-time 20 https://api.openai.com/v1/models/gpt-none",
        &url,
    );
    assert_eq!(miss.status.code(), Some(1), "replayd's exit code\n{miss}");
    assert!(
        miss.stderr
            .lines()
            .any(|l| l.starts_with("replayd: miss: ")),
        "{miss}"
    );
    assert!(
        miss.stdout
            .lines()
            .any(|l| l.starts_with("::error title=replayd::")
                && l.contains(
                    "exit code 1 (1 misses)%0Areplayd: miss: GET api.openai.com/v1/models/gpt-none"
                )
                && l.contains(
                    "%0A    path: recorded \"/v1/models\", requested \"/v1/models/gpt-none\""
                )),
        "no error annotation\n{miss}"
    );
    let summary = std::fs::read_to_string(&summary).expect("the job summary");
    let sections: Vec<&str> = summary.split("### llmsim replay: ").skip(1).collect();
    assert_eq!(sections.len(), 2, "{summary}");
    assert!(sections[0].contains("exited 0"), "{summary}");
    assert!(
        sections[1].contains("exited 1")
            && sections[1].contains("replayd: miss: GET api.openai.com/v1/models/gpt-none")
            && sections[1].contains("    path: recorded \"/v1/models\""),
        "{summary}"
    );
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_action_installs_this_release_by_default() {
    let action = std::fs::read_to_string(repo_root().join("action.yml")).expect("action.yml");
    let default = action
        .split("\n  version:\n")
        .nth(1)
        .and_then(|block| {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix("default: "))
        })
        .unwrap_or_else(|| panic!("no default for the version input in action.yml"));
    assert_eq!(default, VERSION, "action.yml's default version");
    let script =
        std::fs::read_to_string(repo_root().join("scripts/action-run.sh")).expect("action-run.sh");
    assert!(
        script
            .lines()
            .any(|l| l == format!("DEFAULT_VERSION={VERSION}")),
        "scripts/action-run.sh's DEFAULT_VERSION is not {VERSION}"
    );
}
