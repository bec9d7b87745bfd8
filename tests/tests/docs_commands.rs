//! The docs cannot drift from the tools. Every command line in a fenced code block of
//! `README.md` and `docs/*.md` that runs `llmsim-agent` or `replayd` (directly, or through
//! `sudo` and `env`), `cargo xtask`, or a script under `scripts/` is checked against the real
//! thing:
//!
//! - `llmsim-agent` and `replayd`: each subcommand the line names (`capture`, `trust install`)
//!   must be listed by the built binary's `--help` at that level, and every option on the line
//!   (`--out`, `--pace=x2`, `-h`) must be among the options of the level it is given at, as
//!   `--help` prints them.
//! - `cargo xtask X`: X must be an xtask subcommand, and the line's options its options (from
//!   the built `xtask` binary; without it, the subcommand is checked against `xtask/src/main.rs`).
//! - `scripts/…` (or `./scripts/…`): the script must exist and be executable.
//!
//! Lines are read as a shell reads them: `\` continuations joined, `#` comments dropped, quotes
//! honoured, `&&`, `||`, `;` and `|` separating commands, `NAME=value` assignments, `sudo` and
//! its options, and `env` skipped. A `$ ` prompt, the YAML keys `run:` and `entry:` and YAML list
//! dashes are skipped too, so workflow files in the docs are checked. Synopses are understood:
//! a line that starts with `[` or `(` continues the command above it, `[--x]`, `(--a | --b)`,
//! `PID...` and `install|uninstall` are read as optional, alternative and repeated parts, a value
//! after an option that takes one is skipped, and everything after `--` (the command that is
//! captured or replayed) is left alone, up to the bracket that closes it. The `llmsim.toml`
//! examples in `docs/` must load in both tools as well.
//!
//! Needs the binaries (`cargo build --bins`), not root.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use llmsim_tests::{bin_dir, llmsim_agent, replayd, repo_root, run_command};

/// Options of `sudo` that take a value in the next word.
const SUDO_VALUE_OPTIONS: &[&str] = &[
    "-u",
    "-g",
    "-U",
    "-C",
    "-D",
    "-p",
    "-r",
    "-t",
    "-T",
    "-R",
    "--user",
    "--group",
    "--other-user",
    "--close-from",
    "--chdir",
    "--prompt",
    "--role",
    "--type",
    "--command-timeout",
    "--chroot",
];

/// Options of `env` that take a value in the next word.
const ENV_VALUE_OPTIONS: &[&str] = &["-u", "--unset", "-C", "--chdir", "-S", "--split-string"];

/// Where a command line is in the docs.
#[derive(Clone, Debug)]
struct Location {
    file: String,
    line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One word of a command line, with the synopsis bracket depth around it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Word {
    /// The word with quotes removed and synopsis brackets and `...` stripped.
    clean: String,
    /// Whether it is a shell operator (`&&`, `||`, `;`, `|`, `&`) outside quotes.
    operator: bool,
    /// `[`/`(` depth before the word.
    depth_before: usize,
    /// `[`/`(` depth after the word.
    depth_after: usize,
}

/// What `--help` says about one (sub)command.
#[derive(Debug, Default)]
struct Help {
    /// Option spellings (`--out`, `-h`) and whether each takes a value.
    options: HashMap<String, bool>,
    /// Subcommand names.
    commands: BTreeSet<String>,
}

/// Reads a `--help` text: the `Options:` and `Commands:` sections as clap prints them.
fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut section = String::new();
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            line.clone_into(&mut section);
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        match section.as_str() {
            "Commands:" if indent == 2 => {
                if let Some(name) = trimmed.split_whitespace().next() {
                    help.commands.insert(name.to_owned());
                }
            }
            "Options:" if trimmed.starts_with('-') && indent <= 6 => {
                let mut flags = Vec::new();
                let mut takes_value = false;
                for token in trimmed.split_whitespace() {
                    let token = token.trim_end_matches(',');
                    if token.starts_with('-') {
                        flags.push(token.to_owned());
                    } else if token.starts_with('<') || token.starts_with("[<") {
                        takes_value = true;
                    } else {
                        break;
                    }
                }
                for flag in flags {
                    help.options.insert(flag, takes_value);
                }
            }
            _ => {}
        }
    }
    help
}

/// A command-line program whose `--help` is read on demand, per subcommand path.
struct Cli {
    /// How the docs spell it (`replayd`, `cargo xtask`).
    name: String,
    bin: PathBuf,
    helps: HashMap<Vec<String>, Help>,
}

impl Cli {
    fn new(name: &str, bin: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            bin,
            helps: HashMap::new(),
        }
    }

    fn help(&mut self, path: &[String]) -> &Help {
        let bin = &self.bin;
        let name = &self.name;
        self.helps.entry(path.to_vec()).or_insert_with(|| {
            let mut cmd = Command::new(bin);
            cmd.args(path).arg("--help");
            let what = format!("{name} {} --help", path.join(" "));
            let output = run_command(cmd, &what, Duration::from_secs(30));
            output.assert_success();
            parse_help(&output.stdout)
        })
    }

    /// Checks one command line's words after the program name (after `cargo xtask` for xtask).
    fn check(&mut self, args: &[Word], at: &Location, errors: &mut Vec<String>) {
        let mut path: Vec<String> = Vec::new();
        let mut skip_value = false;
        // Inside `-- CMD ARGS...`: the bracket depth at which it started.
        let mut command_at: Option<usize> = None;
        for word in args {
            if let Some(depth) = command_at {
                if word.depth_after < depth {
                    command_at = None;
                }
                continue;
            }
            if skip_value {
                skip_value = false;
                continue;
            }
            let w = word.clean.as_str();
            if w.is_empty() || w == "|" {
                continue;
            }
            if w == "--" {
                command_at = Some(word.depth_before);
                continue;
            }
            let shown = if path.is_empty() {
                self.name.clone()
            } else {
                format!("{} {}", self.name, path.join(" "))
            };
            if w.starts_with('-') && w.len() > 1 {
                let (flag, inline_value) = match w.split_once('=') {
                    Some((flag, _)) => (flag, true),
                    None => (w, false),
                };
                match self.help(&path).options.get(flag) {
                    Some(&takes_value) => skip_value = takes_value && !inline_value,
                    None => errors.push(format!(
                        "{at}: `{shown}` has no option `{flag}` (its --help does not list it)"
                    )),
                }
                continue;
            }
            if path.last().is_some_and(|c| c == "help") {
                return;
            }
            let commands = &self.help(&path).commands;
            if commands.is_empty() {
                continue; // an argument (`DIR`, `REQUEST.json`), not checked
            }
            let alternatives: Vec<&str> = w.split('|').collect();
            if let Some(missing) = alternatives.iter().find(|a| !commands.contains(**a)) {
                errors.push(format!(
                    "{at}: `{shown}` has no subcommand `{missing}` (its --help lists: {})",
                    commands.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
                return;
            }
            path.push(alternatives[0].to_owned());
        }
    }
}

/// Splits one logical line into words, as a shell would for our purposes.
fn tokenize(line: &str) -> Vec<Word> {
    let mut words = Vec::new();
    let mut depth = 0usize;
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else { break };
        if first == '#' {
            break;
        }
        if matches!(first, ';' | '&' | '|') {
            let mut op = String::new();
            while let Some(c) = chars.next_if(|&c| matches!(c, ';' | '&' | '|')) {
                op.push(c);
            }
            words.push(Word {
                clean: op,
                operator: true,
                depth_before: depth,
                depth_after: depth,
            });
            continue;
        }
        let quoted_start = matches!(first, '\'' | '"');
        let mut text = String::new();
        let mut quote: Option<char> = None;
        while let Some(&c) = chars.peek() {
            if let Some(q) = quote {
                chars.next();
                if c == q {
                    quote = None;
                } else if c == '\\' && q == '"' {
                    if let Some(escaped) = chars.next() {
                        text.push(escaped);
                    }
                } else {
                    text.push(c);
                }
                continue;
            }
            if c.is_whitespace() || c == ';' {
                break;
            }
            chars.next();
            match c {
                '\'' | '"' => quote = Some(c),
                '\\' => {
                    if let Some(escaped) = chars.next() {
                        text.push(escaped);
                    }
                }
                _ => text.push(c),
            }
        }
        let before = depth;
        let (clean, opens, closes) = if quoted_start {
            (text, 0, 0)
        } else {
            strip_synopsis(&text)
        };
        depth = (depth + opens).saturating_sub(closes);
        words.push(Word {
            clean,
            operator: false,
            depth_before: before,
            depth_after: depth,
        });
    }
    words
}

/// Removes synopsis decoration from a word: leading `[`/`(`, trailing `]`/`)`, `...` and `…`.
/// Returns the word and how many brackets it opened and closed.
fn strip_synopsis(word: &str) -> (String, usize, usize) {
    let mut rest = word;
    let mut opens = 0;
    while let Some(r) = rest.strip_prefix(['[', '(']) {
        rest = r;
        opens += 1;
    }
    let mut closes = 0;
    loop {
        if let Some(r) = rest.strip_suffix("...").or_else(|| rest.strip_suffix('…')) {
            rest = r;
        } else if let Some(r) = rest.strip_suffix([']', ')']) {
            // `$(...)` closes what it opened itself.
            if r.contains("$(") {
                break;
            }
            rest = r;
            closes += 1;
        } else {
            break;
        }
    }
    (rest.to_owned(), opens, closes)
}

/// Whether a word is a shell assignment, `NAME=value`.
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Skips leading `NAME=value` words.
fn skip_assignments(mut words: &[Word]) -> &[Word] {
    while words.first().is_some_and(|w| is_assignment(&w.clean)) {
        words = &words[1..];
    }
    words
}

/// Skips leading assignments, `sudo` with its options, and `env` with its options.
fn skip_wrappers(words: &[Word]) -> &[Word] {
    let mut rest = skip_assignments(words);
    for (wrapper, value_options) in [("sudo", SUDO_VALUE_OPTIONS), ("env", ENV_VALUE_OPTIONS)] {
        if rest.first().is_some_and(|w| w.clean == wrapper) {
            rest = &rest[1..];
            while let Some(word) = rest.first() {
                if !word.clean.starts_with('-') || word.clean == "--" {
                    break;
                }
                let skip = if value_options.contains(&word.clean.as_str()) {
                    2
                } else {
                    1
                };
                rest = &rest[skip.min(rest.len())..];
            }
            rest = skip_assignments(rest);
        }
    }
    rest
}

/// The tools the docs' command lines are checked against.
struct Tools {
    agent: Cli,
    replayd: Cli,
    /// `None` when the xtask binary is not built: subcommands come from its source.
    xtask: Option<Cli>,
    xtask_tasks: BTreeSet<String>,
    root: PathBuf,
}

impl Tools {
    fn new() -> Self {
        let xtask_bin = bin_dir().join("xtask");
        Self {
            agent: Cli::new("llmsim-agent", llmsim_agent()),
            replayd: Cli::new("replayd", replayd()),
            xtask: xtask_bin
                .is_file()
                .then(|| Cli::new("cargo xtask", xtask_bin)),
            xtask_tasks: xtask_tasks_from_source(&repo_root().join("xtask/src/main.rs")),
            root: repo_root(),
        }
    }

    /// Checks one command (the words between shell operators). Returns whether it was one of
    /// ours.
    fn check_command(&mut self, words: &[Word], at: &Location, errors: &mut Vec<String>) -> bool {
        let words = skip_wrappers(words);
        let Some(program) = words.first() else {
            return false;
        };
        let args = &words[1..];
        match program.clean.as_str() {
            "llmsim-agent" => self.agent.check(args, at, errors),
            "replayd" => self.replayd.check(args, at, errors),
            "cargo" if args.first().is_some_and(|w| w.clean == "xtask") => {
                self.check_xtask(&args[1..], at, errors);
            }
            script if script.starts_with("scripts/") || script.starts_with("./scripts/") => {
                let path = self.root.join(script.trim_start_matches("./"));
                let executable = path
                    .metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
                if !executable {
                    errors.push(format!(
                        "{at}: `{script}` is not an executable file in the repository"
                    ));
                }
            }
            _ => return false,
        }
        true
    }

    fn check_xtask(&mut self, args: &[Word], at: &Location, errors: &mut Vec<String>) {
        if let Some(cli) = &mut self.xtask {
            cli.check(args, at, errors);
            return;
        }
        match args.iter().find(|w| !w.clean.starts_with('-')) {
            Some(task) if self.xtask_tasks.contains(&task.clean) => {}
            Some(task) => errors.push(format!(
                "{at}: `cargo xtask` has no subcommand `{}` (xtask/src/main.rs has: {})",
                task.clean,
                self.xtask_tasks
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => errors.push(format!("{at}: `cargo xtask` without a subcommand")),
        }
    }
}

/// The subcommands of `enum Task` in xtask's main.rs, kebab-cased as clap names them.
fn xtask_tasks_from_source(main_rs: &Path) -> BTreeSet<String> {
    let source = std::fs::read_to_string(main_rs)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", main_rs.display()));
    let Some((_, body)) = source.split_once("enum Task {") else {
        panic!("no `enum Task` in {}", main_rs.display());
    };
    let mut tasks = BTreeSet::new();
    for line in body.lines() {
        if line.starts_with('}') {
            break;
        }
        let Some(variant) = line.strip_prefix("    ") else {
            continue;
        };
        if !variant.starts_with(|c: char| c.is_ascii_uppercase()) {
            continue;
        }
        let name: String = variant
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        let mut kebab = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                kebab.push('-');
            }
            kebab.push(c.to_ascii_lowercase());
        }
        tasks.insert(kebab);
    }
    tasks
}

/// The fenced code blocks of a Markdown text: each line with its 1-based line number.
fn code_blocks(text: &str) -> Vec<Vec<(usize, &str)>> {
    let mut blocks = Vec::new();
    let mut open: Option<(char, usize)> = None;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let fence = ['`', '~'].into_iter().find_map(|c| {
            let count = trimmed.chars().take_while(|&x| x == c).count();
            (count >= 3).then_some((c, count))
        });
        match (open, fence) {
            (None, Some(fence)) => open = Some(fence),
            (Some((c, count)), Some((fence_char, fence_count)))
                if fence_char == c
                    && fence_count >= count
                    && trimmed.trim_start_matches(c).trim().is_empty() =>
            {
                open = None;
                blocks.push(std::mem::take(&mut lines));
            }
            (Some(_), _) => lines.push((i + 1, line)),
            (None, None) => {}
        }
    }
    blocks
}

/// Drops what is not part of the command: a `$ ` prompt, YAML's `run:`/`entry:` keys and list
/// dashes.
fn strip_line_prefix(line: &str) -> &str {
    let mut rest = line.trim();
    loop {
        let before = rest;
        for prefix in ["$ ", "- ", "run:", "entry:"] {
            if let Some(r) = rest.strip_prefix(prefix) {
                rest = r.trim_start();
            }
        }
        if rest == before {
            return rest;
        }
    }
}

/// The logical command lines of a code block: continuations joined, prefixes dropped, and a
/// synopsis line starting with `[` or `(` appended to the line above it.
fn logical_lines(block: &[(usize, &str)]) -> Vec<(usize, String)> {
    let mut lines: Vec<(usize, String)> = Vec::new();
    let mut continuing = false;
    for &(number, raw) in block {
        let text = strip_line_prefix(raw);
        let (text, continues) = match text.strip_suffix('\\') {
            Some(t) => (t.trim_end(), true),
            None => (text, false),
        };
        let synopsis_continuation = text.starts_with(['[', '(']) && !lines.is_empty();
        match lines.last_mut() {
            Some((_, last)) if continuing || synopsis_continuation => {
                last.push(' ');
                last.push_str(text);
            }
            _ => lines.push((number, text.to_owned())),
        }
        continuing = continues;
    }
    lines
}

/// Checks every command line in a Markdown text; returns how many lines ran one of our tools.
fn check_markdown(file: &str, text: &str, tools: &mut Tools, errors: &mut Vec<String>) -> usize {
    let mut checked = 0;
    for block in code_blocks(text) {
        for (line, logical) in logical_lines(&block) {
            let at = Location {
                file: file.to_owned(),
                line,
            };
            let words = tokenize(&logical);
            let mut any = false;
            for command in words.split(|w| w.operator && !(w.clean == "|" && w.depth_before > 0)) {
                any |= tools.check_command(command, &at, errors);
            }
            checked += usize::from(any);
        }
    }
    checked
}

/// `README.md` and every `docs/*.md`, sorted.
fn doc_files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files.insert(0, root.join("README.md"));
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_documented_command_line_matches_the_real_cli() {
    let mut tools = Tools::new();
    let mut errors = Vec::new();
    let mut per_file = Vec::new();
    for path in doc_files() {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let name = relative(&path);
        let checked = check_markdown(&name, &text, &mut tools, &mut errors);
        per_file.push((name, checked));
    }
    assert!(
        errors.is_empty(),
        "{} documented command lines do not match the tools:\n{}",
        errors.len(),
        errors.join("\n")
    );
    let total: usize = per_file.iter().map(|(_, n)| n).sum();
    let readme = per_file.first().map_or(0, |(_, n)| *n);
    // Guards against an extraction that silently finds nothing.
    assert!(
        total >= 40 && readme >= 5,
        "too few command lines found ({total}, {readme} in README.md): {per_file:?}"
    );
}

#[test]
fn documented_llmsim_toml_examples_load_in_both_tools() {
    let root = repo_root();
    let mut examples = 0;
    for path in doc_files() {
        let text = std::fs::read_to_string(&path).expect("readable doc");
        for block in code_blocks(&text) {
            let Some(&(line, _)) = block.first() else {
                continue;
            };
            let toml: String = block.iter().flat_map(|(_, l)| [l, "\n"]).collect();
            let is_config = ["[match]", "[redact]", "[[match.mask]]"]
                .iter()
                .any(|section| toml.lines().any(|l| l.trim() == *section));
            if !is_config {
                continue;
            }
            examples += 1;
            let at = format!("{}:{line}", relative(&path));
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("llmsim.toml"), &toml).expect("write llmsim.toml");
            let request = dir.path().join("request.json");
            std::fs::write(
                &request,
                r#"{"host": "api.openai.com", "path": "/v1/chat/completions", "body": {"model": "m"}}"#,
            )
            .expect("write request");

            let mut explain = Command::new(replayd());
            explain.arg("explain").arg(dir.path()).arg(&request);
            let out = run_command(explain, &format!("replayd explain with {at}"), WAIT);
            // 1 is a miss (the snapshot is empty); 2 would be a start-up error.
            assert!(
                out.status.code() == Some(1) && out.stdout.starts_with("miss:"),
                "the llmsim.toml at {at} does not load in replayd:\n{out}"
            );

            let mut verify = Command::new(llmsim_agent());
            verify.arg("verify").arg(dir.path());
            let out = run_command(verify, &format!("llmsim-agent verify with {at}"), WAIT);
            assert!(
                out.status.success(),
                "the llmsim.toml at {at} fails llmsim-agent verify:\n{out}"
            );
        }
    }
    assert!(
        examples >= 2,
        "expected llmsim.toml examples in docs/, found {examples} ({})",
        root.display()
    );
}

const WAIT: Duration = Duration::from_secs(60);

/// The reader itself, on a made-up page: it must find planted mistakes wherever the real docs
/// could hide one, and leave alone what is not an option of ours.
#[test]
fn the_reader_finds_planted_mistakes_and_nothing_else() {
    let page = r#"
Text with `replayd --not-in-a-block` outside any fence.

```sh
$ llmsim-agent capture --out DIR --bogus-one -- python3 app.py --not-ours   # --in-a-comment
sudo -E env "PATH=$PATH" OPENAI_API_KEY=x replayd --in tests/llmsim \
    --bogus-two -- pytest -x --maxfail=1
llmsim-agent verify llmsim && replayd --pace=x2 --bogus-three --listen 127.0.0.1:0
replayd trust [--ca-dir DIR] install|reinstall
llmsim-agent capture [--out DIR] (--pid PID... | --cgroup PATH | --all | -- CMD ARGS...)
                     [--host PATTERN]... [--bogus-four]
llmsim-agent: capturing `python3 app.py` into llmsim --not-a-command-line
cargo xtask no-such-task
./scripts/no-such-script.sh
```

```yaml
      - run: sudo --preserve-env=KEY llmsim-agent report --bogus-five
        entry: llmsim-agent verify tests/recordings
      - name: fine
        run: |
          scripts/setup.sh
          replayd explain llmsim request.json
```
"#;
    let mut tools = Tools::new();
    let mut errors = Vec::new();
    let checked = check_markdown("page.md", page, &mut tools, &mut errors);
    let found: Vec<String> = errors
        .iter()
        .map(|e| e.split_once(": ").map_or(e.as_str(), |(_, m)| m).to_owned())
        .collect();
    let expect = |needle: &str| {
        assert!(
            found.iter().any(|e| e.contains(needle)),
            "`{needle}` was not reported; reported:\n{}",
            errors.join("\n")
        );
    };
    expect("`llmsim-agent capture` has no option `--bogus-one`");
    expect("`replayd` has no option `--bogus-two`");
    expect("`replayd` has no option `--bogus-three`");
    expect("`replayd trust` has no subcommand `reinstall`");
    expect("`llmsim-agent capture` has no option `--bogus-four`");
    expect("`llmsim-agent report` has no option `--bogus-five`");
    expect("no subcommand `no-such-task`");
    expect("`./scripts/no-such-script.sh` is not an executable file");
    assert_eq!(found.len(), 8, "unexpected reports:\n{}", errors.join("\n"));
    assert!(errors[0].starts_with("page.md:5: "), "{}", errors[0]);
    assert_eq!(checked, 11, "{errors:#?}");
}

#[test]
fn tokenizing_understands_synopses_quotes_and_comments() {
    let words = tokenize(r#"a [--x V] (--y | -- C D...) "q [x" 'b c'#x # comment"#);
    let clean: Vec<&str> = words.iter().map(|w| w.clean.as_str()).collect();
    assert_eq!(
        clean,
        ["a", "--x", "V", "--y", "|", "--", "C", "D", "q [x", "b c#x"]
    );
    let depths: Vec<(usize, usize)> = words
        .iter()
        .map(|w| (w.depth_before, w.depth_after))
        .collect();
    assert_eq!(
        depths,
        [
            (0, 0),
            (0, 1),
            (1, 0),
            (0, 1),
            (1, 1),
            (1, 1),
            (1, 1),
            (1, 0),
            (0, 0),
            (0, 0)
        ]
    );
    assert!(words[4].operator);
    assert_eq!(
        tokenize("x=1 y && z; w")
            .iter()
            .filter(|w| w.operator)
            .count(),
        2
    );
}
