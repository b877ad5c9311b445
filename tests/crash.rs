//! Crash tests through the fault-injecting file system.
//!
//! The promise under test: every append that completed under `Durability::Always` is present
//! after recovery with identical bytes; nothing is served past a torn or corrupted point; the
//! recovery never panics. Seeds: `POTOK_CRASH_SEEDS` (default 150) per test; the soak script
//! runs many more.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{log_dir, open_fault, read_all, record, segment_paths, small_config};
use potok::storage::io::{CrashMode, FaultVfs, OpenMode, Vfs};
use potok::storage::verify::verify_log_dir;
use potok::storage::{Durability, Error, Log, LogConfig, Record};

fn seeds() -> u64 {
    std::env::var("POTOK_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150)
}

/// What the test knows about the log: every record it tried to write, by offset, and how far
/// appends were acknowledged.
#[derive(Default)]
struct Expectation {
    attempted: BTreeMap<u64, Record>,
    acked_next: u64,
    /// The highest `truncate_before` that succeeded: records below may be gone.
    truncated_to: u64,
}

impl Expectation {
    /// Check a freshly recovered log against what was acknowledged.
    fn check(&self, log: &Log, context: &str) {
        let got = read_all(log).unwrap_or_else(|e| panic!("{context}: read failed: {e}"));
        let start = log.start_offset();
        assert!(
            start <= self.truncated_to.max(self.acked_next),
            "{context}: start {start} beyond what was truncated"
        );
        assert!(
            log.next_offset() >= self.acked_next,
            "{context}: acknowledged records lost: next {} < acked {}",
            log.next_offset(),
            self.acked_next
        );
        for (i, (offset, r)) in got.iter().enumerate() {
            assert_eq!(*offset, start + i as u64, "{context}: offsets are dense");
            let attempted = self
                .attempted
                .get(offset)
                .unwrap_or_else(|| panic!("{context}: offset {offset} was never written"));
            assert_eq!(
                r, attempted,
                "{context}: record {offset} differs from what was written"
            );
        }
        assert_eq!(
            got.len() as u64,
            log.next_offset() - start,
            "{context}: every record up to the end is readable"
        );
    }
}

/// Random appends, rolls and truncations until the armed power loss hits (or the budget ends).
fn run_until_power_loss(log: &Log, rng: &mut fastrand::Rng, expect: &mut Expectation) {
    for _ in 0..60 {
        let outcome: Result<(), Error> = match rng.u8(0..20) {
            0 => log.roll(),
            1 => {
                let target = rng.u64(log.start_offset()..=log.next_offset());
                log.truncate_before(target)
                    .map(|_| expect.truncated_to = expect.truncated_to.max(target))
            }
            _ => {
                let batch: Vec<Record> = (0..rng.u64(1..5))
                    .map(|_| record(rng.u64(0..1000)))
                    .collect();
                match log.append_without_waiting(&batch) {
                    Ok(info) => {
                        for (i, r) in batch.into_iter().enumerate() {
                            expect.attempted.insert(info.base_offset + i as u64, r);
                        }
                        log.wait_until_durable(info.next_offset)
                            .map(|()| expect.acked_next = info.next_offset)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if outcome.is_err() {
            return;
        }
    }
}

#[test]
fn acknowledged_appends_survive_power_loss_at_any_point() {
    for seed in 0..seeds() {
        let vfs = FaultVfs::new(seed);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut expect = Expectation::default();
        for round in 0..4 {
            let context = format!("seed {seed} round {round}");
            let log = open_fault(&vfs, small_config(Durability::Always))
                .unwrap_or_else(|e| panic!("{context}: open: {e}"));
            expect.check(&log, &context);
            // Records past the acknowledged end that survived are now part of the log.
            expect.acked_next = log.next_offset();
            vfs.power_loss_after(rng.u64(0..400));
            run_until_power_loss(&log, &mut rng, &mut expect);
            let mode = if rng.bool() {
                CrashMode::TornWrites
            } else {
                CrashMode::DropUnsynced
            };
            vfs.crash(mode);
            drop(log);
        }
    }
}

#[test]
fn concurrent_appenders_lose_nothing_acknowledged() {
    for seed in 0..seeds() / 5 {
        let vfs = FaultVfs::new(seed);
        let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
        vfs.power_loss_after(50 + seed * 7);
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (log, acked) = (log.clone(), Arc::clone(&acked));
                std::thread::spawn(move || {
                    for i in 0..100u64 {
                        let r = record(t * 1000 + i);
                        match log.append(std::slice::from_ref(&r)) {
                            Ok(info) => acked.lock().unwrap().insert(info.base_offset, r),
                            Err(_) => return,
                        };
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        vfs.crash(if seed % 2 == 0 {
            CrashMode::TornWrites
        } else {
            CrashMode::DropUnsynced
        });
        drop(log);
        let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
        let got: BTreeMap<u64, Record> = read_all(&log).unwrap().into_iter().collect();
        for (offset, r) in acked.lock().unwrap().iter() {
            assert_eq!(
                got.get(offset),
                Some(r),
                "seed {seed}: acknowledged offset {offset}"
            );
        }
    }
}

#[test]
fn without_fsync_a_crash_leaves_a_valid_prefix() {
    for seed in 0..seeds() {
        let vfs = FaultVfs::new(seed);
        let config = small_config(Durability::Never);
        let log = open_fault(&vfs, config.clone()).unwrap();
        let mut written = Vec::new();
        for n in 0..(seed % 50 + 10) {
            let batch: Vec<Record> = (0..(n % 3 + 1))
                .map(|i| record(seed * 100 + n * 3 + i))
                .collect();
            log.append(&batch).unwrap();
            written.extend(batch);
        }
        vfs.crash(CrashMode::TornWrites);
        drop(log);
        let log = open_fault(&vfs, config).unwrap();
        let got = read_all(&log).unwrap();
        assert!(got.len() <= written.len());
        for (offset, r) in &got {
            assert_eq!(
                r, &written[*offset as usize],
                "seed {seed}: no garbage after a torn write"
            );
        }
        assert!(
            verify_log_dir(&vfs, &log_dir()).unwrap().is_clean(),
            "seed {seed}: recovery repaired the tail"
        );
    }
}

#[test]
fn preallocated_space_is_cut_at_seal_and_close_and_read_as_the_end_after_a_crash() {
    let vfs = FaultVfs::new(7);
    let config = LogConfig {
        segment_bytes_max: 16 * 1024,
        ..small_config(Durability::Always)
    };
    let log = open_fault(&vfs, config.clone()).unwrap();
    let mut written = Vec::new();
    for n in 0..40 {
        log.append(&[record(n)]).unwrap();
        written.push(record(n));
    }
    let active = segment_paths(&vfs, &log_dir()).pop().unwrap();
    let active_len = vfs.file_len(&active).unwrap();
    assert!(
        active_len > log.size_bytes(),
        "under `always` the active segment is zero-filled ahead: {active_len} vs {}",
        log.size_bytes()
    );
    vfs.crash(CrashMode::DropUnsynced);
    drop(log);

    let log = open_fault(&vfs, config.clone()).unwrap();
    let report = log.recovery_report().clone();
    assert!(!report.clean);
    assert_eq!(report.first_error, None, "zeros are not damage");
    assert_eq!(report.bytes_truncated, 0);
    let got: Vec<Record> = read_all(&log)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert_eq!(got, written);
    assert_eq!(vfs.file_len(&active).unwrap(), log.size_bytes());

    // Sealing and a clean close leave no zeros behind.
    for n in 40..200 {
        log.append(&[record(n)]).unwrap();
    }
    log.close().unwrap();
    drop(log);
    let report = verify_log_dir(&vfs, &log_dir()).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let files: u64 = segment_paths(&vfs, &log_dir())
        .iter()
        .map(|p| vfs.file_len(p).unwrap())
        .sum();
    assert!(segment_paths(&vfs, &log_dir()).len() > 1);
    assert_eq!(files, report.bytes, "every segment ends at its last batch");
    let log = open_fault(&vfs, config).unwrap();
    assert!(log.recovery_report().clean);
    assert_eq!(log.next_offset(), 200);
}

/// Build a log with sealed segments and a few batches in the active one; returns the file
/// system, every record written, and the active segment's batch boundaries.
fn log_with_tail(clean_close: bool) -> (FaultVfs, Vec<Record>, Vec<u64>) {
    let vfs = FaultVfs::new(99);
    let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
    let mut written = Vec::new();
    for n in 0..60 {
        let batch = vec![record(n), record(n + 500)];
        log.append(&batch).unwrap();
        written.extend(batch);
    }
    // A fresh active segment with exactly four batches.
    log.roll().unwrap();
    let mut boundaries = vec![0];
    for n in 0..4 {
        let batch = vec![record(700 + n), record(800 + n)];
        log.append(&batch).unwrap();
        written.extend(batch);
        boundaries.push(log.size_bytes() - sealed_bytes(&vfs));
    }
    if clean_close {
        log.close().unwrap();
    } else {
        vfs.crash(CrashMode::DropUnsynced);
    }
    drop(log);
    (vfs, written, boundaries)
}

fn sealed_bytes(vfs: &FaultVfs) -> u64 {
    let paths = segment_paths(vfs, &log_dir());
    paths[..paths.len() - 1]
        .iter()
        .map(|p| vfs.file_len(p).unwrap())
        .sum()
}

#[test]
fn a_tail_cut_at_every_byte_recovers_to_the_last_whole_batch() {
    for clean_close in [false, true] {
        let (base_fs, written, boundaries) = log_with_tail(clean_close);
        let active = segment_paths(&base_fs, &log_dir()).pop().unwrap();
        let sealed_records = written.len() as u64 - 8;
        let end = *boundaries.last().unwrap();
        for cut in 0..=end {
            let vfs = base_fs.durable_copy(cut);
            vfs.truncate_durable(&active, cut).unwrap();
            let at_boundary = boundaries.contains(&cut);
            let report = verify_log_dir(&vfs, &log_dir()).unwrap();
            assert_eq!(
                report.is_clean(),
                at_boundary,
                "cut {cut}: verify {:?}",
                report.problems
            );
            let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
            let whole_batches = boundaries.iter().filter(|&&b| b <= cut).count() as u64 - 1;
            assert_eq!(
                log.next_offset(),
                sealed_records + whole_batches * 2,
                "cut {cut}"
            );
            let got = read_all(&log).unwrap();
            assert!(
                got.iter().all(|(o, r)| *r == written[*o as usize]),
                "cut {cut}"
            );
            assert_eq!(
                log.recovery_report().bytes_truncated,
                cut - boundaries[whole_batches as usize]
            );
            // The repaired log takes new appends and checks clean.
            log.append(&[record(1)]).unwrap();
            drop(log);
            assert!(
                verify_log_dir(&vfs, &log_dir()).unwrap().is_clean(),
                "cut {cut}: repaired"
            );
        }
    }
}

/// Read each offset alone; every answer is either the right record or an error.
fn reads_are_right_or_refused(log: &Log, written: &[Record]) -> u64 {
    let mut refused = 0;
    for offset in 0..written.len() as u64 {
        match log.read(offset, 1) {
            Ok(result) => {
                let r = result.records().next().expect("a record at every offset");
                assert_eq!(r.offset, offset);
                assert_eq!(
                    r.to_record(),
                    written[offset as usize],
                    "corrupt data served at {offset}"
                );
            }
            Err(Error::Corrupt { .. }) => refused += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    refused
}

#[test]
fn bit_flips_in_sealed_segments_are_reported_and_never_served() {
    let (base_fs, written, _) = log_with_tail(true);
    let segments = segment_paths(&base_fs, &log_dir());
    let target = &segments[1];
    let len = base_fs.file_len(target).unwrap();
    for byte in (0..len).step_by(23) {
        let vfs = base_fs.durable_copy(byte);
        vfs.flip_bit(target, byte, (byte % 8) as u8).unwrap();
        let report = verify_log_dir(&vfs, &log_dir()).unwrap();
        assert!(
            report.problems.iter().any(|p| &p.path == target),
            "byte {byte}: {:?}",
            report.problems
        );
        let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
        assert!(
            reads_are_right_or_refused(&log, &written) > 0,
            "byte {byte}: the damaged batch is refused"
        );
    }
}

#[test]
fn bit_flips_in_the_active_segment_are_refused_then_cut_by_recovery() {
    let (base_fs, written, boundaries) = log_with_tail(true);
    let active = segment_paths(&base_fs, &log_dir()).pop().unwrap();
    let sealed_records = written.len() as u64 - 8;
    for byte in (0..*boundaries.last().unwrap()).step_by(7) {
        let vfs = base_fs.durable_copy(byte);
        let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
        // Damage under a running log: reads of that batch fail, nothing wrong is served.
        vfs.flip_bit(&active, byte, 3).unwrap();
        assert!(
            reads_are_right_or_refused(&log, &written) > 0,
            "byte {byte}"
        );
        assert!(!verify_log_dir(&vfs, &log_dir()).unwrap().is_clean());
        // After a crash, recovery cuts the log at the damaged batch.
        vfs.crash(CrashMode::DropUnsynced);
        drop(log);
        let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
        let damaged_batch = boundaries.iter().filter(|&&b| b <= byte).count() as u64 - 1;
        assert_eq!(
            log.next_offset(),
            sealed_records + damaged_batch * 2,
            "byte {byte}"
        );
        assert_eq!(
            reads_are_right_or_refused(&log, &written[..log.next_offset() as usize]),
            0
        );
    }
}

#[test]
fn a_failed_fsync_is_never_acknowledged_and_poisons_the_log() {
    for durability in [Durability::Always, Durability::Never] {
        let vfs = FaultVfs::new(11);
        let log = open_fault(&vfs, small_config(durability)).unwrap();
        for n in 0..10 {
            log.append(&[record(n)]).unwrap();
        }
        if durability == Durability::Never {
            log.close().unwrap();
            drop(log);
            continue;
        }
        vfs.fail_next_syncs(1);
        let err = log.append(&[record(10)]).unwrap_err();
        assert!(
            matches!(err, Error::Io(ref e) if e.raw_os_error() == Some(5)),
            "{err}"
        );
        // Linux dropped the dirty pages; a retry would "succeed" without them. So: no retries.
        assert!(matches!(log.append(&[record(11)]), Err(Error::PreviousIo)));
        assert!(matches!(log.roll(), Err(Error::PreviousIo)));
        assert_eq!(
            read_all(&log).unwrap().len(),
            10,
            "reads of durable data still work"
        );
        vfs.crash(CrashMode::DropUnsynced);
        drop(log);
        let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
        let got = read_all(&log).unwrap();
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|(o, r)| *r == record(*o)));
    }
}

#[test]
fn a_failed_fsync_during_roll_fails_the_log_safely() {
    let vfs = FaultVfs::new(12);
    let log = open_fault(&vfs, small_config(Durability::Never)).unwrap();
    log.append(&[record(1)]).unwrap();
    vfs.fail_next_syncs(1);
    assert!(log.roll().is_err());
    assert!(matches!(log.append(&[record(2)]), Err(Error::PreviousIo)));
    vfs.crash(CrashMode::DropUnsynced);
    drop(log);
    let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
    assert!(log.next_offset() <= 1);
}

#[test]
fn no_space_left_without_buffering_fails_the_append_and_leaves_the_log_usable() {
    // Under `never` each append is written at once: the failed write is undone.
    let vfs = FaultVfs::new(13);
    let log = open_fault(&vfs, small_config(Durability::Never)).unwrap();
    for n in 0..5 {
        log.append(&[record(n)]).unwrap();
    }
    vfs.set_write_budget(Some(60));
    let err = log.append(&[record(299)]).unwrap_err();
    assert!(
        matches!(err, Error::Io(ref e) if e.kind() == std::io::ErrorKind::StorageFull),
        "{err}"
    );
    assert_eq!(log.next_offset(), 5, "the failed append took no offset");
    vfs.set_write_budget(None);
    assert_eq!(log.append(&[record(5)]).unwrap().base_offset, 5);
    log.close().unwrap();
    drop(log);
    let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
    let got = read_all(&log).unwrap();
    assert_eq!(got.len(), 6);
    assert!(
        got.iter().all(|(o, r)| *r == record(*o)),
        "the partial write left no trace"
    );
    drop(log);
    assert!(verify_log_dir(&vfs, &log_dir()).unwrap().is_clean());
}

#[test]
fn no_space_left_under_group_write_fails_every_waiting_append_and_the_log() {
    // Under `always` appends are written together before the fsync: an ENOSPC there fails
    // all of them (none was acknowledged) and the log, which must be reopened.
    let vfs = FaultVfs::new(14);
    let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
    for n in 0..5 {
        log.append(&[record(n)]).unwrap();
    }
    vfs.set_write_budget(Some(60));
    let first = log.append_without_waiting(&[record(5)]).unwrap();
    let second = log.append_without_waiting(&[record(6)]).unwrap();
    let err = log.wait_until_durable(second.next_offset).unwrap_err();
    assert!(
        matches!(err, Error::Io(ref e) if e.kind() == std::io::ErrorKind::StorageFull),
        "{err}"
    );
    assert!(matches!(
        log.wait_until_durable(first.next_offset),
        Err(Error::PreviousIo)
    ));
    assert!(matches!(log.append(&[record(7)]), Err(Error::PreviousIo)));
    vfs.set_write_budget(None);
    vfs.crash(CrashMode::TornWrites);
    drop(log);
    let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
    let got = read_all(&log).unwrap();
    assert_eq!(
        got.len(),
        5,
        "acknowledged records are there, the failed ones are not"
    );
    assert!(got.iter().all(|(o, r)| *r == record(*o)));
    assert_eq!(
        log.append(&[record(5)]).unwrap().base_offset,
        5,
        "reopened, the log takes appends"
    );
    drop(log);
    assert!(verify_log_dir(&vfs, &log_dir()).unwrap().is_clean());
}

#[test]
fn a_crash_during_recovery_is_recovered_from() {
    for seed in 0..seeds() / 3 {
        let vfs = FaultVfs::new(seed);
        let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
        for n in 0..40 {
            log.append(&[record(n)]).unwrap();
        }
        // Unsynced junk for recovery to cut, and a recovery point to move.
        let config = small_config(Durability::Never);
        drop(log);
        let log = open_fault(&vfs, config.clone()).unwrap();
        for n in 40..45 {
            log.append(&[record(n)]).unwrap();
        }
        vfs.crash(CrashMode::TornWrites);
        drop(log);
        // Power fails again at every step of the recovery itself.
        vfs.power_loss_after(seed % 25);
        let attempt = open_fault(&vfs, config.clone());
        vfs.crash(CrashMode::TornWrites);
        drop(attempt);
        let log = open_fault(&vfs, config).unwrap();
        let got = read_all(&log).unwrap();
        assert!(got.len() >= 40, "seed {seed}: acknowledged records survive");
        assert!(got.iter().all(|(o, r)| *r == record(*o)), "seed {seed}");
    }
}

#[test]
fn leftover_temporary_and_orphan_files_are_cleaned_up() {
    let vfs = FaultVfs::new(14);
    let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
    log.append(&[record(1)]).unwrap();
    drop(log);
    let dir = log_dir();
    for name in [
        "recovery-point.tmp",
        "00000000000000000500.idx",
        "00000000000000000500.tix",
    ] {
        vfs.open(&dir.join(name), OpenMode::CreateNew)
            .unwrap()
            .write_at(b"junk", 0)
            .unwrap();
    }
    let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
    assert_eq!(read_all(&log).unwrap().len(), 1);
    for name in ["recovery-point.tmp", "00000000000000000500.idx"] {
        assert!(!vfs.exists(&dir.join(name)), "{name} removed");
    }
}
