use std::error::Error as _;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use super::*;
use crate::model::tests::sample_exchange;

fn exchange_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join(EXCHANGES_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn write_then_load_gives_the_same_exchanges_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SnapshotWriter::open(dir.path()).unwrap();
    let mut second = sample_exchange();
    second.request.method = "GET".into();
    second.request.path = "/v1/models?limit=2".into();
    let first_path = writer.write(&sample_exchange()).unwrap();
    let second_path = writer.write(&second).unwrap();
    drop(writer);

    assert_eq!(
        exchange_files(dir.path()),
        [
            "000001-openai-post-v1-chat-completions.json",
            "000002-openai-get-v1-models.json"
        ]
    );
    let snapshot = load(dir.path()).unwrap();
    let loaded: Vec<_> = snapshot
        .exchanges
        .iter()
        .map(|r| (r.path.clone(), r.exchange.clone()))
        .collect();
    let mut expected_first = sample_exchange();
    expected_first.seq = 1;
    second.seq = 2;
    assert_eq!(
        loaded,
        [(first_path, expected_first), (second_path, second)]
    );
}

#[test]
fn file_text_is_stable_pretty_json_with_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let path = SnapshotWriter::open(dir.path())
        .unwrap()
        .write(&sample_exchange())
        .unwrap();
    let text = fs::read_to_string(path).unwrap();
    let expected = r#"{
  "format_version": 1,
  "seq": 1,
  "provider": "openai",
  "host": "api.openai.com",
  "scheme": "https",
  "process": {
    "pid": 4242,
    "comm": "python3",
    "exe": "/usr/bin/python3.11"
  },
  "peer": "127.0.0.1:443",
  "started_at": "2026-07-01T10:00:00.5Z",
  "ttfb_ms": 120.5,
  "duration_ms": 480.25,
  "incomplete": null,
  "streamed": false,
  "model": "gpt-4o-mini",
  "request": {
    "method": "POST",
    "path": "/v1/chat/completions",
    "headers": [
      ["content-type", "application/json"],
      ["x-dup", "1"],
      ["x-dup", "2"]
    ],
    "body": {
      "kind": "json",
      "json": {
        "model": "gpt-4o-mini",
        "messages": [
          {
            "role": "user",
            "content": "hi"
          }
        ]
      }
    }
  },
  "response": {
    "status": 200,
    "headers": [
      ["content-type", "application/json"]
    ],
    "body": {
      "kind": "json",
      "content_encoding": "gzip",
      "json": {
        "id": "chatcmpl-1",
        "choices": []
      }
    }
  }
}
"#;
    assert_eq!(text, expected);
}

#[test]
fn a_second_capture_appends_after_the_highest_seq() {
    let dir = tempfile::tempdir().unwrap();
    SnapshotWriter::open(dir.path())
        .unwrap()
        .write(&sample_exchange())
        .unwrap();
    // A gap (a file deleted by hand) is not reused: numbering continues.
    fs::write(
        dir.path()
            .join(EXCHANGES_DIR)
            .join("000041-anthropic-post-v1-messages.json"),
        b"{}",
    )
    .unwrap();
    let mut writer = SnapshotWriter::open(dir.path()).unwrap();
    assert_eq!(writer.next_seq(), 42);
    let path = writer.write(&sample_exchange()).unwrap();
    assert!(
        path.ends_with("000042-openai-post-v1-chat-completions.json"),
        "{}",
        path.display()
    );
}

#[test]
fn an_existing_name_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SnapshotWriter::open(dir.path()).unwrap();
    let taken = dir
        .path()
        .join(EXCHANGES_DIR)
        .join("000001-openai-post-v1-chat-completions.json");
    fs::write(&taken, b"someone else's").unwrap();
    let path = writer.write(&sample_exchange()).unwrap();
    assert!(path.ends_with("000002-openai-post-v1-chat-completions.json"));
    assert_eq!(fs::read(&taken).unwrap(), b"someone else's");
}

#[test]
fn stale_temp_files_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let exchanges = dir.path().join(EXCHANGES_DIR);
    fs::create_dir_all(&exchanges).unwrap();
    fs::write(
        exchanges.join(".000003-openai-x.json.99-deadbeef.tmp"),
        b"{\"half",
    )
    .unwrap();
    fs::write(exchanges.join(".gitkeep"), b"").unwrap();
    let writer = SnapshotWriter::open(dir.path()).unwrap();
    assert_eq!(writer.next_seq(), 1, "a temp file does not claim its seq");
    assert_eq!(exchange_files(dir.path()), [".gitkeep"]);
    assert!(load(dir.path()).unwrap().exchanges.is_empty());
}

#[test]
fn a_second_writer_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let first = SnapshotWriter::open(dir.path()).unwrap();
    let err = SnapshotWriter::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    drop(first);
    SnapshotWriter::open(dir.path()).unwrap();
}

#[test]
fn an_exchange_that_would_not_load_back_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SnapshotWriter::open(dir.path()).unwrap();
    let mut bad = sample_exchange();
    bad.ttfb_ms = f64::NAN;
    assert!(matches!(
        writer.write(&bad),
        Err(StoreError::Serialize { seq: 1, .. })
    ));
    assert_eq!(exchange_files(dir.path()), Vec::<String>::new());
}

#[test]
fn unusable_directories_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    fs::write(&file, b"").unwrap();
    let err = SnapshotWriter::open(&file.join("snap")).unwrap_err();
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains("plain-file"), "{err}");

    let missing = dir.path().join("missing");
    let err = load(&missing).unwrap_err();
    assert!(matches!(err, StoreError::ReadDir { .. }), "{err:?}");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn a_directory_without_exchanges_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = load(dir.path()).unwrap();
    assert!(snapshot.exchanges.is_empty());
    assert_eq!(snapshot.dir, dir.path());
}

#[test]
fn files_larger_than_the_first_read_load_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SnapshotWriter::open(dir.path()).unwrap();
    let mut large = sample_exchange();
    large.response.body = crate::model::Body::Text {
        content_encoding: None,
        text: "long answer ".repeat(3 * FIRST_READ / 12),
    };
    // Large, small, large: one loading thread's buffer goes from one to the next.
    for exchange in [&large, &sample_exchange(), &large] {
        writer.write(exchange).unwrap();
    }
    drop(writer);
    let loaded = load(dir.path()).unwrap();
    let bodies: Vec<Vec<u8>> = loaded
        .exchanges
        .iter()
        .map(|r| r.exchange.response.body.to_bytes())
        .collect();
    assert_eq!(bodies[0], large.response.body.to_bytes());
    assert_eq!(bodies[1], sample_exchange().response.body.to_bytes());
    assert_eq!(bodies[2], large.response.body.to_bytes());
}

#[test]
fn a_broken_file_is_named_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SnapshotWriter::open(dir.path()).unwrap();
    writer.write(&sample_exchange()).unwrap();
    let path = writer.write(&sample_exchange()).unwrap();
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("\"status\": 200", "\"status\": \"ok\"");
    fs::write(&path, text).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, StoreError::Parse { path: p, .. } if *p == path),
        "{err:?}"
    );
    assert!(err.to_string().contains("000002-openai"), "{err}");
    let reason = err.source().unwrap().to_string();
    assert!(
        reason.contains("line") && reason.contains("column"),
        "{reason}"
    );
}

#[test]
fn of_several_broken_files_the_first_in_capture_order_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SnapshotWriter::open(dir.path()).unwrap();
    let paths: Vec<PathBuf> = (0..40)
        .map(|_| writer.write(&sample_exchange()).unwrap())
        .collect();
    // One early, and many where another thread starts.
    for path in std::iter::once(&paths[7]).chain(&paths[20..]) {
        fs::write(path, "{").unwrap();
    }
    for _ in 0..5 {
        let err = load(dir.path()).unwrap_err();
        assert!(
            matches!(&err, StoreError::Parse { path, .. } if *path == paths[7]),
            "{err:?}"
        );
    }
}

#[test]
fn another_format_version_has_its_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = SnapshotWriter::open(dir.path())
        .unwrap()
        .write(&sample_exchange())
        .unwrap();
    let text = fs::read_to_string(&path).unwrap();
    // Whether or not the rest of the file still reads as this version's.
    let same_shape = text.replace("\"format_version\": 1", "\"format_version\": 2");
    let new_shape = same_shape.replace("\"status\": 200", "\"status\": {\"code\": 200}");
    assert_ne!(same_shape, new_shape);
    for text in [same_shape, new_shape] {
        fs::write(&path, text).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::FormatVersion {
                    found: 2,
                    expected: 1,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn a_malformed_config_fails_the_load() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(crate::config::CONFIG_FILE), "[redact\n").unwrap();
    assert!(matches!(load(dir.path()), Err(StoreError::Config { .. })));
}

#[test]
fn load_orders_by_seq_past_six_digits() {
    let dir = tempfile::tempdir().unwrap();
    let exchanges = dir.path().join(EXCHANGES_DIR);
    fs::create_dir_all(&exchanges).unwrap();
    for seq in [1_000_000, 999_999, 2] {
        let mut ex = sample_exchange();
        ex.seq = seq;
        let name = naming::file_name(seq, ex.provider, "POST", "/v1/chat/completions");
        fs::write(exchanges.join(name), to_file_text(&ex).unwrap()).unwrap();
    }
    fs::write(exchanges.join("notes.md"), b"not an exchange").unwrap();
    fs::write(exchanges.join(".000003-openai-x.json.1-2.tmp"), b"partial").unwrap();
    let loaded = load(dir.path()).unwrap();
    let seqs: Vec<u64> = loaded.exchanges.iter().map(|r| r.exchange.seq).collect();
    assert_eq!(seqs, [2, 999_999, 1_000_000]);
    let paths: Vec<PathBuf> = loaded.exchanges.into_iter().map(|r| r.path).collect();
    assert_eq!(super::exchange_files(dir.path()).unwrap(), paths);
    assert!(matches!(
        super::exchange_files(&dir.path().join("missing")),
        Err(StoreError::ReadDir { .. })
    ));
}

const CHILD_DIR_ENV: &str = "LLMSIM_SNAPSHOT_TEST_CHILD_DIR";

/// The child half of `a_killed_capture_leaves_only_whole_files`: when started
/// by it, writes until killed; otherwise does nothing.
#[test]
fn killed_capture_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let mut writer = SnapshotWriter::open(Path::new(&dir)).unwrap();
    let mut big = sample_exchange();
    big.response.body = crate::model::Body::Text {
        content_encoding: None,
        text: "x".repeat(256 * 1024),
    };
    for _ in 0..10_000 {
        writer.write(&big).unwrap();
        println!("wrote");
    }
}

#[test]
fn a_killed_capture_leaves_only_whole_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::tests::killed_capture_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut written = 0;
    for line in stdout.lines() {
        if line.unwrap().contains("wrote") {
            written += 1;
            if written == 5 {
                break;
            }
        }
    }
    assert_eq!(written, 5, "the child stopped before writing 5 exchanges");
    child.kill().unwrap(); // SIGKILL, most likely mid-write
    child.wait().unwrap();

    let snapshot = load(dir.path()).unwrap();
    assert!(snapshot.exchanges.len() >= 5);
    let mut writer = SnapshotWriter::open(dir.path()).unwrap();
    assert!(
        exchange_files(dir.path())
            .iter()
            .all(|n| !crate::atomic::is_temp_name(n))
    );
    let next = writer.next_seq();
    assert_eq!(next, snapshot.exchanges.len() as u64 + 1);
    writer.write(&sample_exchange()).unwrap();
    assert_eq!(load(dir.path()).unwrap().exchanges.len() as u64, next);
}

/// The complete example in docs/snapshot-format.md is a real exchange file,
/// byte for byte, so the document cannot drift from the format.
#[test]
fn the_documented_example_is_a_valid_file() {
    let doc = include_str!("../../../docs/snapshot-format.md");
    let (_, after) = doc
        .split_once("## A complete example")
        .expect("example heading");
    let (_, block) = after.split_once("```json\n").expect("example block");
    let (example, _) = block.split_once("```").expect("block end");
    let exchange: Exchange = serde_json::from_str(example).expect("the example parses");
    assert_eq!(exchange.format_version, FORMAT_VERSION);
    assert_eq!(to_file_text(&exchange).unwrap(), example);
}
