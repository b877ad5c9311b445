use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::storage::io::{CrashMode, FaultVfs, Vfs};
use crate::storage::wal::{Wal, WalEntry, WalTxn};

fn files(vfs: &FaultVfs) -> Arc<LogShared> {
    Arc::new(LogShared::new(FileCache::new(Arc::new(vfs.clone()), 8)))
}

fn small() -> LogConfig {
    LogConfig {
        segment_bytes_max: 1024,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}

fn open(vfs: &FaultVfs, id: u64) -> EntityLog {
    let dir = format!("/data/e/{id}");
    EntityLog::open(files(vfs), id, dir, small(), Visibility::Durable).unwrap()
}

fn record(n: u64) -> Record {
    Record::new(n as i64, format!("message {n}")).with_key(n.to_string())
}

fn bodies(log: &EntityLog, from: u64) -> Vec<String> {
    log.iter(from)
        .map(|r| String::from_utf8(r.unwrap().1.body.to_vec()).unwrap())
        .collect()
}

fn expected(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|n| format!("message {n}")).collect()
}

/// Replay what the write-ahead log holds for `log` (as the broker does on open).
fn replay(wal: &Wal, log: &EntityLog) {
    for entry in wal.replay(wal.checkpoint_lsn()) {
        if let (_, WalEntry::Append { log: id, batch }) = entry.unwrap() {
            if id == log.id() {
                log.replay_batch(batch).unwrap();
            }
        }
    }
}

#[test]
fn appends_are_visible_once_durable_and_survive_a_crash_before_their_files() {
    let vfs = FaultVfs::new(1);
    let wal = Wal::open(
        Arc::new(vfs.clone()),
        Path::new("/data"),
        Durability::Always,
    )
    .unwrap();
    let log = open(&vfs, 7);
    for n in 0..100u64 {
        let mut txn = WalTxn::new();
        txn.append(&log, vec![record(n)]);
        let committed = wal.commit(txn).unwrap();
        assert_eq!(committed.appends[0].base_offset, n);
        if n == 0 {
            // Under `always`, nothing is visible before the write-ahead fsync.
            assert_eq!(log.visible_next_offset(), 0);
            assert!(log.read(0, 1 << 20).unwrap().is_empty());
        }
        wal.wait(committed.commit).unwrap();
        assert_eq!(log.visible_next_offset(), n + 1);
    }
    assert_eq!(bodies(&log, 0), expected(0..100));
    // Half goes to the files (rolling several segments), the rest stays in memory.
    let written = log.materialize().unwrap();
    assert!(written > 0 && log.tail_bytes() == 0);
    assert!(log.segment_count() > 3, "{} segments", log.segment_count());
    assert_eq!(bodies(&log, 0), expected(0..100));
    assert_eq!(bodies(&log, 57), expected(57..100));
    for n in 100..150u64 {
        let mut txn = WalTxn::new();
        txn.append(&log, vec![record(n)]);
        wal.wait(wal.commit(txn).unwrap().commit).unwrap();
    }
    assert_eq!(bodies(&log, 0), expected(0..150));
    // The files were never made durable beyond the rolls' fsyncs: a crash loses some of
    // them, and the write-ahead log gives everything back.
    drop(log);
    vfs.crash(CrashMode::TornWrites);
    let wal = Wal::open(
        Arc::new(vfs.clone()),
        Path::new("/data"),
        Durability::Always,
    )
    .unwrap();
    let log = open(&vfs, 7);
    replay(&wal, &log);
    assert_eq!(log.next_offset(), 150);
    assert_eq!(bodies(&log, 0), expected(0..150));
    assert_eq!(
        log.offset_for_timestamp(120).unwrap(),
        Some(120),
        "timestamps are found in the files and in the tail"
    );
}

#[test]
fn replay_skips_what_the_files_hold_and_refuses_gaps() {
    let vfs = FaultVfs::new(2);
    let wal = Wal::open(
        Arc::new(vfs.clone()),
        Path::new("/data"),
        Durability::Always,
    )
    .unwrap();
    let log = open(&vfs, 3);
    for n in 0..40u64 {
        let mut txn = WalTxn::new();
        txn.append(&log, vec![record(n)]);
        wal.wait(wal.commit(txn).unwrap().commit).unwrap();
    }
    log.materialize().unwrap();
    vfs.sync_all(Path::new("/data")).unwrap();
    drop(log);
    vfs.crash(CrashMode::DropUnsynced);
    let log = open(&vfs, 3);
    assert_eq!(log.next_offset(), 40, "synced files hold everything");
    let wal = Wal::open(
        Arc::new(vfs.clone()),
        Path::new("/data"),
        Durability::Always,
    )
    .unwrap();
    replay(&wal, &log);
    assert_eq!(bodies(&log, 0), expected(0..40));
    // A batch past the end is a gap the log cannot fill.
    let other = open(&vfs, 99);
    let mut buf = Vec::new();
    crate::storage::batch::encode_batch(5, &[record(5)], &mut buf);
    assert!(other.replay_batch(Bytes::from(buf)).is_err());
}

#[test]
fn truncation_and_retention_delete_whole_sealed_segments() {
    let vfs = FaultVfs::new(3);
    let wal = Wal::open(Arc::new(vfs.clone()), Path::new("/data"), Durability::Never).unwrap();
    let log = open(&vfs, 1);
    for n in 0..200u64 {
        let mut txn = WalTxn::new();
        txn.append(&log, vec![record(n)]);
        wal.commit(txn).unwrap();
        if n % 50 == 49 {
            log.materialize().unwrap();
        }
    }
    let before = log.size_bytes();
    let report = log.truncate_before(120).unwrap();
    assert!(report.segments_deleted > 0);
    assert!(log.start_offset() <= 120 && log.start_offset() > 0);
    assert!(log.size_bytes() < before);
    let from = log.start_offset();
    assert_eq!(bodies(&log, 0), expected(from..200));
    drop(log);
    // Reopened: the surviving segments are trusted, the newest scanned.
    let log = open(&vfs, 1);
    assert_eq!(log.start_offset(), from);
    assert_eq!(log.next_offset(), 200);
    assert!(vfs.exists(Path::new("/data/e/1")));
    log.delete_files().unwrap();
    assert!(!vfs.exists(Path::new("/data/e/1")));
}

#[test]
fn volatile_logs_need_no_write_ahead_log() {
    let vfs = FaultVfs::new(4);
    let log = EntityLog::open(files(&vfs), 5, "/data/v/5", small(), Visibility::Immediate).unwrap();
    for n in 0..30 {
        log.append_volatile(&[record(n)]).unwrap();
    }
    assert_eq!(log.visible_next_offset(), 30);
    assert_eq!(bodies(&log, 10), expected(10..30));
    log.materialize().unwrap();
    assert_eq!(log.tail_bytes(), 0);
    assert_eq!(bodies(&log, 0), expected(0..30));
}

#[test]
fn an_armed_listener_runs_once_per_arming_and_a_plain_one_on_every_change() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let vfs = FaultVfs::new(5);
    let shared = files(&vfs);
    let armed = EntityLog::create(
        shared.clone(),
        1,
        "/data/e/1",
        small(),
        Visibility::Immediate,
    )
    .unwrap();
    let plain = EntityLog::create(shared, 2, "/data/e/2", small(), Visibility::Immediate).unwrap();
    let counter = |log: &EntityLog, when_armed: bool| {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let listener: VisibilityListener = Arc::new(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        if when_armed {
            log.set_armed_visibility_listener(listener);
        } else {
            log.set_visibility_listener(listener);
        }
        calls
    };
    let (armed_calls, plain_calls) = (counter(&armed, true), counter(&plain, false));
    for n in 0..3 {
        armed.append_volatile(&[record(n)]).unwrap();
        plain.append_volatile(&[record(n)]).unwrap();
    }
    assert_eq!(armed_calls.load(Ordering::SeqCst), 0, "nobody armed it");
    assert_eq!(plain_calls.load(Ordering::SeqCst), 3);
    armed.arm_listener();
    armed.append_volatile(&[record(3)]).unwrap();
    armed.append_volatile(&[record(4)]).unwrap();
    assert_eq!(armed_calls.load(Ordering::SeqCst), 1, "once per arming");
    // Armed through a durable visibility change too (the write-ahead log's path).
    let wal = Wal::open(
        Arc::new(vfs.clone()),
        Path::new("/data"),
        Durability::Always,
    )
    .unwrap();
    let durable = open(&vfs, 3);
    let durable_calls = counter(&durable, true);
    durable.arm_listener();
    let mut txn = WalTxn::new();
    txn.append(&durable, vec![record(0)]);
    let commit = wal.commit(txn).unwrap().commit;
    assert_eq!(durable_calls.load(Ordering::SeqCst), 0, "not visible yet");
    wal.wait(commit).unwrap();
    assert_eq!(durable_calls.load(Ordering::SeqCst), 1);
    assert_eq!(bodies(&durable, 0), expected(0..1));
}
