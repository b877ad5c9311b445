//! `potok verify` and `potok inspect`, run as the real binary on real files.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use potok::storage::{Durability, Log, LogConfig, Record};

fn potok(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_potok"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A data directory with two logs (one under a nested directory), several segments each.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["streams/orders", "queues/jobs"] {
        let config = LogConfig {
            segment_bytes_max: 2048,
            durability: Durability::Never,
            ..LogConfig::default()
        };
        let log = Log::open(dir.path().join(name), config).unwrap();
        for n in 0..60 {
            let record = Record::new(1000 + n, format!("payload {n}"))
                .with_key("k")
                .with_header("h", "v");
            log.append(&[record]).unwrap();
        }
        log.close().unwrap();
    }
    dir
}

fn first_segment(log_dir: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    segments.remove(0)
}

#[test]
fn verify_reports_clean_logs_and_exits_zero() {
    let dir = data_dir();
    let output = potok(&["verify", dir.path().to_str().unwrap()]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert_eq!(text.matches("clean ").count(), 2, "{text}");
    assert!(text.contains("60 records"), "{text}");
}

#[test]
fn verify_names_the_corrupt_file_and_byte_and_exits_nonzero() {
    let dir = data_dir();
    let segment = first_segment(&dir.path().join("queues/jobs"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.write_all_at(b"X", 200).unwrap();
    let output = potok(&["verify", dir.path().to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("CORRUPT"), "{text}");
    assert!(
        text.contains(segment.file_name().unwrap().to_str().unwrap()),
        "{text}"
    );
    assert!(text.contains("at byte"), "{text}");
    assert!(
        text.contains("clean ") && text.contains("orders"),
        "the other log is still clean: {text}"
    );
}

#[test]
fn verify_of_a_missing_directory_is_an_error() {
    let output = potok(&["verify", "/nonexistent/potok/dir"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("potok:"));
}

#[test]
fn inspect_prints_batches_and_records() {
    let dir = data_dir();
    let segment = first_segment(&dir.path().join("streams/orders"));
    let output = potok(&["inspect", segment.to_str().unwrap()]);
    let text = stdout(&output);
    assert!(output.status.success());
    assert!(text.contains("base offset 0"), "{text}");
    assert!(text.contains("batch base=0 count=1"), "{text}");
    assert!(
        text.contains(r#"offset=0 ts=1000 key="k" headers=["h"="v"] body(9 bytes)="payload 0""#),
        "{text}"
    );
    let output = potok(&["inspect", "--batches-only", segment.to_str().unwrap()]);
    assert!(!stdout(&output).contains("offset=0"));
}
