//! The log's API on the real file system and on the fault-injecting one: appends, reads,
//! iteration, timestamps, rolling, retention, visibility and reopening.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{open_fault, read_all, record, small_config};
use potok::storage::io::{FaultVfs, OpenMode, OsVfs, VFile, Vfs};
use potok::storage::verify::verify_log_dir;
use potok::storage::{Durability, Error, Log, LogConfig, Record, Retention};

fn temp_log(config: LogConfig) -> (tempfile::TempDir, Log) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path().join("log"), config).unwrap();
    (dir, log)
}

#[test]
fn appends_get_dense_offsets_and_read_back_identically() {
    let (_dir, log) = temp_log(small_config(Durability::Always));
    let mut expected = Vec::new();
    for n in 0..200u64 {
        let batch: Vec<Record> = (0..(n % 5 + 1)).map(|i| record(n * 10 + i)).collect();
        let info = log.append(&batch).unwrap();
        assert_eq!(info.base_offset, expected.len() as u64);
        assert_eq!(info.next_offset, info.base_offset + batch.len() as u64);
        expected.extend(batch);
    }
    assert!(log.segment_count() > 5, "small segments roll");
    let got = read_all(&log).unwrap();
    assert_eq!(got.len(), expected.len());
    for (i, (offset, r)) in got.iter().enumerate() {
        assert_eq!(*offset, i as u64);
        assert_eq!(r, &expected[i]);
    }
    // Reading from every offset starts exactly there.
    for from in (0..expected.len() as u64).step_by(7) {
        let result = log.read(from, 1).unwrap();
        assert_eq!(result.records().next().unwrap().offset, from);
    }
    assert!(log.read(expected.len() as u64, 1 << 20).unwrap().is_empty());
    assert!(log.read(u64::MAX, 1 << 20).unwrap().is_empty());
}

#[test]
fn read_respects_max_bytes_but_always_makes_progress() {
    let (_dir, log) = temp_log(LogConfig {
        durability: Durability::Never,
        ..LogConfig::default()
    });
    for n in 0..50 {
        log.append(&[Record::new(n, vec![1u8; 1000])]).unwrap();
    }
    let one = log.read(0, 1).unwrap();
    assert_eq!(one.batches.len(), 1);
    let some = log.read(0, 5000).unwrap();
    assert!(
        some.bytes() <= 5000 && some.batches.len() == 4,
        "{} batches",
        some.batches.len()
    );
    let all = log.read(0, u64::MAX).unwrap();
    assert_eq!(all.records().count(), 50);
}

#[test]
fn offsets_continue_across_clean_and_unclean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, small_config(Durability::Always)).unwrap();
    for n in 0..100 {
        log.append(&[record(n)]).unwrap();
    }
    log.close().unwrap();
    assert!(matches!(log.append(&[record(0)]), Err(Error::Closed)));
    drop(log);
    let log = Log::open(&path, small_config(Durability::Always)).unwrap();
    assert!(log.recovery_report().clean);
    assert_eq!(log.recovery_report().segments_scanned, 0);
    assert_eq!(log.next_offset(), 100);
    assert_eq!(log.append(&[record(100)]).unwrap().base_offset, 100);
    // Dropping without close is a clean close too; forgetting is an unclean stop.
    std::mem::forget(log);
    let log = Log::open(&path, small_config(Durability::Always)).unwrap();
    assert!(!log.recovery_report().clean);
    assert_eq!(
        log.recovery_report().segments_scanned,
        1,
        "only the tail is scanned"
    );
    assert_eq!(log.next_offset(), 101);
    let got = read_all(&log).unwrap();
    assert_eq!(got.len(), 101);
    assert!(got.iter().all(|(o, r)| *r == record(*o)));
    drop(log);
    let report = verify_log_dir(&OsVfs, &path).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.records, 101);
}

/// Every lookup agrees with a scan of the timestamps in append order.
fn check_lookups(log: &Log, timestamps: &[i64], targets: impl Iterator<Item = i64>) {
    for target in targets {
        let expected = timestamps
            .iter()
            .position(|&t| t >= target)
            .map(|p| p as u64);
        assert_eq!(
            log.offset_for_timestamp(target).unwrap(),
            expected,
            "target {target}"
        );
    }
}

#[test]
fn timestamp_lookup_matches_brute_force_with_unordered_clocks() {
    let vfs = FaultVfs::new(1);
    let log = open_fault(&vfs, small_config(Durability::Never)).unwrap();
    let mut timestamps = Vec::new();
    for n in 0..400i64 {
        // A clock that mostly advances but jumps back now and then.
        let ts = n * 10 - if n % 17 == 0 { 500 } else { 0 };
        timestamps.push(ts);
        log.append(&[Record::new(ts, vec![0u8; 40])]).unwrap();
    }
    assert!(log.segment_count() > 3);
    check_lookups(&log, &timestamps, -600..4200);
    // Also after reopening, when sealed indexes come from their files.
    log.close().unwrap();
    let log = open_fault(&vfs, small_config(Durability::Never)).unwrap();
    check_lookups(&log, &timestamps, (-600..4200).step_by(29));
}

#[test]
fn under_always_readers_see_only_durable_records() {
    let vfs = FaultVfs::new(2);
    let log = open_fault(&vfs, small_config(Durability::Always)).unwrap();
    log.append(&[record(0)]).unwrap();
    let info = log.append_without_waiting(&[record(1)]).unwrap();
    assert_eq!(log.next_offset(), 2);
    assert_eq!(log.visible_next_offset(), 1, "written but not yet synced");
    assert_eq!(read_all(&log).unwrap().len(), 1);
    log.wait_until_durable(info.next_offset).unwrap();
    assert_eq!(read_all(&log).unwrap().len(), 2);
    assert!(matches!(
        log.wait_until_durable(3),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn the_visibility_listener_runs_when_records_become_visible() {
    use std::sync::atomic::{AtomicU64, Ordering};
    for durability in [
        Durability::Always,
        Durability::Never,
        Durability::Interval(Duration::from_millis(2)),
    ] {
        let vfs = FaultVfs::new(10);
        let log = open_fault(&vfs, small_config(durability)).unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&calls);
        let seen = log.clone();
        log.set_visibility_listener(Arc::new(move || {
            assert!(
                seen.visible_next_offset() > 0,
                "called only once something is visible"
            );
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        log.append(&[record(0)]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "{durability}: listener never ran"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(log.visible_next_offset(), 1);
        // The listener holds a clone of the log; break the cycle.
        log.set_visibility_listener(Arc::new(|| {}));
    }
}

#[test]
fn interval_durability_syncs_in_the_background() {
    let vfs = FaultVfs::new(3);
    let config = small_config(Durability::Interval(Duration::from_millis(5)));
    let log = open_fault(&vfs, config).unwrap();
    log.append(&[record(0)]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.visible_next_offset() < 1 {
        assert!(Instant::now() < deadline, "the flusher never synced");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Visible means durable: it survives a crash.
    vfs.crash(potok::storage::io::CrashMode::DropUnsynced);
    drop(log);
    let log = open_fault(&vfs, small_config(Durability::Never)).unwrap();
    assert_eq!(read_all(&log).unwrap(), vec![(0, record(0))]);
}

#[test]
fn concurrent_appenders_share_fsyncs_and_lose_nothing() {
    let (_dir, log) = temp_log(LogConfig {
        segment_bytes_max: 64 * 1024,
        ..LogConfig::default()
    });
    let threads = 8;
    let per_thread = 100u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| {
                        let r = Record::new(i as i64, format!("{t}:{i}")).with_key(format!("{t}"));
                        (log.append(&[r]).unwrap().base_offset, t, i)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<(u64, u64, u64)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    acked.sort();
    let got = read_all(&log).unwrap();
    assert_eq!(got.len() as u64, threads * per_thread);
    for ((offset, t, i), (got_offset, r)) in acked.iter().zip(&got) {
        assert_eq!(offset, got_offset);
        assert_eq!(r.body, format!("{t}:{i}").as_bytes());
    }
}

#[test]
fn bad_appends_are_refused_and_change_nothing() {
    let vfs = FaultVfs::new(4);
    let config = LogConfig {
        batch_bytes_max: 4096,
        ..small_config(Durability::Always)
    };
    let log = open_fault(&vfs, config).unwrap();
    log.append(&[record(1)]).unwrap();
    assert!(matches!(log.append(&[]), Err(Error::InvalidArgument(_))));
    let huge = Record::new(0, vec![0u8; 5000]);
    assert!(matches!(
        log.append(&[huge]),
        Err(Error::BatchTooLarge { .. })
    ));
    assert!(matches!(
        log.truncate_before(99),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(log.next_offset(), 1);
    assert_eq!(read_all(&log).unwrap(), vec![(0, record(1))]);
    let bad_config = LogConfig {
        segment_bytes_max: 1,
        ..LogConfig::default()
    };
    assert!(matches!(
        open_fault(&vfs, bad_config),
        Err(Error::Config(_))
    ));
}

#[test]
fn retention_by_bytes_records_and_age_deletes_whole_old_segments() {
    let vfs = FaultVfs::new(5);
    let log = open_fault(&vfs, small_config(Durability::Never)).unwrap();
    for n in 0..300 {
        log.append(&[Record::new(n, vec![9u8; 100])]).unwrap();
    }
    let segments = log.segment_count();
    assert!(segments > 5);
    drop(log);

    let reopen_with = |retention: Retention| {
        let config = LogConfig {
            retention,
            ..small_config(Durability::Never)
        };
        open_fault(&vfs, config).unwrap()
    };

    // By records: keep at least 100.
    let log = reopen_with(Retention {
        records_max: Some(100),
        ..Default::default()
    });
    let report = log.enforce_retention().unwrap();
    assert!(report.segments_deleted > 0);
    let kept = log.next_offset() - log.start_offset();
    assert!(kept >= 100, "kept {kept}");
    assert_eq!(
        read_all(&log).unwrap().first().unwrap().0,
        log.start_offset()
    );
    drop(log);

    // By bytes: keep at least 2000 bytes.
    let log = reopen_with(Retention {
        bytes_max: Some(2000),
        ..Default::default()
    });
    log.enforce_retention().unwrap();
    assert!(
        log.size_bytes() >= 2000 && log.size_bytes() < 2000 + 4096 + 200,
        "{}",
        log.size_bytes()
    );
    drop(log);

    // By age: all timestamps are ancient (1970), so every sealed segment goes.
    let log = reopen_with(Retention {
        age_max: Some(Duration::from_secs(60)),
        ..Default::default()
    });
    log.enforce_retention().unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.next_offset(), 300);
    // Offsets are never reused, also after reopening with only the active segment left.
    drop(log);
    let log = open_fault(&vfs, small_config(Durability::Never)).unwrap();
    assert_eq!(log.append(&[record(1)]).unwrap().base_offset, 300);
    assert!(verify_log_dir(&vfs, &common::log_dir()).unwrap().is_clean());
}

#[test]
fn truncate_before_frees_acknowledged_segments_only() {
    let vfs = FaultVfs::new(6);
    let log = open_fault(&vfs, small_config(Durability::Never)).unwrap();
    for n in 0..200 {
        log.append(&[Record::new(n, vec![1u8; 100])]).unwrap();
    }
    let size = log.size_bytes();
    let report = log.truncate_before(120).unwrap();
    assert!(report.segments_deleted > 0);
    assert!(
        log.start_offset() <= 120,
        "never deletes unacknowledged records"
    );
    assert_eq!(size - log.size_bytes(), report.bytes_freed);
    assert_eq!(report.records_deleted, log.start_offset());
    let got = read_all(&log).unwrap();
    assert_eq!(got.first().unwrap().0, log.start_offset());
    assert_eq!(got.len() as u64, 200 - log.start_offset());
    // Reading below the start begins at the start.
    assert_eq!(
        log.read(0, 1).unwrap().records().next().unwrap().offset,
        log.start_offset()
    );
    log.truncate_before(200).unwrap();
    assert_eq!(log.segment_count(), 1, "only the active segment is left");
}

#[test]
fn segments_roll_by_age() {
    let vfs = FaultVfs::new(7);
    let config = LogConfig {
        segment_age_max: Some(Duration::from_millis(1)),
        ..small_config(Durability::Never)
    };
    let log = open_fault(&vfs, config).unwrap();
    log.append(&[record(0)]).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    log.append(&[record(1)]).unwrap();
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn damaged_or_missing_index_files_are_rebuilt() {
    let vfs = FaultVfs::new(8);
    let log = open_fault(&vfs, small_config(Durability::Never)).unwrap();
    for n in 0..200 {
        log.append(&[record(n)]).unwrap();
    }
    log.close().unwrap();
    drop(log);
    let dir = common::log_dir();
    let segments = common::segment_paths(&vfs, &dir);
    // Remove one index, corrupt another, make a third stale.
    vfs.remove_file(&segments[0].with_extension("idx")).unwrap();
    vfs.flip_bit(&segments[1].with_extension("tix"), 45, 2)
        .unwrap();
    let stale = vfs
        .open(
            &segments[2].with_extension("idx"),
            potok::storage::io::OpenMode::ReadWrite,
        )
        .unwrap();
    stale.write_at(&[0xff; 8], 24).unwrap();
    let report = verify_log_dir(&vfs, &dir).unwrap();
    assert!(!report.is_clean(), "corrupt indexes are reported");
    let log = open_fault(&vfs, small_config(Durability::Never)).unwrap();
    let got = read_all(&log).unwrap();
    assert_eq!(got.len(), 200);
    assert!(got.iter().all(|(o, r)| *r == record(*o)));
    for target in [0, 50, 99, 150] {
        assert_eq!(
            log.read(target, 1)
                .unwrap()
                .records()
                .next()
                .unwrap()
                .offset,
            target
        );
    }
    drop(log);
    let report = verify_log_dir(&vfs, &dir).unwrap();
    assert!(
        report.is_clean(),
        "rebuilt indexes were written back: {:?}",
        report.problems
    );
}

#[test]
fn os_and_fault_backends_behave_alike() {
    // The same operations through both backends give the same records and offsets.
    let dir = tempfile::tempdir().unwrap();
    let os: Arc<dyn Vfs> = Arc::new(OsVfs);
    let fault: Arc<dyn Vfs> = Arc::new(FaultVfs::new(9));
    let mut results = Vec::new();
    for (vfs, path) in [(os, dir.path().join("log")), (fault, common::log_dir())] {
        let log =
            Log::open_with(Arc::clone(&vfs), &path, small_config(Durability::Always)).unwrap();
        for n in 0..120 {
            log.append(&[record(n), record(n + 1000)]).unwrap();
        }
        log.truncate_before(50).unwrap();
        results.push((
            read_all(&log).unwrap(),
            log.segment_count(),
            log.size_bytes(),
        ));
    }
    assert_eq!(results[0], results[1]);
}

/// Bytes in the log's segment files, as the file system sees them.
fn segment_file_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .map(|path| std::fs::metadata(path).unwrap().len())
        .sum()
}

/// The real file system, with the background zero-fill thread tampered with: slow to start
/// each write (the appends then catch up with it, which is when it matters that they wait for
/// it), or failing every write-back.
#[derive(Default)]
struct ZeroFillHooks {
    slow: bool,
    fail: bool,
    write_backs: std::sync::atomic::AtomicUsize,
}

struct HookedVfs(Arc<ZeroFillHooks>);

struct HookedFile(Arc<dyn VFile>, Arc<ZeroFillHooks>);

fn on_zero_fill_thread() -> bool {
    std::thread::current().name() == Some("potok-zero-fill")
}

impl Vfs for HookedVfs {
    fn open(&self, path: &std::path::Path, mode: OpenMode) -> std::io::Result<Arc<dyn VFile>> {
        Ok(Arc::new(HookedFile(
            OsVfs.open(path, mode)?,
            Arc::clone(&self.0),
        )))
    }
    fn remove_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        OsVfs.remove_file(path)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        OsVfs.rename(from, to)
    }
    fn list_dir(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        OsVfs.list_dir(dir)
    }
    fn list_subdirs(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        OsVfs.list_subdirs(dir)
    }
    fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
        OsVfs.create_dir_all(dir)
    }
    fn remove_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
        OsVfs.remove_dir_all(dir)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        OsVfs.sync_dir(dir)
    }
    fn exists(&self, path: &std::path::Path) -> bool {
        OsVfs.exists(path)
    }
    fn sync_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
        OsVfs.sync_all(dir)
    }
}

impl VFile for HookedFile {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
        self.0.read_at(buf, pos)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> std::io::Result<()> {
        if self.1.slow && on_zero_fill_thread() {
            std::thread::sleep(Duration::from_millis(3));
        }
        self.0.write_at(buf, pos)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }
    fn write_back(&self, pos: u64, len: u64) -> std::io::Result<()> {
        if on_zero_fill_thread() {
            self.1
                .write_backs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.1.fail {
                return Err(std::io::Error::other("injected write-back failure"));
            }
        }
        self.0.write_back(pos, len)
    }
    fn map(&self) -> std::io::Result<bytes::Bytes> {
        self.0.map()
    }
}

/// A background zero-fill that fails is not retried for that segment: the writes zero-fill in
/// line from then on, and nothing is lost.
#[test]
fn a_failed_background_zero_fill_falls_back_to_zero_filling_in_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let config = LogConfig {
        preallocate_bytes_max: 16 * 1024,
        ..LogConfig::default()
    };
    let hooks = Arc::new(ZeroFillHooks {
        fail: true,
        ..ZeroFillHooks::default()
    });
    let log = Log::open_with(Arc::new(HookedVfs(Arc::clone(&hooks))), &path, config).unwrap();
    for n in 0..400 {
        log.append(&[record(n)]).unwrap();
    }
    assert_eq!(log.segment_count(), 1);
    let got: Vec<Record> = read_all(&log)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert!(got == (0..400).map(record).collect::<Vec<_>>());
    assert_eq!(
        hooks.write_backs.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one failed attempt, then no more for this segment"
    );
}

/// On the real file system the zeros ahead of the writes are mostly written by a background
/// thread while appends go on (here a slowed-down one). Concurrent appends across many rolls
/// must read back intact (so no zero-fill ever lands on data), and sealing and closing must
/// wait for a zero-fill in flight before cutting the zeros off.
#[test]
fn background_zero_fill_never_touches_data_and_is_cut_at_seal_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let config = LogConfig {
        segment_bytes_max: 64 * 1024,
        preallocate_bytes_max: 16 * 1024,
        ..LogConfig::default()
    };
    let vfs: Arc<dyn Vfs> = Arc::new(HookedVfs(Arc::new(ZeroFillHooks {
        slow: true,
        ..ZeroFillHooks::default()
    })));
    let log = Log::open_with(Arc::clone(&vfs), &path, config.clone()).unwrap();
    let threads = 4u64;
    let per_thread = 600u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    log.append(&[record(t * per_thread + i)]).unwrap();
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    let segments = log.segment_count();
    assert!(
        segments > 3,
        "the test must cross several rolls: {segments}"
    );
    assert!(segment_file_bytes(&path) >= log.size_bytes());
    let mut bodies: Vec<Record> = read_all(&log)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert_eq!(bodies.len() as u64, threads * per_thread);
    let size = log.size_bytes();
    log.close().unwrap();
    drop(log);
    // A zero-fill that sealing or closing failed to wait for would land after this pause.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(segment_file_bytes(&path), size, "no zeros left");
    let report = verify_log_dir(&OsVfs, &path).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);

    let log = Log::open_with(vfs, &path, config).unwrap();
    assert!(log.recovery_report().clean);
    let mut again: Vec<Record> = read_all(&log)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    // `record(n)` has a distinct timestamp for every n used here.
    let key = |r: &Record| r.timestamp_ms;
    bodies.sort_by_key(key);
    again.sort_by_key(key);
    let mut expected: Vec<Record> = (0..threads * per_thread).map(record).collect();
    expected.sort_by_key(key);
    assert!(
        again == expected,
        "every record back intact after reopening"
    );
    assert!(bodies == expected, "every record intact before closing");
}
