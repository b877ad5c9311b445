//! The segmented log: appends, reads, rolling, durability and retention.
//!
//! Concurrency, in three locks taken in this order and never held across each other's waits:
//! - `writer` (a `Mutex`) serializes appends, rolls, retention and close. It is held during the
//!   write system call, never during `fsync` of appends.
//! - `shared` (an `RwLock`) holds what readers need: the segment list, the active segment's
//!   in-memory index and its written/visible ends. It is held only for memory operations, so a
//!   reader never waits for disk I/O of the writer and the writer never waits for a reader's.
//! - `sync` (a `Mutex` + `Condvar`) runs group commit: the first appender that needs durability
//!   becomes the leader, snapshots how far the active segment is written, fsyncs once and wakes
//!   everyone whose data that covered. Appends that arrive meanwhile wait for the next round.
//!
//! Readers see only records that are durable under the log's policy (`visible`), so a consumer
//! is never handed a record that a crash could take back.
//!
//! Files: this one holds the types, the API, appends, rolls, retention and close;
//! [`durability`] the group commit and visibility; [`read`] the read path.

mod durability;
mod read;

pub(crate) use read::ITER_READ_BYTES;
pub use read::{LogIter, ReadBatches};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::batch::{encode_batch, encoded_batch_len, BatchView};
use super::config::{Durability, LogConfig};
use super::error::{Error, Result};
use super::index::SegmentIndex;
use super::io::{write_atomically, OpenMode, VFile, Vfs};
use super::meta::{CleanShutdown, RecoveryPoint, CLEAN_SHUTDOWN_FILE, RECOVERY_POINT_FILE};
use super::record::{Record, RecordView};
use super::recovery::{create_segment, now_ms, recover, ActiveState, RecoveryReport};
use super::retention::{self, Totals};
use super::segment::{
    segment_file_name, write_index_files, SealedSegment, SegmentBytes, SegmentRead, LOG_EXTENSION,
};

/// Offsets an append was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: u64,
    /// One past the last record appended.
    pub next_offset: u64,
}

/// Batches returned by [`Log::read`], in offset order.
#[derive(Clone, Debug, Default)]
pub struct ReadResult {
    pub batches: Vec<BatchView>,
}

impl ReadResult {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    pub fn records(&self) -> impl Iterator<Item = RecordView<'_>> {
        self.batches.iter().flat_map(BatchView::records)
    }

    /// Offset to read from next, if anything was returned.
    pub fn next_offset(&self) -> Option<u64> {
        self.batches.last().map(BatchView::next_offset)
    }

    /// Total batch bytes returned.
    pub fn bytes(&self) -> u64 {
        self.batches.iter().map(|b| b.bytes().len() as u64).sum()
    }
}

/// What a retention pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: u64,
    pub bytes_freed: u64,
    pub records_deleted: u64,
}

/// End of the written or visible part of the active segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct End {
    next_offset: u64,
    bytes: u64,
}

struct ActiveView {
    base_offset: u64,
    path: PathBuf,
    file: Arc<dyn VFile>,
    index: SegmentIndex,
    written: End,
    visible: End,
}

struct Shared {
    sealed: VecDeque<Arc<SealedSegment>>,
    active: ActiveView,
}

impl Shared {
    fn start_offset(&self) -> u64 {
        self.sealed
            .front()
            .map_or(self.active.base_offset, |s| s.base_offset)
    }
}

/// Writer-private state; only touched with the `writer` lock held.
struct Writer {
    started_ms: i64,
    encode_buf: Vec<u8>,
    /// Under `always`, encoded batches wait here and the next sync writes them all with one
    /// system call before its fsync. Nothing in it is visible or acknowledged, so a crash
    /// losing it loses nothing promised.
    pending: Vec<u8>,
    /// File position of `pending[0]`.
    pending_from: u64,
}

/// Bytes buffered under `always` before they are written even without a sync.
const PENDING_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The least zero-filled space added ahead of the writes at a time.
const PREALLOCATE_BYTES_MIN: u64 = 16 * 1024;

/// Writes to the active segment that run outside the writer lock: the sync leader's write of
/// buffered batches, and the background zero-fill ahead of the writes.
#[derive(Default)]
struct WriteInFlight {
    /// The sync leader is writing buffered batches.
    active: bool,
    /// The buffer the last write used, kept for the next swap.
    spare: Vec<u8>,
    /// Length of the active segment file: written bytes plus any zero-filled preallocated
    /// space after them (durably allocated when the background zero-fill put it there).
    file_bytes: u64,
    /// A background zero-fill is extending `file_bytes` to this.
    zero_fill_to: Option<u64>,
    /// A background zero-fill of this segment failed: the rest zero-fills in line.
    zero_fill_failed: bool,
}

/// [`WriteInFlight`] and its condition variable, shared with the background zero-fill.
struct Flight {
    state: Mutex<WriteInFlight>,
    /// Signalled whenever a write or zero-fill in flight finishes.
    done: Condvar,
}

struct SyncState {
    durable_next_offset: u64,
    leader_active: bool,
}

struct LogInner {
    dir: PathBuf,
    vfs: Arc<dyn Vfs>,
    config: LogConfig,
    writer: Mutex<Writer>,
    shared: RwLock<Shared>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    flight: Arc<Flight>,
    failed: AtomicBool,
    closed: AtomicBool,
    recovery: RecoveryReport,
    /// Called (without locks held) whenever records become visible to readers.
    visibility_listener: Mutex<Option<VisibilityListener>>,
    /// The durable next offset, for async waiters.
    durable_watch: tokio::sync::watch::Sender<u64>,
}

/// A callback run when new records become visible (to wake blocked readers).
pub type VisibilityListener = Arc<dyn Fn() + Send + Sync>;

/// A segmented, append-only, crash-safe log. Cheap to clone; clones share the log.
///
/// ```
/// use potok::storage::{Durability, Log, LogConfig, Record};
///
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("orders");
/// let log = Log::open(&path, LogConfig { durability: Durability::Always, ..LogConfig::default() })?;
/// let record = Record::new(1_700_000_000_000, "hello").with_key("k").with_header("h", "v");
/// let info = log.append(&[record])?; // returned after fdatasync (group commit)
/// for r in log.read(info.base_offset, 1 << 20)?.records() {
///     assert_eq!((r.offset, r.body), (0, &b"hello"[..]));
/// }
/// assert_eq!(log.offset_for_timestamp(1_600_000_000_000)?, Some(0));
/// log.close()?; // or just drop it
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Log {
    inner: Arc<LogInner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning means a panic elsewhere; the state itself is kept consistent by the code that
    // mutates it, so carrying on is correct.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Log {
    /// Open the log in `dir` on the real file system, creating it if needed.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        Log::open_with(Arc::new(super::io::OsVfs), dir, config)
    }

    /// Open the log through any [`Vfs`] (tests pass a `FaultVfs`).
    pub fn open_with(vfs: Arc<dyn Vfs>, dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let recovered = recover(&*vfs, &dir, &config)?;
        let ActiveState {
            base_offset,
            path,
            file,
            index,
            started_ms,
        } = recovered.active;
        let end = End {
            next_offset: index.next_offset,
            bytes: index.covered_bytes,
        };
        let shared = Shared {
            sealed: recovered.sealed,
            active: ActiveView {
                base_offset,
                path,
                file,
                index,
                written: end,
                visible: end,
            },
        };
        let inner = Arc::new(LogInner {
            dir,
            vfs,
            writer: Mutex::new(Writer {
                started_ms,
                encode_buf: Vec::new(),
                pending: Vec::new(),
                pending_from: end.bytes,
            }),
            durable_watch: tokio::sync::watch::Sender::new(end.next_offset),
            shared: RwLock::new(shared),
            sync: Mutex::new(SyncState {
                durable_next_offset: end.next_offset,
                leader_active: false,
            }),
            synced: Condvar::new(),
            flight: Arc::new(Flight {
                state: Mutex::new(WriteInFlight {
                    // Recovery cut any preallocated space, and a clean close never leaves any.
                    file_bytes: end.bytes,
                    ..WriteInFlight::default()
                }),
                done: Condvar::new(),
            }),
            failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            recovery: recovered.report,
            visibility_listener: Mutex::new(None),
            config,
        });
        if let Durability::Interval(period) = inner.config.durability {
            durability::spawn_flusher(Arc::downgrade(&inner), period);
        }
        Ok(Log { inner })
    }

    /// Whether two handles are the same open log.
    pub fn same_log(&self, other: &Log) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    /// Run `listener` whenever records become visible: after the fsync that makes them durable
    /// (`always`, `interval`) or after the write (`never`). It runs on the thread that made them
    /// visible, with no lock held, so it must be quick (wake someone, do not read).
    pub fn set_visibility_listener(&self, listener: VisibilityListener) {
        *lock(&self.inner.visibility_listener) = Some(listener);
    }

    /// What opening the log found (clean or not, what was scanned and cut).
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// The first offset still stored.
    pub fn start_offset(&self) -> u64 {
        self.inner.read_shared().start_offset()
    }

    /// One past the last record written (durable or not).
    pub fn next_offset(&self) -> u64 {
        self.inner.read_shared().active.written.next_offset
    }

    /// One past the last record readers may see.
    pub fn visible_next_offset(&self) -> u64 {
        self.inner.read_shared().active.visible.next_offset
    }

    /// Bytes on disk over all segments.
    pub fn size_bytes(&self) -> u64 {
        let shared = self.inner.read_shared();
        shared.sealed.iter().map(|s| s.size_bytes()).sum::<u64>() + shared.active.written.bytes
    }

    pub fn segment_count(&self) -> usize {
        self.inner.read_shared().sealed.len() + 1
    }

    /// Append `records` as one batch and return their offsets. Under [`Durability::Always`] this
    /// returns only once the batch is on disk; an error means it may or may not be.
    pub fn append(&self, records: &[Record]) -> Result<AppendInfo> {
        let info = self.append_without_waiting(records)?;
        if self.inner.config.durability == Durability::Always {
            self.inner.wait_until_durable(info.next_offset)?;
        }
        Ok(info)
    }

    /// Write a batch without waiting for durability; pair with [`Log::wait_until_durable`]
    /// (this is how an async front end keeps its task free while group commit runs).
    pub fn append_without_waiting(&self, records: &[Record]) -> Result<AppendInfo> {
        self.inner.append(records)
    }

    /// Block until every offset below `next_offset` is durable (fsynced).
    pub fn wait_until_durable(&self, next_offset: u64) -> Result<()> {
        self.inner.wait_until_durable(next_offset)
    }

    /// [`Log::wait_until_durable`] for async callers: awaits without holding a thread. If no
    /// fsync is under way, one is started on the runtime's blocking pool (one per log at a
    /// time), so many waiting connections cost one thread, not one each.
    pub async fn wait_until_durable_async(&self, next_offset: u64) -> Result<()> {
        let written = self.next_offset();
        if next_offset > written {
            return Err(Error::InvalidArgument(format!(
                "cannot wait for offset {next_offset}: the log is written up to {written}"
            )));
        }
        let mut durable = self.inner.durable_watch.subscribe();
        loop {
            if *durable.borrow_and_update() >= next_offset {
                return Ok(());
            }
            if self.inner.failed.load(Ordering::Acquire) {
                return Err(Error::PreviousIo);
            }
            if self.inner.try_lead() {
                let inner = Arc::clone(&self.inner);
                tokio::task::spawn_blocking(move || inner.lead_sync_rounds());
            }
            if durable.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }

    /// A watch of the durable next offset (it also changes, without moving, when the log
    /// fails). Waiting on it never starts an fsync: see [`Log::sync_now`].
    pub fn subscribe_durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.durable_watch.subscribe()
    }

    /// Whether an earlier write or fsync failed (the log refuses writes until reopened).
    pub fn is_failed(&self) -> bool {
        self.inner.failed.load(Ordering::Acquire)
    }

    /// Make everything written so far durable, leading group-commit rounds (with
    /// [`LogConfig::group_commit_delay`] between busy rounds) until none is left to do.
    pub fn sync_now(&self) -> Result<()> {
        loop {
            let target = self.next_offset();
            if self.inner.sync_durable_next() >= target {
                return Ok(());
            }
            self.inner.wait_until_durable(target)?;
            if self.next_offset() > target && !self.inner.config.group_commit_delay.is_zero() {
                std::thread::sleep(self.inner.config.group_commit_delay);
            }
        }
    }

    /// Read visible batches holding offsets from `from` on (from the start if `from` precedes
    /// it), up to about `max_bytes` (at least one batch when any is available).
    pub fn read(&self, from: u64, max_bytes: u64) -> Result<ReadResult> {
        self.inner.read(from, max_bytes)
    }

    /// Iterate visible records from `from` on, as owned records with their offsets.
    pub fn iter(&self, from: u64) -> LogIter {
        LogIter::new(self.clone(), from)
    }

    /// The first visible offset whose record's timestamp is at or after `timestamp_ms`.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        self.inner.offset_for_timestamp(timestamp_ms)
    }

    /// Seal the active segment and start a new one (no-op when the active segment is empty).
    pub fn roll(&self) -> Result<()> {
        let mut writer = self.inner.lock_writer()?;
        self.inner.roll(&mut writer)
    }

    /// Delete old sealed segments according to the configured retention.
    pub fn enforce_retention(&self) -> Result<RetentionReport> {
        let _writer = self.inner.lock_writer()?;
        self.inner.enforce_retention(now_ms())
    }

    /// Delete every sealed segment whose records all precede `offset` (for queues, once they
    /// are acknowledged). The active segment is kept.
    pub fn truncate_before(&self, offset: u64) -> Result<RetentionReport> {
        let _writer = self.inner.lock_writer()?;
        if offset > self.next_offset() {
            return Err(Error::InvalidArgument(format!(
                "cannot truncate before {offset}: the log ends at {}",
                self.next_offset()
            )));
        }
        self.inner
            .delete_front_segments(|segment, _| segment.next_offset <= offset)
    }

    /// Sync, write the active segment's indexes and the clean-shutdown marker. Later appends
    /// fail with [`Error::Closed`]; reads keep working.
    pub fn close(&self) -> Result<()> {
        self.inner.close()
    }
}

impl LogInner {
    fn read_shared(&self) -> RwLockReadGuard<'_, Shared> {
        self.shared.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_shared(&self) -> RwLockWriteGuard<'_, Shared> {
        self.shared.write().unwrap_or_else(|e| e.into_inner())
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::PreviousIo);
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>> {
        let writer = lock(&self.writer);
        self.check_usable()?;
        Ok(writer)
    }

    /// Refuse all further writes: after a failed write or fsync the disk contents are unknown.
    fn fail(&self, error: impl Into<Error>) -> Error {
        let error = error.into();
        tracing::error!(dir = %self.dir.display(), error = %error, "log failed; reopen to recover");
        self.failed.store(true, Ordering::Release);
        let _sync = lock(&self.sync);
        self.synced.notify_all();
        self.durable_watch.send_modify(|_| {});
        error
    }

    fn append(&self, records: &[Record]) -> Result<AppendInfo> {
        if records.is_empty() {
            return Err(Error::InvalidArgument(
                "an append needs at least one record".into(),
            ));
        }
        let batch_bytes = encoded_batch_len(records);
        if batch_bytes > self.config.batch_bytes_max {
            return Err(Error::BatchTooLarge {
                bytes: batch_bytes,
                limit: self.config.batch_bytes_max,
            });
        }
        let mut writer = self.lock_writer()?;
        // One read of the shared state per append (a second only after a roll): these locks
        // are shared with the sync leader and readers on other cores, so each costs.
        let mut written = self.read_shared().active.written;
        let too_big = written.bytes + batch_bytes > self.config.segment_bytes_max;
        let too_old = self
            .config
            .segment_age_max
            .is_some_and(|age| now_ms() - writer.started_ms >= age.as_millis() as i64);
        if written.bytes > 0 && (too_big || too_old) {
            self.roll(&mut writer)?;
            written = self.read_shared().active.written;
        }
        let header = if self.config.durability == Durability::Always {
            if writer.pending.is_empty() {
                writer.pending_from = written.bytes;
            }
            let header = encode_batch(written.next_offset, records, &mut writer.pending);
            if writer.pending.len() >= PENDING_BYTES_MAX {
                self.flush_pending(&mut writer)?;
            }
            header
        } else {
            let file = Arc::clone(&self.read_shared().active.file);
            let mut buf = std::mem::take(&mut writer.encode_buf);
            buf.clear();
            let header = encode_batch(written.next_offset, records, &mut buf);
            let result = file.write_at(&buf, written.bytes);
            writer.encode_buf = buf;
            if let Err(e) = result {
                // Undo a partial write so the file ends at a batch boundary; if even that
                // fails, the file's contents are unknown and the log must be reopened.
                return Err(match file.set_len(written.bytes) {
                    Ok(()) => Error::Io(e),
                    Err(_) => self.fail(e),
                });
            }
            header
        };
        if written.bytes == 0 {
            writer.started_ms = if self.config.segment_age_max.is_some() {
                now_ms()
            } else {
                header.first_timestamp_ms
            };
        }
        let end = End {
            next_offset: header.next_offset(),
            bytes: written.bytes + u64::from(header.batch_len),
        };
        {
            let mut shared = self.write_shared();
            shared
                .active
                .index
                .observe(&header, written.bytes, self.config.index_interval_bytes);
            shared.active.written = end;
            if self.config.durability == Durability::Never {
                shared.active.visible = end;
            }
        }
        if self.config.durability == Durability::Never {
            self.notify_visible();
        }
        Ok(AppendInfo {
            base_offset: header.base_offset,
            next_offset: end.next_offset,
        })
    }

    /// Seal the active segment and open a new one. Each step is ordered for crash safety:
    /// the old segment and its indexes are durable before the recovery point moves past it.
    fn roll(&self, writer: &mut Writer) -> Result<()> {
        self.flush_pending(writer)?;
        let (file, path, base, written, mut index) = {
            let shared = self.read_shared();
            let a = &shared.active;
            (
                Arc::clone(&a.file),
                a.path.clone(),
                a.base_offset,
                a.written,
                a.index.clone(),
            )
        };
        if written.bytes == 0 {
            return Ok(());
        }
        let file_bytes = self.file_bytes();
        let step = || -> std::io::Result<(Arc<SealedSegment>, ActiveState)> {
            cut_preallocated(&*file, file_bytes, written.bytes)?;
            file.sync_data()?;
            index.seal();
            write_index_files(&*self.vfs, &path, &index)?;
            let map = self.vfs.open(&path, OpenMode::Read)?.map()?;
            let sealed = SealedSegment::new(
                base,
                written.next_offset,
                path.clone(),
                map,
                Some(Arc::new(index)),
            );
            let active = create_segment(&*self.vfs, &self.dir, written.next_offset)?;
            Ok((Arc::new(sealed), active))
        };
        let (sealed, active) = step().map_err(|e| self.fail(e))?;
        {
            let mut sync = lock(&self.sync);
            self.set_durable(&mut sync, written.next_offset);
            let mut shared = self.write_shared();
            shared.sealed.push_back(sealed);
            let end = End {
                next_offset: written.next_offset,
                bytes: 0,
            };
            shared.active = ActiveView {
                base_offset: active.base_offset,
                path: active.path,
                file: active.file,
                index: active.index,
                written: end,
                visible: end,
            };
            self.synced.notify_all();
        }
        self.notify_visible();
        writer.started_ms = active.started_ms;
        {
            let mut flight = lock(&self.flight.state);
            flight.file_bytes = 0;
            flight.zero_fill_failed = false;
        }
        if self.config.retention != Default::default() {
            if let Err(e) = self.enforce_retention(now_ms()) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "retention after roll failed");
            }
        }
        Ok(())
    }

    fn enforce_retention(&self, now_ms: i64) -> Result<RetentionReport> {
        let policy = retention::policy(
            &self.config.retention,
            &*self.vfs,
            self.config.index_interval_bytes,
            now_ms,
        );
        self.delete_front_segments(policy)
    }

    /// Delete sealed segments from the front while `doomed` says so; the caller holds the
    /// writer lock. `doomed` sees the totals of what remains before this segment goes.
    fn delete_front_segments(
        &self,
        doomed: impl Fn(&SealedSegment, Totals) -> bool,
    ) -> Result<RetentionReport> {
        let victims = {
            let shared = self.read_shared();
            let totals = Totals {
                bytes: shared.sealed.iter().map(|s| s.size_bytes()).sum::<u64>()
                    + shared.active.written.bytes,
                records: shared.active.written.next_offset - shared.start_offset(),
            };
            retention::doomed_front(&shared.sealed, totals, doomed)
        };
        if victims.is_empty() {
            return Ok(RetentionReport::default());
        }
        self.write_shared().sealed.drain(..victims.len());
        retention::remove_front(&*self.vfs, &self.dir, &victims)
    }

    fn close(&self) -> Result<()> {
        let mut writer = lock(&self.writer);
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.check_usable()?;
        self.flush_pending(&mut writer)?;
        let (file, base, written, mut index) = {
            let shared = self.read_shared();
            let a = &shared.active;
            (
                Arc::clone(&a.file),
                a.base_offset,
                a.written,
                a.index.clone(),
            )
        };
        let file_bytes = self.file_bytes();
        let mut step = || -> std::io::Result<()> {
            cut_preallocated(&*file, file_bytes, written.bytes)?;
            file.sync_data()?;
            self.publish_visible(base, written);
            index.seal();
            let path = self.dir.join(segment_file_name(base, LOG_EXTENSION));
            write_index_files(&*self.vfs, &path, &index)?;
            let marker = CleanShutdown {
                next_offset: written.next_offset,
                active_base_offset: base,
                active_bytes: written.bytes,
            };
            write_atomically(
                &*self.vfs,
                &self.dir.join(CLEAN_SHUTDOWN_FILE),
                &marker.encode(),
            )?;
            // Keep the recovery point exact too, in case the marker is ever lost.
            write_atomically(
                &*self.vfs,
                &self.dir.join(RECOVERY_POINT_FILE),
                &RecoveryPoint { offset: base }.encode(),
            )
        };
        step().map_err(|e| self.fail(e))?;
        let mut sync = lock(&self.sync);
        self.set_durable(&mut sync, written.next_offset);
        self.closed.store(true, Ordering::Release);
        self.synced.notify_all();
        Ok(())
    }
}

/// Cut zero-filled preallocated space off a segment that is being sealed or closed, so sealed
/// and cleanly closed segments end exactly at their last batch.
fn cut_preallocated(file: &dyn VFile, file_bytes: u64, written_bytes: u64) -> std::io::Result<()> {
    if file_bytes > written_bytes {
        file.set_len(written_bytes)?;
    }
    Ok(())
}

impl Drop for LogInner {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Acquire) && !self.failed.load(Ordering::Acquire) {
            if let Err(e) = self.close() {
                tracing::warn!(dir = %self.dir.display(), error = %e, "closing log on drop failed");
            }
        }
    }
}
