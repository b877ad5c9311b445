//! The segmented log of one stream, topic or queue, made durable by the write-ahead log.
//!
//! An entity log is a directory of segments in the format of a [`Log`](super::Log) (sections
//! 2–5 of `storage-format.md`), but it never fsyncs an append itself: every append is first a
//! record in the data directory's one write-ahead log ([`Wal`](super::wal::Wal)), whose group
//! commit makes the appends of every entity durable with one fsync. The batch then waits in
//! memory (the *tail*) and is written to the segment files later, in bulk, by
//! [`EntityLog::materialize`]; a checkpoint makes those writes durable (one `syncfs`) before the
//! write-ahead log forgets them. So an append costs no system call of its own, and a log that
//! is idle holds no file descriptor: its active segment is opened through the shared
//! [`FileCache`] (in [`LogShared`]) when it is written or read.
//!
//! Reads see the sealed segments (memory-mapped), the written part of the active segment
//! (positional reads) and the tail (in memory, never re-verified: those bytes were encoded
//! here). Readers see only what is *visible*: for a durable log, appends whose write-ahead
//! record is durable; for a log with [`Visibility::Immediate`] (Pub/Sub topics, non-durable
//! queues), everything appended.
//!
//! Crash safety of the files rests on one ordering rule: a roll fsyncs the full segment (and
//! writes its indexes) before it creates the next one. So on open every segment but the newest
//! is complete and durable, and only the newest is scanned; whatever of it a crash lost is
//! still in the write-ahead log, which replays it ([`EntityLog::replay_batch`]).
//!
//! Locks: `writing` (a `Mutex`) serializes the operations that write files (materialize, roll,
//! retention, truncation, delete); `shared` (an `RwLock`) holds what readers need and is held
//! only for memory operations. Appends take only `shared`, and never wait for I/O.

mod read;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use super::batch::{encode_batch, encoded_batch_len, verify_batch, BatchHeader};
use super::config::{Durability, LogConfig};
use super::error::{Error, Result};
use super::file_cache::FileCache;
use super::index::SegmentIndex;
use super::io::OpenMode;
use super::log::{AppendInfo, RetentionReport, VisibilityListener};
use super::record::Record;
use super::recovery::now_ms;
use super::retention::{self, Totals};
use super::segment::{
    scan_segment, segment_file_name, write_index_files, SealedSegment, LOG_EXTENSION,
};

pub use read::EntityIter;

/// When appended records become visible to readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Once the write-ahead log has made them durable (`always` and interval policies): a
    /// consumer never receives what a crash could take back.
    Durable,
    /// At once (Pub/Sub topics, non-durable queues, the `never` policy).
    Immediate,
}

impl Visibility {
    /// The visibility a log with this durability policy gets.
    pub fn for_durability(durability: Durability) -> Visibility {
        match durability {
            Durability::Never => Visibility::Immediate,
            Durability::Always | Durability::Interval(_) => Visibility::Durable,
        }
    }
}

/// What every entity log of a data directory shares: the descriptor budget, and a count of
/// the bytes all their tails hold in memory (the broker writes the largest tails out when it
/// grows past its budget).
pub struct LogShared {
    pub files: FileCache,
    tail_bytes: AtomicU64,
    /// Logs whose tail passed [`TAIL_BYTES_WRITE`], for the broker to write out.
    wanting_write: Mutex<Vec<EntityLog>>,
    /// Called when a log joins `wanting_write`, so the writer runs at once rather than on its
    /// next round (a fast producer fills several MiB in a round).
    on_wanting_write: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
}

/// A log whose tail reaches this many bytes asks to be written out.
pub const TAIL_BYTES_WRITE: u64 = 1024 * 1024;

impl LogShared {
    pub fn new(files: FileCache) -> LogShared {
        LogShared {
            files,
            tail_bytes: AtomicU64::new(0),
            wanting_write: Mutex::new(Vec::new()),
            on_wanting_write: Mutex::new(None),
        }
    }

    /// Have `wake` called whenever a log's tail passes [`TAIL_BYTES_WRITE`] (the broker wakes
    /// its maintenance thread, which writes the tail out).
    pub fn set_on_wanting_write(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        *lock(&self.on_wanting_write) = Some(wake);
    }

    /// The logs whose tails grew past [`TAIL_BYTES_WRITE`] since the last call.
    pub fn take_wanting_write(&self) -> Vec<EntityLog> {
        std::mem::take(&mut *lock(&self.wanting_write))
    }

    /// Bytes held in memory by every entity log's tail.
    pub fn tail_bytes(&self) -> u64 {
        self.tail_bytes.load(Ordering::Relaxed)
    }

    fn grow(&self, bytes: u64) {
        self.tail_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn shrink(&self, bytes: u64) {
        self.tail_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Bytes written to a segment file per system call while materializing.
const MATERIALIZE_BYTES_MAX: u64 = 1024 * 1024;

/// A batch in memory, not yet written to the active segment.
#[derive(Clone)]
struct Chunk {
    header: BatchHeader,
    bytes: Bytes,
}

/// The written part of the newest segment.
struct Active {
    base_offset: u64,
    /// The segment file's path, built when first needed (a new log may never be written:
    /// creating a stream should not format a path).
    path: OnceLock<PathBuf>,
    /// Covers exactly the bytes written to the file: `index.next_offset` is the first offset
    /// still only in the tail, `index.covered_bytes` the file's length.
    index: SegmentIndex,
    /// Whether the file exists yet (a log's first segment is created when first written).
    exists: bool,
    /// Timestamp that starts the segment's age.
    started_ms: i64,
}

impl Active {
    /// The segment file of this active segment in log directory `dir`.
    fn path(&self, dir: &Path) -> &PathBuf {
        self.path
            .get_or_init(|| dir.join(segment_file_name(self.base_offset, LOG_EXTENSION)))
    }
}

struct Shared {
    sealed: VecDeque<Arc<SealedSegment>>,
    active: Active,
    /// Batches after the active segment's written part, in offset order.
    tail: VecDeque<Chunk>,
    tail_bytes: u64,
    /// One past the last record appended.
    written_next: u64,
    /// One past the last record readers may see.
    visible_next: u64,
}

impl Shared {
    fn start_offset(&self) -> u64 {
        self.sealed
            .front()
            .map_or(self.active.base_offset, |s| s.base_offset)
    }
}

struct EntityInner {
    id: u64,
    dir: PathBuf,
    shared: Arc<LogShared>,
    config: LogConfig,
    visibility: Visibility,
    state: RwLock<Shared>,
    writing: Mutex<()>,
    failed: AtomicBool,
    deleted: AtomicBool,
    /// Queued in [`LogShared::take_wanting_write`] and not yet written.
    wants_write: AtomicBool,
    /// Set once, when the owner opens the log; with whether it runs only when armed.
    listener: OnceLock<(VisibilityListener, bool)>,
    /// An armed listener runs on the next visibility change (see [`EntityLog::arm_listener`]).
    armed: AtomicBool,
}

/// An append encoded as the log's next batch, not yet part of the log: the write-ahead log
/// records it, then [`EntityLog::publish`] adds it.
pub struct PreparedAppend {
    header: BatchHeader,
    bytes: Bytes,
}

impl PreparedAppend {
    /// The encoded batch, as the write-ahead log stores it.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn info(&self) -> AppendInfo {
        AppendInfo {
            base_offset: self.header.base_offset,
            next_offset: self.header.next_offset(),
        }
    }
}

/// A stream's, topic's or queue's segmented log; see the module documentation. Cheap to
/// clone; clones share the log.
#[derive(Clone)]
pub struct EntityLog {
    inner: Arc<EntityInner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EntityLog {
    /// Open the log in `dir` (which may not exist yet: it is created with the first segment),
    /// keeping `id` as the name the write-ahead log knows it by. Every segment but the newest is
    /// trusted as sealed; the newest is scanned, and an invalid tail (a crash during a write)
    /// is cut off. Nothing is fsynced: what the cut removed is replayed from the write-ahead log.
    pub fn open(
        shared: Arc<LogShared>,
        id: u64,
        dir: impl AsRef<Path>,
        config: LogConfig,
        visibility: Visibility,
    ) -> Result<EntityLog> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let (sealed, active) = open_files(&shared.files, &dir, &config)?;
        Ok(EntityLog::with_files(
            shared, id, dir, config, visibility, sealed, active,
        ))
    }

    /// A log for a new entity, whose directory does not exist yet: nothing is read (the
    /// first segment is created when first written).
    pub fn create(
        shared: Arc<LogShared>,
        id: u64,
        dir: impl AsRef<Path>,
        config: LogConfig,
        visibility: Visibility,
    ) -> Result<EntityLog> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let active = empty_active(0);
        Ok(EntityLog::with_files(
            shared,
            id,
            dir,
            config,
            visibility,
            VecDeque::new(),
            active,
        ))
    }

    fn with_files(
        shared: Arc<LogShared>,
        id: u64,
        dir: PathBuf,
        config: LogConfig,
        visibility: Visibility,
        sealed: VecDeque<Arc<SealedSegment>>,
        active: Active,
    ) -> EntityLog {
        let end = active.index.next_offset;
        EntityLog {
            inner: Arc::new(EntityInner {
                id,
                dir,
                shared,
                config,
                visibility,
                state: RwLock::new(Shared {
                    sealed,
                    active,
                    tail: VecDeque::new(),
                    tail_bytes: 0,
                    written_next: end,
                    visible_next: end,
                }),
                writing: Mutex::new(()),
                failed: AtomicBool::new(false),
                deleted: AtomicBool::new(false),
                wants_write: AtomicBool::new(false),
                listener: OnceLock::new(),
                armed: AtomicBool::new(false),
            }),
        }
    }

    /// The id the write-ahead log knows this log by.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    pub fn visibility(&self) -> Visibility {
        self.inner.visibility
    }

    /// Whether two handles are the same open log.
    pub fn same_log(&self, other: &EntityLog) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Run `listener` whenever records become visible (on the thread that made them visible,
    /// with no lock held: it must be quick). A log has one listener: a second call is ignored.
    pub fn set_visibility_listener(&self, listener: VisibilityListener) {
        let first = self.inner.listener.set((listener, false)).is_ok();
        debug_assert!(first, "a log's visibility listener is set once");
    }

    /// [`EntityLog::set_visibility_listener`] for a listener that runs only on the first
    /// visibility change after each [`EntityLog::arm_listener`]: blocked readers arm it, and
    /// the appends nobody waits for (nearly all of them) call nothing.
    pub fn set_armed_visibility_listener(&self, listener: VisibilityListener) {
        let first = self.inner.listener.set((listener, true)).is_ok();
        debug_assert!(first, "a log's visibility listener is set once");
    }

    /// Have an armed listener run on the next visibility change. A reader arms, then checks
    /// for records, then waits: arming and every visibility change take the log's state lock,
    /// so either the change sees the arming or the check sees the change.
    pub fn arm_listener(&self) {
        let _shared = self.read_shared();
        self.inner.armed.store(true, Ordering::Relaxed);
    }

    /// Whether the listener is due for a visibility change being made now (called with the
    /// state write lock held; disarms an armed listener).
    fn listener_due(&self) -> bool {
        match self.inner.listener.get() {
            None => false,
            Some((_, false)) => true,
            Some((_, true)) => self.inner.armed.swap(false, Ordering::Relaxed),
        }
    }

    fn notify_visible(&self) {
        if let Some((listener, _)) = self.inner.listener.get() {
            listener();
        }
    }

    fn read_shared(&self) -> RwLockReadGuard<'_, Shared> {
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_shared(&self) -> RwLockWriteGuard<'_, Shared> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn files(&self) -> &FileCache {
        &self.inner.shared.files
    }

    /// The first offset still stored.
    pub fn start_offset(&self) -> u64 {
        self.read_shared().start_offset()
    }

    /// One past the last record appended (visible or not).
    pub fn next_offset(&self) -> u64 {
        self.read_shared().written_next
    }

    /// One past the last record readers may see.
    pub fn visible_next_offset(&self) -> u64 {
        self.read_shared().visible_next
    }

    /// Bytes of batches in memory, not yet written to the segment files.
    pub fn tail_bytes(&self) -> u64 {
        self.read_shared().tail_bytes
    }

    /// Bytes over all segments and the tail.
    pub fn size_bytes(&self) -> u64 {
        let shared = self.read_shared();
        shared.sealed.iter().map(|s| s.size_bytes()).sum::<u64>()
            + shared.active.index.covered_bytes
            + shared.tail_bytes
    }

    pub fn segment_count(&self) -> usize {
        self.read_shared().sealed.len() + 1
    }

    /// Encode `records` as the log's next batch (offsets from [`EntityLog::next_offset`]).
    /// The caller holds the write-ahead log's append lock, under which every append to this
    /// log is made, so nothing can append between this and [`EntityLog::publish`].
    pub fn prepare(&self, records: &[Record]) -> Result<PreparedAppend> {
        Ok(self.prepare_after(&[], records)?.0)
    }

    /// [`EntityLog::prepare`] with the batch encoded right after `prefix`, in one buffer:
    /// returns the prepared append and `prefix` followed by the batch (the write-ahead log's
    /// entry for it), sharing that one allocation.
    pub fn prepare_after(
        &self,
        prefix: &[u8],
        records: &[Record],
    ) -> Result<(PreparedAppend, Bytes)> {
        if records.is_empty() {
            return Err(Error::InvalidArgument(
                "an append needs at least one record".into(),
            ));
        }
        self.check_usable()?;
        let batch_bytes = encoded_batch_len(records);
        if batch_bytes > self.inner.config.batch_bytes_max {
            return Err(Error::BatchTooLarge {
                bytes: batch_bytes,
                limit: self.inner.config.batch_bytes_max,
            });
        }
        let base = self.next_offset();
        let mut buf = Vec::with_capacity(prefix.len() + batch_bytes as usize);
        buf.extend_from_slice(prefix);
        let header = encode_batch(base, records, &mut buf);
        let whole = Bytes::from(buf);
        let prepared = PreparedAppend {
            header,
            bytes: whole.slice(prefix.len()..),
        };
        Ok((prepared, whole))
    }

    /// Add a prepared batch to the log; returns the offset it ends at. A log with
    /// [`Visibility::Durable`] shows it to readers only once the write-ahead log has made it
    /// durable and calls [`EntityLog::show_through`] with that offset; others show it at once.
    pub fn publish(&self, prepared: PreparedAppend) -> u64 {
        let end = prepared.header.next_offset();
        let (visible, tail_bytes) = {
            let mut shared = self.write_shared();
            debug_assert_eq!(prepared.header.base_offset, shared.written_next);
            shared.written_next = end;
            shared.tail_bytes += prepared.bytes.len() as u64;
            self.inner.shared.grow(prepared.bytes.len() as u64);
            shared.tail.push_back(Chunk {
                header: prepared.header,
                bytes: prepared.bytes,
            });
            let visible = self.inner.visibility == Visibility::Immediate;
            if visible {
                shared.visible_next = end;
            }
            (visible && self.listener_due(), shared.tail_bytes)
        };
        if tail_bytes >= TAIL_BYTES_WRITE && !self.inner.wants_write.swap(true, Ordering::AcqRel) {
            lock(&self.inner.shared.wanting_write).push(self.clone());
            let wake = lock(&self.inner.shared.on_wanting_write).clone();
            if let Some(wake) = wake {
                wake();
            }
        }
        if visible {
            self.notify_visible();
        }
        end
    }

    /// Append without the write-ahead log (non-durable queues): visible at once, kept in
    /// memory until materialized, gone after a restart.
    pub fn append_volatile(&self, records: &[Record]) -> Result<AppendInfo> {
        debug_assert_eq!(self.inner.visibility, Visibility::Immediate);
        let prepared = self.prepare(records)?;
        let info = prepared.info();
        self.publish(prepared);
        Ok(info)
    }

    /// Everything published up to offset `end` is durable (the write-ahead log's sync thread,
    /// in commit order): show it to readers.
    pub fn show_through(&self, end: u64) {
        let advanced = {
            let mut shared = self.write_shared();
            debug_assert!(end <= shared.written_next);
            if end > shared.visible_next {
                shared.visible_next = end;
                self.listener_due()
            } else {
                false
            }
        };
        if advanced {
            self.notify_visible();
        }
    }

    /// Replay a batch the write-ahead log recorded for this log (recovery). A batch the files
    /// already hold is skipped; the next one is added to the tail (and visible: it is durable);
    /// one that would leave a gap means the files lost data the log cannot restore, and is an
    /// error. Returns whether the batch was added.
    pub fn replay_batch(&self, bytes: Bytes) -> Result<bool> {
        let header = verify_batch(&bytes).map_err(|reason| Error::Corrupt {
            path: self.inner.dir.clone(),
            position: 0,
            reason,
        })?;
        let mut shared = self.write_shared();
        if header.next_offset() <= shared.written_next {
            return Ok(false);
        }
        if header.base_offset != shared.written_next {
            return Err(Error::InvalidArgument(format!(
                "{}: the write-ahead log continues at offset {} but the log ends at {}",
                self.inner.dir.display(),
                header.base_offset,
                shared.written_next
            )));
        }
        let end = header.next_offset();
        shared.written_next = end;
        shared.visible_next = end;
        shared.tail_bytes += bytes.len() as u64;
        self.inner.shared.grow(bytes.len() as u64);
        shared.tail.push_back(Chunk { header, bytes });
        Ok(true)
    }

    fn check_usable(&self) -> Result<()> {
        if self.inner.deleted.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Refuse further file writes: after a failed write the file's contents are unknown. The
    /// tail stays in memory (and in the write-ahead log), so nothing is lost; reopening the
    /// log (a restart) writes it again.
    fn fail(&self, error: impl Into<Error>) -> Error {
        let error = error.into();
        tracing::error!(dir = %self.inner.dir.display(), error = %error, "writing a log's segment failed");
        self.inner.failed.store(true, Ordering::Release);
        error
    }

    fn lock_writing(&self) -> Result<MutexGuard<'_, ()>> {
        let guard = lock(&self.inner.writing);
        if self.inner.failed.load(Ordering::Acquire) {
            return Err(Error::PreviousIo);
        }
        self.check_usable()?;
        Ok(guard)
    }

    /// Write the visible part of the tail to the segment files, rolling to new segments as
    /// they fill. Not durable by itself: a checkpoint makes it so. Returns the bytes written.
    pub fn materialize(&self) -> Result<u64> {
        let _writing = self.lock_writing()?;
        self.inner.wants_write.store(false, Ordering::Release);
        let mut written = 0;
        loop {
            let (chunks, roll_first) = self.chunks_to_write();
            if roll_first {
                self.roll()?;
                continue;
            }
            if chunks.is_empty() {
                return Ok(written);
            }
            written += self.write_chunks(&chunks)?;
        }
    }

    /// The visible chunks at the front of the tail that fit in the active segment (up to
    /// [`MATERIALIZE_BYTES_MAX`]), or that the active segment must roll first.
    fn chunks_to_write(&self) -> (Vec<Chunk>, bool) {
        let shared = self.read_shared();
        let config = &self.inner.config;
        let mut bytes = shared.active.index.covered_bytes;
        let too_old = config
            .segment_age_max
            .is_some_and(|age| now_ms() - shared.active.started_ms >= age.as_millis() as i64);
        let mut chunks = Vec::new();
        let mut taken = 0u64;
        for chunk in &shared.tail {
            if chunk.header.base_offset >= shared.visible_next || taken >= MATERIALIZE_BYTES_MAX {
                break;
            }
            let len = chunk.bytes.len() as u64;
            let full = bytes + len > config.segment_bytes_max;
            if bytes > 0 && (full || (too_old && chunks.is_empty())) {
                let roll_first = chunks.is_empty();
                return (chunks, roll_first);
            }
            bytes += len;
            taken += len;
            chunks.push(chunk.clone());
        }
        (chunks, false)
    }

    /// Write chunks (the front of the tail) to the end of the active segment, then move them
    /// from the tail into the segment's index.
    fn write_chunks(&self, chunks: &[Chunk]) -> Result<u64> {
        let (path, exists, position) = {
            let shared = self.read_shared();
            let a = &shared.active;
            (
                a.path(&self.inner.dir).clone(),
                a.exists,
                a.index.covered_bytes,
            )
        };
        let file = if exists {
            self.files().open(&path)
        } else {
            self.files()
                .vfs()
                .create_dir_all(&self.inner.dir)
                .and_then(|()| self.files().create(&path))
        }
        .map_err(|e| self.fail(e))?;
        let mut buf = Vec::with_capacity(chunks.iter().map(|c| c.bytes.len()).sum());
        for chunk in chunks {
            buf.extend_from_slice(&chunk.bytes);
        }
        file.write_at(&buf, position).map_err(|e| self.fail(e))?;
        let mut shared = self.write_shared();
        let shared = &mut *shared;
        let interval = self.inner.config.index_interval_bytes;
        if !shared.active.exists {
            shared.active.exists = true;
            shared.active.started_ms = if self.inner.config.segment_age_max.is_some() {
                now_ms()
            } else {
                chunks[0].header.first_timestamp_ms
            };
        }
        let mut at = position;
        for chunk in chunks {
            let front = shared.tail.pop_front();
            debug_assert!(front.is_some_and(|f| f.header == chunk.header));
            shared.active.index.observe(&chunk.header, at, interval);
            at += chunk.bytes.len() as u64;
            shared.tail_bytes -= chunk.bytes.len() as u64;
        }
        self.inner.shared.shrink(at - position);
        Ok(at - position)
    }

    /// Seal the active segment and start the next. The full segment is fsynced and its
    /// indexes written before the next segment's file exists, so on open every segment but
    /// the newest can be trusted without a scan.
    fn roll(&self) -> Result<()> {
        let (path, base, mut index) = {
            let shared = self.read_shared();
            let a = &shared.active;
            (
                a.path(&self.inner.dir).clone(),
                a.base_offset,
                a.index.clone(),
            )
        };
        if index.covered_bytes == 0 {
            return Ok(());
        }
        let vfs = self.files().vfs();
        let next = index.next_offset;
        let next_path = self.inner.dir.join(segment_file_name(next, LOG_EXTENSION));
        let mut step = || -> std::io::Result<Arc<SealedSegment>> {
            self.files().open(&path)?.sync_data()?;
            index.seal();
            write_index_files(&**vfs, &path, &index)?;
            let map = vfs.open(&path, OpenMode::Read)?.map()?;
            self.files().forget(&path);
            self.files().create(&next_path)?;
            Ok(Arc::new(SealedSegment::new(
                base,
                next,
                path.clone(),
                map,
                Some(Arc::new(index.clone())),
            )))
        };
        let sealed = step().map_err(|e| self.fail(e))?;
        {
            let mut shared = self.write_shared();
            shared.sealed.push_back(sealed);
            shared.active = Active {
                base_offset: next,
                path: OnceLock::from(next_path),
                index: SegmentIndex::new(next),
                exists: true,
                started_ms: now_ms(),
            };
        }
        if self.inner.config.retention != Default::default() {
            if let Err(e) = self.enforce_retention_locked(now_ms()) {
                tracing::warn!(dir = %self.inner.dir.display(), error = %e, "retention after roll failed");
            }
        }
        Ok(())
    }

    /// Delete old sealed segments according to the configured retention.
    pub fn enforce_retention(&self) -> Result<RetentionReport> {
        let _writing = self.lock_writing()?;
        self.enforce_retention_locked(now_ms())
    }

    fn enforce_retention_locked(&self, now_ms: i64) -> Result<RetentionReport> {
        let config = &self.inner.config;
        let vfs = Arc::clone(self.files().vfs());
        let policy = retention::policy(
            &config.retention,
            &*vfs,
            config.index_interval_bytes,
            now_ms,
        );
        self.delete_front_segments(policy)
    }

    /// Delete every sealed segment whose records all precede `offset` (acknowledged queue
    /// messages, trimmed stream entries). The active segment and the tail are kept.
    pub fn truncate_before(&self, offset: u64) -> Result<RetentionReport> {
        let _writing = self.lock_writing()?;
        self.delete_front_segments(|segment, _| segment.next_offset <= offset)
    }

    /// Delete sealed segments from the front while `doomed` says so; the caller holds the
    /// `writing` lock. `doomed` sees what remains before this segment goes. The directory is
    /// synced after the deletions, so a crash cannot bring back an older segment without the
    /// newer ones (a gap).
    fn delete_front_segments(
        &self,
        doomed: impl Fn(&SealedSegment, Totals) -> bool,
    ) -> Result<RetentionReport> {
        let victims = {
            let shared = self.read_shared();
            let totals = Totals {
                bytes: shared.sealed.iter().map(|s| s.size_bytes()).sum::<u64>()
                    + shared.active.index.covered_bytes
                    + shared.tail_bytes,
                records: shared.written_next - shared.start_offset(),
            };
            retention::doomed_front(&shared.sealed, totals, doomed)
        };
        if victims.is_empty() {
            return Ok(RetentionReport::default());
        }
        self.write_shared().sealed.drain(..victims.len());
        retention::remove_front(&**self.files().vfs(), &self.inner.dir, &victims)
    }

    /// Forget the log: later appends and writes fail, and its directory is removed. The caller
    /// makes sure the deletion is durable in the write-ahead log first (so a crash cannot lose
    /// the files of a log that still exists).
    pub fn delete_files(&self) -> Result<()> {
        let _writing = lock(&self.inner.writing);
        self.inner.deleted.store(true, Ordering::Release);
        self.files().forget_dir(&self.inner.dir);
        let vfs = self.files().vfs();
        if vfs.exists(&self.inner.dir) {
            vfs.remove_dir_all(&self.inner.dir)?;
        }
        let mut shared = self.write_shared();
        shared.tail.clear();
        self.inner
            .shared
            .shrink(std::mem::take(&mut shared.tail_bytes));
        Ok(())
    }

    /// Refuse further appends at once (the entity is deleted; its files go once the deletion
    /// is durable, see [`EntityLog::delete_files`]).
    pub fn mark_deleted(&self) {
        self.inner.deleted.store(true, Ordering::Release);
    }

    /// Whether the log's entity was deleted (appends to it are refused).
    pub fn is_deleted(&self) -> bool {
        self.inner.deleted.load(Ordering::Acquire)
    }

    /// Drop the cached descriptor of the active segment (the log goes idle).
    pub fn release_files(&self) {
        let path = self.read_shared().active.path(&self.inner.dir).clone();
        self.files().forget(&path);
    }
}

/// The active segment of a log with nothing written from `base` on.
fn empty_active(base: u64) -> Active {
    Active {
        base_offset: base,
        path: OnceLock::new(),
        index: SegmentIndex::new(base),
        exists: false,
        started_ms: now_ms(),
    }
}

/// List the directory, tidy leftovers, trust every segment but the newest, scan the newest.
fn open_files(
    files: &FileCache,
    dir: &Path,
    config: &LogConfig,
) -> Result<(VecDeque<Arc<SealedSegment>>, Active)> {
    let vfs = files.vfs();
    let empty = empty_active;
    if !vfs.exists(dir) {
        return Ok((VecDeque::new(), empty(0)));
    }
    let bases = crate::storage::recovery::tidy_directory(&**vfs, dir)?;
    let Some((&last, older)) = bases.split_last() else {
        return Ok((VecDeque::new(), empty(0)));
    };
    let mut sealed = VecDeque::new();
    for (i, &base) in older.iter().enumerate() {
        let next = bases[i + 1];
        let path = dir.join(segment_file_name(base, LOG_EXTENSION));
        let map = vfs.open(&path, OpenMode::Read)?.map()?;
        sealed.push_back(Arc::new(SealedSegment::new(base, next, path, map, None)));
    }
    let path = dir.join(segment_file_name(last, LOG_EXTENSION));
    let file = files.open(&path)?;
    let bytes = file.map()?;
    let outcome = scan_segment(&bytes, last, config.index_interval_bytes);
    if outcome.valid_bytes < bytes.len() as u64 {
        if let Some((position, e)) = &outcome.error {
            tracing::warn!(path = %path.display(), position, error = %e, "cutting an invalid tail; the write-ahead log replays what it held");
        }
        file.set_len(outcome.valid_bytes)?;
    }
    let started_ms = if outcome.valid_bytes > 0 {
        first_timestamp(&bytes).unwrap_or_else(now_ms)
    } else {
        now_ms()
    };
    Ok((
        sealed,
        Active {
            base_offset: last,
            path: OnceLock::from(path),
            index: outcome.index,
            exists: true,
            started_ms,
        },
    ))
}

fn first_timestamp(segment: &[u8]) -> Option<i64> {
    BatchHeader::parse(segment)
        .ok()
        .map(|h| h.first_timestamp_ms)
}

#[cfg(test)]
mod tests;
