//! A stream (Redis Streams): an entity log whose records are entries with IDs, plus metadata.
//!
//! Each entry is one record: key = the 16-byte ID (see [`StreamId::to_key`]), headers = the
//! field/value pairs in order, timestamp = the ID's milliseconds, body empty. Offsets are dense and
//! IDs increase with them, so the log's time index finds an ID's neighbourhood and a short scan
//! finds the ID. The last generated ID is the ID of the last record (or XSETID's, if larger).
//!
//! Deletions (XDEL), trimming (XTRIM, XADD MAXLEN/MINID), XSETID and consumer groups are
//! metadata operations ([`MetaOp`]) in the write-ahead log, applied to [`StreamMeta`] in
//! memory; a checkpoint writes the metadata of streams that changed into the metadata store
//! (`s` + id: `lsn u64 | snapshot`). Reads skip trimmed and deleted entries; whole segments
//! wholly trimmed are freed at the next checkpoint, once the trim is durable.
//!
//! Every change returns a [`Commit`]: under `always` the caller replies once it is durable.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use byteorder::{ByteOrder, LittleEndian as LE};
use bytes::Bytes;

use super::store::{domain, op_bytes, Store};
use super::stream_id::StreamId;
use super::stream_meta::{MetaOp, StreamMeta};
use super::waiters::Waiters;
use crate::storage::meta_store::MetaItem;
use crate::storage::wal::{WalEntry, WalTxn};
use crate::storage::{self, Commit, EntityLog, LogConfig, Record, RecordView, Visibility};

/// How XADD chooses the new entry's ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdSpec {
    /// `*`: now in ms, or the last ID's ms with the next sequence if the clock is behind.
    Auto,
    /// `ms-*`: this ms, next sequence.
    AutoSequence(u64),
    /// An explicit `ms-seq`.
    Explicit(StreamId),
}

/// What XTRIM (or XADD's trimming) keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrimStrategy {
    /// At most this many entries (the newest).
    MaxLen(u64),
    /// Only entries with IDs at or above this.
    MinId(StreamId),
}

/// With `~`, trimming removes entries in steps of this many, like Redis's radix-tree nodes.
pub const APPROXIMATE_TRIM_STEP: u64 = 100;
/// With `~` and no LIMIT, at most this many entries go per call (Redis: 100 × node size).
pub const APPROXIMATE_TRIM_LIMIT: u64 = 100 * APPROXIMATE_TRIM_STEP;

/// One stream entry as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: StreamId,
    pub fields: Vec<(Bytes, Bytes)>,
}

impl Entry {
    /// Its size as range reads count it against a byte budget: its field and value bytes, 8
    /// per pair and 16 for the ID.
    pub fn bytes(&self) -> u64 {
        16 + self
            .fields
            .iter()
            .map(|(f, v)| (f.len() + v.len()) as u64 + 8)
            .sum::<u64>()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("The ID specified in XADD must be greater than 0-0")]
    IdZero,
    #[error("The ID specified in XADD is equal or smaller than the target stream top item")]
    IdTooSmall,
    #[error("The stream has exhausted the last possible ID, unable to add more items")]
    IdsExhausted,
    /// `ms-*` when that millisecond's sequence is used up (Redis's wording).
    #[error("Elements are too large to be stored")]
    SequenceExhausted,
    #[error("The ID specified in XSETID is smaller than the target stream top item")]
    SetIdTooSmall,
    #[error("The entries_added specified in XSETID is smaller than the target stream length")]
    EntriesAddedTooSmall,
    #[error("The ID specified in XSETID is smaller than the provided max_deleted_entry_id")]
    SetIdBelowMaxDeleted,
    #[error("reply would exceed {0} bytes; ask for fewer entries with COUNT")]
    ReplyTooLarge(u64),
    /// The group does not exist (each command words this its own way).
    #[error("no such consumer group")]
    NoGroup,
    #[error("Consumer Group name already exists")]
    BusyGroup,
    #[error(transparent)]
    Storage(#[from] storage::Error),
}

impl StreamError {
    /// The error an append to a deleted stream gets (the log refuses it as closed).
    pub fn deleted() -> StreamError {
        StreamError::Storage(storage::Error::Closed)
    }
}

/// The wall clock in milliseconds, as XADD's `*` reads it.
fn clock_ms() -> u64 {
    u64::try_from(crate::storage::recovery::now_ms()).unwrap_or(0)
}

/// The ID `*` generates after `last` at `now_ms`: the current millisecond, or the next ID when
/// the clock has not moved past `last` (or went back). `None` once IDs are exhausted.
fn auto_id(last: StreamId, now_ms: u64) -> Option<StreamId> {
    if now_ms > last.ms {
        Some(StreamId::new(now_ms, 0))
    } else {
        last.successor()
    }
}

/// How a stream entry is stored: its ID as the record key (and timestamp), its fields as headers.
/// One entry of [`Stream::add_auto_entries`]: the index of its stream in the streams given,
/// and its fields.
pub type AutoEntry = (usize, Vec<(Bytes, Bytes)>);

/// What became of one entry of [`Stream::add_auto_entries`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoAdded {
    /// Added with this ID.
    Id(StreamId),
    /// Not added: past its stream's last possible ID.
    Exhausted,
    /// Not added: its stream was deleted (DEL, RENAME over it) since the caller looked it up.
    /// The entry's fields are left in place, for the caller to add where the key points now.
    Deleted,
}

fn entry_record(id: StreamId, fields: Vec<(Bytes, Bytes)>) -> Record {
    Record {
        timestamp_ms: id.timestamp_ms(),
        key: Some(Bytes::copy_from_slice(&id.to_key())),
        headers: fields,
        body: Bytes::new(),
    }
}

/// Refuse an entry too large for one batch of a log configured by `config`, with the error its
/// append would return: checked before a stream is created for it, so a refused XADD creates
/// nothing.
pub fn check_entry_size(config: &LogConfig, fields: &[(Bytes, Bytes)]) -> Result<(), StreamError> {
    let record = entry_record(StreamId::MAX, fields.to_vec());
    let bytes = crate::storage::batch::encoded_batch_len(std::slice::from_ref(&record));
    if bytes > config.batch_bytes_max {
        return Err(StreamError::Storage(storage::Error::BatchTooLarge {
            bytes,
            limit: config.batch_bytes_max,
        }));
    }
    Ok(())
}

/// A stream entry appended but perhaps not yet durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Added {
    pub id: StreamId,
    /// Wait for it before acknowledging.
    pub commit: Commit,
}

/// Figures XINFO STREAM reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    pub length: u64,
    pub last_id: StreamId,
    pub max_deleted: StreamId,
    pub entries_added: u64,
    pub first_entry: Option<Entry>,
    pub last_entry: Option<Entry>,
}

pub(super) struct StreamState {
    pub(super) last_id: StreamId,
    /// Shared with readers, replaced on change (copy on write).
    pub(super) meta: Arc<StreamMeta>,
    /// LSN of the last metadata operation applied (replay skips older ones).
    lsn: u64,
    /// Metadata changed since the last checkpoint.
    dirty: bool,
}

/// A stream. Cheap to share (`Arc`); appends are serialized so IDs follow offsets.
pub struct Stream {
    id: u64,
    pub(super) log: EntityLog,
    store: Arc<Store>,
    state: Mutex<StreamState>,
    /// Cleared by the broker's eviction sweep, set by every lookup (see
    /// [`Stream::mark_used`]).
    used: AtomicBool,
    /// Readers blocked until new entries become visible.
    waiters: Arc<Waiters>,
    /// Cap on one range read's entry bytes ([`RANGE_BYTES_MAX`] unless changed).
    reply_bytes_max: std::sync::atomic::AtomicU64,
    /// Moves on whenever the broker detaches this handle from its key (deleted, renamed,
    /// evicted): a handle kept with the value it had when looked up still is what its key
    /// names while the value is unchanged (see [`Stream::binding`]).
    binding: std::sync::atomic::AtomicU64,
}

/// Bytes read per step while scanning entries.
const SCAN_READ_BYTES: u64 = 256 * 1024;
/// Most entry bytes one range read returns: a reply never holds unbounded memory.
pub const RANGE_BYTES_MAX: u64 = 512 * 1024 * 1024;
/// A range read copies entries while they add up to no more than this; past it, it only sizes
/// them until it knows the whole range fits its byte budget, then copies the rest. So a
/// refused read allocates at most this much, and a small read scans once.
const COPY_AHEAD_BYTES: u64 = 1024 * 1024;
/// Offsets a reverse range read takes per window at first (doubling up to the most), and
/// the most it reads into memory per window.
const REV_WINDOW_OFFSETS: u64 = 64;
const REV_WINDOW_OFFSETS_MAX: u64 = 4096;
const REV_WINDOW_BYTES_MAX: u64 = 1024 * 1024;

/// An entry's size as range reads count it against their byte budget: its field and value
/// bytes, 8 per pair and 16 for the ID (about its RESP encoding), from the record as stored.
pub(super) fn record_entry_bytes(record: &RecordView<'_>) -> u64 {
    16 + record
        .headers()
        .map(|(f, v)| (f.len() + v.len()) as u64 + 8)
        .sum::<u64>()
}
/// The metadata store key of stream `id`'s metadata.
pub fn meta_key(id: u64) -> Bytes {
    let mut key = Vec::with_capacity(9);
    key.push(b's');
    key.extend_from_slice(&id.to_be_bytes());
    Bytes::from(key)
}

impl Stream {
    /// Open stream `id` from its directory, its metadata snapshot (the metadata store's value,
    /// if any) and what the write-ahead log holds for it since the checkpoint, in order (LSN,
    /// entry).
    pub fn open(
        store: Arc<Store>,
        id: u64,
        dir: &Path,
        config: LogConfig,
        snapshot: Option<&Bytes>,
        replay: Vec<(u64, WalEntry)>,
    ) -> Result<Stream, StreamError> {
        let visibility = Visibility::for_durability(config.durability);
        let log = EntityLog::open(Arc::clone(store.logs()), id, dir, config, visibility)?;
        Stream::with_log(store, id, log, dir, snapshot, replay)
    }

    /// A new stream `id` (just created in the catalog): nothing on disk to read.
    pub fn create(
        store: Arc<Store>,
        id: u64,
        dir: &Path,
        config: LogConfig,
    ) -> Result<Stream, StreamError> {
        let visibility = Visibility::for_durability(config.durability);
        let log = EntityLog::create(Arc::clone(store.logs()), id, dir, config, visibility)?;
        Stream::with_log(store, id, log, dir, None, Vec::new())
    }

    fn with_log(
        store: Arc<Store>,
        id: u64,
        log: EntityLog,
        dir: &Path,
        snapshot: Option<&Bytes>,
        replay: Vec<(u64, WalEntry)>,
    ) -> Result<Stream, StreamError> {
        let (mut meta, mut lsn) = match snapshot {
            Some(value) => decode_snapshot(value).ok_or_else(|| {
                StreamError::Storage(storage::Error::InvalidArgument(format!(
                    "damaged metadata snapshot of stream {id}"
                )))
            })?,
            None => (StreamMeta::default(), 0),
        };
        let replayed = !replay.is_empty();
        lsn = super::store::replay_entity(&log, replay, domain::STREAM, lsn, |body| {
            match MetaOp::decode(body) {
                Some(op) => meta.apply(&op),
                None => {
                    tracing::error!(dir = %dir.display(), "skipping an undecodable stream operation")
                }
            }
        })?;
        let tail_id = match log.next_offset().checked_sub(1) {
            Some(last) if last >= log.start_offset() => {
                let result = log.read(last, 1)?;
                let record = result.records().last();
                record.and_then(|r| entry_id(&r)).unwrap_or_default()
            }
            _ => StreamId::MIN,
        };
        let last_id = tail_id.max(meta.last_id_floor);
        let waiters = Arc::new(Waiters::default());
        let wake = Arc::clone(&waiters);
        log.set_armed_visibility_listener(Arc::new(move || wake.wake_all()));
        Ok(Stream {
            id,
            log,
            store,
            state: Mutex::new(StreamState {
                last_id,
                meta: Arc::new(meta),
                lsn,
                dirty: replayed,
            }),
            used: AtomicBool::new(true),
            waiters,
            reply_bytes_max: std::sync::atomic::AtomicU64::new(RANGE_BYTES_MAX),
            binding: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn meta(&self) -> Arc<StreamMeta> {
        Arc::clone(&self.lock().meta)
    }

    /// Wake `notify` once when new entries become visible.
    pub fn register_waiter(&self, notify: &Arc<tokio::sync::Notify>) {
        self.waiters.register(notify);
        // After registering: the next visible entry wakes every registered reader.
        self.log.arm_listener();
    }

    /// Whether blocked readers wait for this stream (it must then stay open).
    pub fn has_waiters(&self) -> bool {
        self.waiters.is_waited_on()
    }

    /// Wake every blocked reader (the stream is being deleted).
    pub fn wake_waiters(&self) {
        self.waiters.wake_all();
    }

    /// See the field: compare with the value [`Broker::stream_bound`] returned.
    ///
    /// [`Broker::stream_bound`]: crate::broker::Broker::stream_bound
    pub fn binding(&self) -> u64 {
        self.binding.load(Ordering::Acquire)
    }

    /// The broker took this handle away from its key (it holds its state lock).
    pub(super) fn detach(&self) {
        self.binding.fetch_add(1, Ordering::AcqRel);
    }

    pub fn log(&self) -> &EntityLog {
        &self.log
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Note a use (lookups call it; the broker evicts streams unused for a while).
    pub fn mark_used(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the stream was used since the last [`Stream::take_used`].
    pub fn is_used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    /// Clear the use mark; returns whether it was set (the broker's eviction sweep).
    pub fn take_used(&self) -> bool {
        self.used.swap(false, Ordering::Relaxed)
    }

    /// Change the cap on one range read's entry bytes.
    pub fn set_reply_bytes_max(&self, bytes: u64) {
        self.reply_bytes_max
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn reply_bytes_max(&self) -> u64 {
        self.reply_bytes_max
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn last_id(&self) -> StreamId {
        self.lock().last_id
    }

    /// Live entries readers can see.
    pub fn len(&self) -> u64 {
        self.meta().live_count(self.log.visible_next_offset())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append an entry; the caller waits for [`Added::commit`] before acknowledging it.
    pub fn add(&self, spec: IdSpec, fields: Vec<(Bytes, Bytes)>) -> Result<Added, StreamError> {
        let mut state = self.lock();
        let last = state.last_id;
        // Checked before the ID itself, as Redis does.
        if last == StreamId::MAX {
            return Err(StreamError::IdsExhausted);
        }
        let id = match spec {
            IdSpec::Explicit(id) if id == StreamId::MIN => return Err(StreamError::IdZero),
            IdSpec::Explicit(id) if id <= last => return Err(StreamError::IdTooSmall),
            IdSpec::Explicit(id) => id,
            IdSpec::AutoSequence(ms) if ms < last.ms => return Err(StreamError::IdTooSmall),
            IdSpec::AutoSequence(ms) if ms == last.ms => match last.seq.checked_add(1) {
                Some(seq) => StreamId::new(ms, seq),
                // `ms-*` never moves on to the next millisecond.
                None => return Err(StreamError::SequenceExhausted),
            },
            IdSpec::AutoSequence(ms) => StreamId::new(ms, 0),
            IdSpec::Auto => auto_id(last, clock_ms()).ok_or(StreamError::IdsExhausted)?,
        };
        let mut txn = WalTxn::new();
        txn.append(&self.log, vec![entry_record(id, fields)]);
        let committed = self.store.commit(txn)?;
        state.last_id = id;
        Ok(Added {
            id,
            commit: committed.commit,
        })
    }

    /// Add entries with generated IDs (`XADD key * ...` each) as one log append: one lock
    /// round and one batch for a pipeline's worth of XADDs. Returns the IDs of the entries
    /// added, in order, and the commit to wait for; entries past the last possible ID are not
    /// added (the caller answers them with [`StreamError::IdsExhausted`]).
    pub fn add_auto_many(
        &self,
        entries: Vec<Vec<(Bytes, Bytes)>>,
    ) -> Result<(Vec<StreamId>, Commit), StreamError> {
        let mut entries: Vec<AutoEntry> = entries.into_iter().map(|fields| (0, fields)).collect();
        let (added, commit) = Stream::add_auto_entries(&[self], &mut entries)?;
        let mut ids = Vec::with_capacity(added.len());
        for outcome in added {
            match outcome {
                AutoAdded::Id(id) => ids.push(id),
                AutoAdded::Deleted if ids.is_empty() => return Err(StreamError::deleted()),
                _ => break,
            }
        }
        if ids.is_empty() {
            return Err(StreamError::IdsExhausted);
        }
        Ok((ids, commit))
    }

    /// Entries with generated IDs for several streams at once, as one commit (a pipeline's
    /// XADDs to many streams): each of `entries` names its stream by index into `streams`.
    /// Each stream gets its entries in the order given, as one batch. Returns what became of
    /// each entry, in the order given, and the commit to wait for. The fields of added entries
    /// are taken; those of entries not added are left in place. A stream deleted meanwhile
    /// refuses only its own entries ([`AutoAdded::Deleted`]), not the others'.
    pub fn add_auto_entries(
        streams: &[&Stream],
        entries: &mut [AutoEntry],
    ) -> Result<(Vec<AutoAdded>, Commit), StreamError> {
        let Some(first) = streams.first() else {
            return Ok((Vec::new(), Commit::NONE));
        };
        let store = Arc::clone(&first.store);
        // Streams are locked in id order, so two commits over the same streams cannot
        // deadlock; a stream given twice is locked once and takes its entries in order.
        let stream_of = |entry: &AutoEntry| streams[entry.0];
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by_key(|&i| (stream_of(&entries[i]).id, i));
        let now = clock_ms();
        let mut added = vec![AutoAdded::Exhausted; entries.len()];
        let mut txn = WalTxn::with_capacity(streams.len());
        let mut locked: Vec<(MutexGuard<'_, StreamState>, StreamId)> =
            Vec::with_capacity(streams.len());
        let mut next = 0;
        while let Some(&i) = order.get(next) {
            let stream = stream_of(&entries[i]);
            let run = order[next..]
                .iter()
                .take_while(|&&j| stream_of(&entries[j]).id == stream.id)
                .count();
            let entries_of_stream = next..next + run;
            next += run;
            let state = stream.lock();
            if stream.log.is_deleted() {
                for &j in &order[entries_of_stream] {
                    added[j] = AutoAdded::Deleted;
                }
                continue;
            }
            let mut last = state.last_id;
            let mut records = Vec::with_capacity(run);
            for &j in &order[entries_of_stream] {
                let Some(id) = auto_id(last, now) else { break };
                records.push(entry_record(id, std::mem::take(&mut entries[j].1)));
                added[j] = AutoAdded::Id(id);
                last = id;
            }
            if !records.is_empty() {
                // Each stream's entries are one run of `order`: one append per log.
                txn.append_unique(&stream.log, records);
            }
            locked.push((state, last));
        }
        let committed = store.commit(txn)?;
        for (mut state, last) in locked {
            state.last_id = last;
        }
        Ok((added, committed.commit))
    }

    /// Record metadata operations in one commit and apply them. The caller holds the state
    /// lock, so operations apply in the write-ahead log's order. Nothing to record is
    /// [`Commit::NONE`].
    pub(super) fn commit(
        &self,
        state: &mut StreamState,
        ops: Vec<MetaOp>,
    ) -> Result<Commit, StreamError> {
        if ops.is_empty() {
            return Ok(Commit::NONE);
        }
        let mut txn = WalTxn::new();
        for op in &ops {
            txn.op(self.id, op_bytes(domain::STREAM, &op.encode()));
        }
        let commit = self.store.commit(txn)?.commit;
        let meta = Arc::make_mut(&mut state.meta);
        for op in &ops {
            meta.apply(op);
        }
        state.lsn = commit.lsn();
        state.dirty = true;
        Ok(commit)
    }

    /// The metadata store item a checkpoint writes, if the metadata changed since the last
    /// one (it is then counted as written).
    pub fn take_snapshot(&self) -> Option<MetaItem> {
        let mut state = self.lock();
        if !state.dirty {
            return None;
        }
        state.dirty = false;
        Some((
            meta_key(self.id),
            Some(encode_snapshot(state.lsn, &state.meta)),
        ))
    }

    /// Mark the metadata changed (a checkpoint that took it failed).
    pub fn mark_dirty(&self) {
        self.lock().dirty = true;
    }

    /// Whether the stream holds nothing a checkpoint must write: it may be evicted.
    pub fn is_settled(&self) -> bool {
        !self.lock().dirty && self.log.tail_bytes() == 0
    }

    /// Free whole segments of trimmed entries (a checkpoint calls it once trims are durable).
    pub fn free_trimmed(&self) -> Result<(), StreamError> {
        let first = self.lock().meta.first_offset;
        self.log
            .truncate_before(first.min(self.log.next_offset()))?;
        Ok(())
    }

    /// The offset of the first visible record whose ID is at least `id` (the visible end if
    /// none), deleted or not.
    pub(super) fn offset_of(&self, id: StreamId) -> Result<u64, StreamError> {
        let end = self.log.visible_next_offset();
        let Some(mut offset) = self.log.offset_for_timestamp(id.timestamp_ms())? else {
            return Ok(end);
        };
        // The time index lands at or just before the ID: read a little first, then more, so a
        // range read does not verify a quarter MiB twice just to find where it starts.
        let mut budget = 4096;
        loop {
            let result = self.log.read(offset, budget)?;
            budget = (budget * 4).min(SCAN_READ_BYTES);
            for record in result.records() {
                if entry_id(&record).is_some_and(|found| found >= id) {
                    return Ok(record.offset);
                }
            }
            match result.next_offset() {
                Some(next) => offset = next,
                None => return Ok(end),
            }
        }
    }

    /// Live entries with `start <= id <= end`, oldest first, at most `count`, within the
    /// stream's default byte cap.
    pub fn range(
        &self,
        start: StreamId,
        end: StreamId,
        count: Option<usize>,
    ) -> Result<Vec<Entry>, StreamError> {
        self.range_in(&self.meta(), start, end, count, self.reply_bytes_max())
    }

    /// [`Stream::range`] within a byte budget (entries counted as [`Entry::bytes`]): a range
    /// larger than `bytes_max` is [`StreamError::ReplyTooLarge`], found before more than a MiB
    /// of it is copied.
    pub fn range_within(
        &self,
        start: StreamId,
        end: StreamId,
        count: Option<usize>,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StreamError> {
        self.range_in(&self.meta(), start, end, count, bytes_max)
    }

    /// [`Stream::range_within`] against a given metadata state (callers holding the state
    /// lock).
    pub(super) fn range_in(
        &self,
        meta: &StreamMeta,
        start: StreamId,
        end: StreamId,
        count: Option<usize>,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StreamError> {
        let limit = count.unwrap_or(usize::MAX);
        let mut entries = Vec::new();
        if start > end || limit == 0 {
            return Ok(entries);
        }
        let first = self.offset_of(start)?.max(meta.first_offset);
        // Pass 1: size the range, copying its first COPY_AHEAD_BYTES.
        let mut sizer = Sizer::new(bytes_max);
        self.visit(meta, first, |record| {
            let Some(id) = entry_id(record) else {
                return Ok(true);
            };
            if id > end || sizer.counted == limit {
                return Ok(false);
            }
            if sizer.add(record)? {
                entries.push(Entry {
                    id,
                    fields: fields_of(record),
                });
            }
            Ok(true)
        })?;
        // Pass 2: it fits; copy what pass 1 only sized.
        if let Some(resume) = sizer.resume {
            let wanted = sizer.counted;
            self.visit(meta, resume, |record| match to_entry(record) {
                Some(entry) if entry.id <= end && entries.len() < wanted => {
                    entries.push(entry);
                    Ok(true)
                }
                Some(_) => Ok(false),
                None => Ok(true),
            })?;
        }
        Ok(entries)
    }

    /// Call `visit` on every live record from `offset` on, oldest first, until it returns
    /// false.
    fn visit(
        &self,
        meta: &StreamMeta,
        mut offset: u64,
        mut visit: impl FnMut(&RecordView<'_>) -> Result<bool, StreamError>,
    ) -> Result<(), StreamError> {
        loop {
            let result = self.log.read(offset, SCAN_READ_BYTES)?;
            for record in result.records().filter(|r| meta.is_live(r.offset)) {
                if !visit(&record)? {
                    return Ok(());
                }
            }
            match result.next_offset() {
                Some(next) => offset = next,
                None => return Ok(()),
            }
        }
    }

    /// Call `visit` on every live record with an offset in `[low, high)`, newest first, until
    /// it returns false. Reads windows of offsets backwards, each holding at most about
    /// [`REV_WINDOW_BYTES_MAX`] of reads (a window that reads more is retried with half the
    /// offsets) and [`REV_WINDOW_OFFSETS_MAX`] offsets.
    fn visit_rev(
        &self,
        meta: &StreamMeta,
        low: u64,
        mut high: u64,
        mut visit: impl FnMut(&RecordView<'_>) -> Result<bool, StreamError>,
    ) -> Result<(), StreamError> {
        let mut window = REV_WINDOW_OFFSETS;
        while high > low {
            let from = high.saturating_sub(window).max(low);
            let mut reads = Vec::new();
            let (mut offset, mut held) = (from, 0);
            while offset < high && (held <= REV_WINDOW_BYTES_MAX || high - from == 1) {
                let result = self.log.read(offset, SCAN_READ_BYTES)?;
                held += result.bytes();
                let next = result.next_offset();
                reads.push(result);
                match next {
                    Some(next) => offset = next,
                    None => break,
                }
            }
            if held > REV_WINDOW_BYTES_MAX && high - from > 1 {
                window = (high - from) / 2;
                continue;
            }
            let records: Vec<RecordView<'_>> = reads
                .iter()
                .flat_map(|read| read.records())
                .filter(|r| r.offset >= from && r.offset < high && meta.is_live(r.offset))
                .collect();
            for record in records.iter().rev() {
                if !visit(record)? {
                    return Ok(());
                }
            }
            high = from;
            window = (window * 2).min(REV_WINDOW_OFFSETS_MAX);
        }
        Ok(())
    }

    /// Live entries with `start <= id <= end`, newest first, at most `count`, within the
    /// stream's default byte cap.
    pub fn rev_range(
        &self,
        end: StreamId,
        start: StreamId,
        count: Option<usize>,
    ) -> Result<Vec<Entry>, StreamError> {
        self.rev_range_within(end, start, count, self.reply_bytes_max())
    }

    /// [`Stream::rev_range`] within a byte budget, as [`Stream::range_within`].
    pub fn rev_range_within(
        &self,
        end: StreamId,
        start: StreamId,
        count: Option<usize>,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StreamError> {
        let limit = count.unwrap_or(usize::MAX);
        if start > end || limit == 0 {
            return Ok(Vec::new());
        }
        let meta = self.meta();
        let high = match end.successor() {
            Some(after) => self.offset_of(after)?,
            None => self.log.visible_next_offset(),
        };
        let low = self.offset_of(start)?.max(meta.first_offset);
        let mut entries = Vec::new();
        let mut sizer = Sizer::new(bytes_max);
        self.visit_rev(&meta, low, high, |record| {
            if sizer.counted == limit {
                return Ok(false);
            }
            let Some(id) = entry_id(record) else {
                return Ok(true);
            };
            if sizer.add(record)? {
                entries.push(Entry {
                    id,
                    fields: fields_of(record),
                });
            }
            Ok(true)
        })?;
        if let Some(resume) = sizer.resume {
            let wanted = sizer.counted;
            self.visit_rev(&meta, low, resume + 1, |record| {
                if entries.len() == wanted {
                    return Ok(false);
                }
                entries.extend(to_entry(record));
                Ok(true)
            })?;
        }
        Ok(entries)
    }

    /// XDEL: delete the entries with these IDs; returns how many existed.
    pub fn delete(&self, ids: &[StreamId]) -> Result<(u64, Commit), StreamError> {
        let mut state = self.lock();
        let mut ops = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for &id in ids {
            let offset = self.offset_of(id)?;
            if !state.meta.is_live(offset)
                || offset >= self.log.visible_next_offset()
                || !seen.insert(offset)
            {
                continue;
            }
            let result = self.log.read(offset, 1)?;
            let found = result.records().next().and_then(|r| entry_id(&r));
            if found == Some(id) {
                ops.push(MetaOp::Delete { offset, id });
            }
        }
        let deleted = ops.len() as u64;
        Ok((deleted, self.commit(&mut state, ops)?))
    }

    /// XTRIM (and XADD's MAXLEN/MINID): returns how many live entries were removed. With
    /// `approximate` (`~`) it removes only whole steps of [`APPROXIMATE_TRIM_STEP`] entries and
    /// at most `limit` (default [`APPROXIMATE_TRIM_LIMIT`]; 0 means no limit).
    pub fn trim(
        &self,
        strategy: TrimStrategy,
        approximate: bool,
        limit: Option<u64>,
    ) -> Result<(u64, Commit), StreamError> {
        let mut state = self.lock();
        let meta = Arc::clone(&state.meta);
        // Count what is written, not only what is visible: XADD trims right after its own
        // append, which under fsync=always is not visible yet.
        let end = self.log.next_offset();
        let live = meta.live_count(end);
        let exact_first = match strategy {
            TrimStrategy::MaxLen(keep) if live <= keep => return Ok((0, Commit::NONE)),
            TrimStrategy::MaxLen(keep) => meta.offset_after_live(live - keep),
            TrimStrategy::MinId(id) => self.offset_of(id)?,
        };
        // Live entries below the exact cut point.
        let removable = live - meta_live_from(&meta, exact_first, end);
        let to_remove = if approximate {
            let limit = match limit {
                Some(0) => u64::MAX,
                Some(n) => n,
                None => APPROXIMATE_TRIM_LIMIT,
            };
            let capped = removable.min(limit);
            capped - capped % APPROXIMATE_TRIM_STEP
        } else {
            removable
        };
        if to_remove == 0 {
            return Ok((0, Commit::NONE));
        }
        let new_first = meta.offset_after_live(to_remove);
        let op = MetaOp::Trim {
            first_offset: new_first,
        };
        Ok((to_remove, self.commit(&mut state, vec![op])?))
    }

    /// XSETID: move the last ID (and optionally the entries-added count and max deleted ID).
    pub fn set_id(
        &self,
        last_id: StreamId,
        entries_added: Option<u64>,
        max_deleted: Option<StreamId>,
    ) -> Result<Commit, StreamError> {
        let mut state = self.lock();
        let end = self.log.next_offset();
        let meta = Arc::clone(&state.meta);
        if let Some(max_deleted) = max_deleted {
            if last_id < max_deleted {
                return Err(StreamError::SetIdBelowMaxDeleted);
            }
        }
        let length = meta.live_count(end);
        if entries_added.is_some_and(|n| n < length) {
            return Err(StreamError::EntriesAddedTooSmall);
        }
        // The newest live entry bounds the ID from below (Redis checks the top item).
        if length > 0 && last_id < self.newest_live_id(&meta, end)? {
            return Err(StreamError::SetIdTooSmall);
        }
        let op = MetaOp::SetId {
            last_id,
            entries_added: entries_added.unwrap_or_else(|| meta.entries_added(end)),
            entries_added_at: end,
            max_deleted: max_deleted.unwrap_or(meta.max_deleted),
        };
        let commit = self.commit(&mut state, vec![op])?;
        state.last_id = last_id;
        Ok(commit)
    }

    fn newest_live_id(&self, meta: &StreamMeta, end: u64) -> Result<StreamId, StreamError> {
        let mut offset = end;
        while offset > meta.first_offset {
            offset -= 1;
            if meta.is_live(offset) {
                let result = self.log.read(offset, 1)?;
                let id = result.records().next().and_then(|r| entry_id(&r));
                if let Some(id) = id {
                    return Ok(id);
                }
            }
        }
        Ok(StreamId::MIN)
    }

    /// Figures for XINFO STREAM.
    /// The live entry with exactly this ID, if any.
    pub fn entry(&self, id: StreamId) -> Result<Option<Entry>, StreamError> {
        self.entry_in(&self.meta(), id)
    }

    /// [`Stream::entry`] against a given metadata state (callers holding the state lock).
    pub(super) fn entry_in(
        &self,
        meta: &StreamMeta,
        id: StreamId,
    ) -> Result<Option<Entry>, StreamError> {
        let offset = self.offset_of(id)?;
        if !meta.is_live(offset) || offset >= self.log.visible_next_offset() {
            return Ok(None);
        }
        let result = self.log.read(offset, 1)?;
        let entry = result.records().next().and_then(|r| to_entry(&r));
        Ok(entry.filter(|e| e.id == id))
    }

    /// Whether the live entry with exactly this ID exists (read, not copied).
    pub(super) fn entry_exists_in(
        &self,
        meta: &StreamMeta,
        id: StreamId,
    ) -> Result<bool, StreamError> {
        let offset = self.offset_of(id)?;
        if !meta.is_live(offset) || offset >= self.log.visible_next_offset() {
            return Ok(false);
        }
        let result = self.log.read(offset, 1)?;
        let found = result.records().next().and_then(|r| entry_id(&r));
        Ok(found == Some(id))
    }

    /// The live entries with these IDs (`None` for one deleted or missing), within a byte
    /// budget as [`Stream::range_within`]: all are sized before more than
    /// [`COPY_AHEAD_BYTES`] of them is copied.
    pub(super) fn entries_in(
        &self,
        meta: &StreamMeta,
        ids: &[StreamId],
        bytes_max: u64,
    ) -> Result<Vec<Option<Entry>>, StreamError> {
        let mut found = Vec::with_capacity(ids.len());
        let mut sizer = Sizer::new(bytes_max);
        let mut uncopied = Vec::new();
        for &id in ids {
            let offset = self.offset_of(id)?;
            if !meta.is_live(offset) || offset >= self.log.visible_next_offset() {
                found.push(None);
                continue;
            }
            let result = self.log.read(offset, 1)?;
            let record = result.records().next().filter(|r| entry_id(r) == Some(id));
            match record {
                Some(record) if sizer.add(&record)? => found.push(Some(Entry {
                    id,
                    fields: fields_of(&record),
                })),
                Some(_) => {
                    uncopied.push(found.len());
                    found.push(None);
                }
                None => found.push(None),
            }
        }
        for i in uncopied {
            found[i] = self.entry_in(meta, ids[i])?;
        }
        Ok(found)
    }

    pub fn info(&self) -> Result<StreamInfo, StreamError> {
        let (last_id, meta) = {
            let state = self.lock();
            (state.last_id, Arc::clone(&state.meta))
        };
        let first = self.range(StreamId::MIN, StreamId::MAX, Some(1))?.pop();
        let last = self.rev_range(StreamId::MAX, StreamId::MIN, Some(1))?.pop();
        Ok(StreamInfo {
            length: meta.live_count(self.log.visible_next_offset()),
            last_id,
            max_deleted: meta.max_deleted,
            entries_added: meta.entries_added(self.log.next_offset()),
            first_entry: first,
            last_entry: last,
        })
    }

    /// Let go of the log's cached descriptor (the stream is being evicted or the broker
    /// stops). Nothing needs writing: the write-ahead log holds every change.
    pub fn close(&self) {
        self.log.release_files();
    }
}

// Format: { lsn u64 | MetaOp::Snapshot }
fn encode_snapshot(lsn: u64, meta: &StreamMeta) -> Bytes {
    let mut out = lsn.to_le_bytes().to_vec();
    out.extend_from_slice(&MetaOp::Snapshot(meta.clone()).encode());
    Bytes::from(out)
}

fn decode_snapshot(value: &[u8]) -> Option<(StreamMeta, u64)> {
    let lsn = LE::read_u64(value.get(..8)?);
    match MetaOp::decode(&value[8..])? {
        MetaOp::Snapshot(meta) => Some((meta, lsn)),
        _ => None,
    }
}

/// Live entries in `[from, end)`.
fn meta_live_from(meta: &StreamMeta, from: u64, end: u64) -> u64 {
    let from = from.max(meta.first_offset).min(end);
    (end - from) - meta.deleted.range(from..end).count() as u64
}

fn entry_id(record: &RecordView<'_>) -> Option<StreamId> {
    record.key.and_then(StreamId::from_key)
}

pub(super) fn to_entry(record: &RecordView<'_>) -> Option<Entry> {
    Some(Entry {
        id: entry_id(record)?,
        fields: fields_of(record),
    })
}

fn fields_of(record: &RecordView<'_>) -> Vec<(Bytes, Bytes)> {
    record
        .headers()
        .map(|(f, v)| (Bytes::copy_from_slice(f), Bytes::copy_from_slice(v)))
        .collect()
}

/// A range read's running size against its byte budget: which entries to copy now (the
/// first [`COPY_AHEAD_BYTES`]) and where copying resumes once the whole range is known to fit.
struct Sizer {
    bytes_max: u64,
    bytes: u64,
    /// Entries sized so far.
    counted: usize,
    /// The offset of the first entry sized but not copied.
    resume: Option<u64>,
}

impl Sizer {
    fn new(bytes_max: u64) -> Sizer {
        Sizer {
            bytes_max,
            bytes: 0,
            counted: 0,
            resume: None,
        }
    }

    /// Count an entry; `Ok(true)` if it is to be copied now. Over the budget is an error.
    fn add(&mut self, record: &RecordView<'_>) -> Result<bool, StreamError> {
        self.bytes += record_entry_bytes(record);
        if self.bytes > self.bytes_max {
            return Err(StreamError::ReplyTooLarge(self.bytes_max));
        }
        self.counted += 1;
        if self.resume.is_none() && self.bytes > COPY_AHEAD_BYTES {
            self.resume = Some(record.offset);
        }
        Ok(self.resume.is_none())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::broker::{Broker, BrokerConfig};
    use crate::storage::io::FaultVfs;

    /// A stream `s` of a broker on `vfs`, with small segments.
    pub(crate) struct Fixture {
        pub broker: Broker,
        pub stream: Arc<Stream>,
    }

    impl std::ops::Deref for Fixture {
        type Target = Stream;
        fn deref(&self) -> &Stream {
            &self.stream
        }
    }

    pub(crate) fn open(vfs: &FaultVfs) -> Fixture {
        let mut config = BrokerConfig::default();
        config.stream_log.segment_bytes_max = 2048;
        config.stream_log.index_interval_bytes = 128;
        let broker = Broker::open_with(Arc::new(vfs.clone()), Path::new("/data"), config).unwrap();
        let stream = broker.stream_or_create(b"s").unwrap();
        Fixture { broker, stream }
    }

    fn fields(n: u64) -> Vec<(Bytes, Bytes)> {
        vec![(Bytes::from("n"), Bytes::from(n.to_string()))]
    }

    fn add(stream: &Fixture, ms: u64, seq: u64) -> StreamId {
        let added = stream
            .add(IdSpec::Explicit(StreamId::new(ms, seq)), fields(ms))
            .unwrap();
        stream.broker.wait(added.commit).unwrap();
        added.id
    }

    fn all_ids(stream: &Stream) -> Vec<StreamId> {
        stream
            .range(StreamId::MIN, StreamId::MAX, None)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect()
    }

    #[test]
    fn ids_are_checked_and_generated_like_redis() {
        let stream = open(&FaultVfs::new(1));
        assert!(matches!(
            stream.add(IdSpec::Explicit(StreamId::MIN), fields(0)),
            Err(StreamError::IdZero)
        ));
        assert_eq!(
            stream
                .add(IdSpec::Explicit(StreamId::new(5, 5)), fields(1))
                .unwrap()
                .id,
            StreamId::new(5, 5)
        );
        assert!(matches!(
            stream.add(IdSpec::Explicit(StreamId::new(5, 5)), fields(2)),
            Err(StreamError::IdTooSmall)
        ));
        assert!(matches!(
            stream.add(IdSpec::AutoSequence(4), fields(2)),
            Err(StreamError::IdTooSmall)
        ));
        assert_eq!(
            stream.add(IdSpec::AutoSequence(5), fields(2)).unwrap().id,
            StreamId::new(5, 6)
        );
        assert_eq!(
            stream.add(IdSpec::AutoSequence(7), fields(3)).unwrap().id,
            StreamId::new(7, 0)
        );
        // `ms-*` at the last sequence of that ms is refused, never moved to the next ms.
        let at_end = stream
            .add(IdSpec::Explicit(StreamId::new(8, u64::MAX)), fields(3))
            .unwrap();
        assert_eq!(at_end.id, StreamId::new(8, u64::MAX));
        assert!(matches!(
            stream.add(IdSpec::AutoSequence(8), fields(3)),
            Err(StreamError::SequenceExhausted)
        ));
        let auto = stream.add(IdSpec::Auto, fields(4)).unwrap();
        assert!(auto.id.ms > 1_600_000_000_000 && auto.id.seq == 0);
        // A clock behind the last ID continues its sequence.
        stream
            .add(IdSpec::Explicit(StreamId::new(u64::MAX - 1, 0)), fields(5))
            .unwrap();
        assert_eq!(
            stream.add(IdSpec::Auto, fields(6)).unwrap().id,
            StreamId::new(u64::MAX - 1, 1)
        );
        stream
            .add(IdSpec::Explicit(StreamId::MAX), fields(7))
            .unwrap();
        assert!(matches!(
            stream.add(IdSpec::Auto, fields(8)),
            Err(StreamError::IdsExhausted)
        ));
    }

    #[test]
    fn ranges_match_a_simple_filter_and_survive_reopen() {
        let vfs = FaultVfs::new(2);
        let stream = open(&vfs);
        let mut ids = Vec::new();
        for n in 0..300u64 {
            ids.push(add(&stream, 1000 + n / 3, n % 3));
        }
        // Delete a scattering of entries, then trim the oldest.
        let doomed: Vec<StreamId> = ids
            .iter()
            .copied()
            .filter(|id| id.ms % 7 == 0 || id.seq == 2 && id.ms % 5 == 0)
            .collect();
        assert_eq!(stream.delete(&doomed).unwrap().0, doomed.len() as u64);
        assert_eq!(
            stream.delete(&doomed).unwrap().0,
            0,
            "deleting twice deletes nothing"
        );
        ids.retain(|id| !doomed.contains(id));
        let removed = stream
            .trim(TrimStrategy::MaxLen(150), false, None)
            .unwrap()
            .0;
        assert_eq!(removed, ids.len() as u64 - 150);
        ids.drain(..removed as usize);
        drop(stream);
        let stream = open(&vfs);
        assert_eq!(stream.last_id(), StreamId::new(1099, 2));
        assert_eq!(stream.len(), 150);
        assert_eq!(all_ids(&stream), ids);
        let bounds = [
            StreamId::MIN,
            StreamId::new(1000, 1),
            StreamId::new(1010, 0),
            StreamId::new(1050, 2),
            StreamId::new(1099, u64::MAX),
            StreamId::MAX,
        ];
        for &start in &bounds {
            for &end in &bounds {
                for count in [None, Some(0), Some(1), Some(7), Some(100)] {
                    let expected: Vec<StreamId> = ids
                        .iter()
                        .copied()
                        .filter(|id| *id >= start && *id <= end)
                        .collect();
                    let forward: Vec<StreamId> = stream
                        .range(start, end, count)
                        .unwrap()
                        .iter()
                        .map(|e| e.id)
                        .collect();
                    let n = count.unwrap_or(usize::MAX).min(expected.len());
                    assert_eq!(forward, expected[..n], "{start}..{end} {count:?}");
                    let backward: Vec<StreamId> = stream
                        .rev_range(end, start, count)
                        .unwrap()
                        .iter()
                        .map(|e| e.id)
                        .collect();
                    let tail: Vec<StreamId> = expected.iter().rev().take(n).copied().collect();
                    assert_eq!(backward, tail, "rev {end}..{start} {count:?}");
                }
            }
        }
    }

    #[test]
    fn trimming_by_id_and_approximately_and_freeing_segments() {
        let vfs = FaultVfs::new(3);
        let stream = open(&vfs);
        for n in 1..=1000u64 {
            add(&stream, n, 0);
        }
        let size = stream.log().size_bytes();
        assert_eq!(
            stream
                .trim(TrimStrategy::MinId(StreamId::new(101, 0)), false, None)
                .unwrap()
                .0,
            100
        );
        assert_eq!(all_ids(&stream)[0], StreamId::new(101, 0));
        // `~` trims in whole steps only, and never below the threshold.
        assert_eq!(
            stream
                .trim(TrimStrategy::MaxLen(850), true, None)
                .unwrap()
                .0,
            0
        );
        assert_eq!(
            stream
                .trim(TrimStrategy::MaxLen(750), true, None)
                .unwrap()
                .0,
            100
        );
        assert_eq!(
            stream
                .trim(TrimStrategy::MaxLen(10), true, Some(250))
                .unwrap()
                .0,
            200
        );
        assert_eq!(stream.len(), 600);
        stream.broker.checkpoint().unwrap();
        assert!(
            stream.log().size_bytes() < size,
            "whole trimmed segments are freed once the trim is durable"
        );
        assert_eq!(
            stream.trim(TrimStrategy::MaxLen(0), false, None).unwrap().0,
            600
        );
        assert!(stream.is_empty());
        assert_eq!(
            stream.last_id(),
            StreamId::new(1000, 0),
            "the last ID survives trimming"
        );
        drop(stream);
        let stream = open(&vfs);
        assert!(stream.is_empty());
        assert!(matches!(
            stream.add(IdSpec::Explicit(StreamId::new(1000, 0)), fields(0)),
            Err(StreamError::IdTooSmall)
        ));
    }

    #[test]
    fn budgeted_reads_size_past_the_copy_ahead_and_refuse_past_the_budget() {
        let stream = open(&FaultVfs::new(6));
        let value = Bytes::from(vec![b'v'; 8 * 1024]);
        let mut ids = Vec::new();
        for ms in 1..=300 {
            let fields = vec![(Bytes::from("f"), value.clone())];
            let added = stream
                .add(IdSpec::Explicit(StreamId::new(ms, 0)), fields)
                .unwrap();
            stream.broker.wait(added.commit).unwrap();
            ids.push(added.id);
        }
        stream.delete(&[ids[150]]).unwrap();
        ids.remove(150);
        let entry_bytes = 16 + 1 + 8 * 1024 + 8;
        let total = entry_bytes * ids.len() as u64;
        assert!(
            total > 2 * COPY_AHEAD_BYTES,
            "the reads go past the copy-ahead"
        );
        let (min, max) = (StreamId::MIN, StreamId::MAX);
        let got = |e: Vec<Entry>| e.into_iter().map(|e| e.id).collect::<Vec<_>>();
        let reversed: Vec<StreamId> = ids.iter().rev().copied().collect();
        assert_eq!(
            got(stream.range_within(min, max, None, total).unwrap()),
            ids
        );
        assert_eq!(
            got(stream.rev_range_within(max, min, None, total).unwrap()),
            reversed
        );
        for count in [1, 127, 128, 129, 250] {
            assert_eq!(
                got(stream.range_within(min, max, Some(count), total).unwrap()),
                ids[..count]
            );
            assert_eq!(
                got(stream
                    .rev_range_within(max, min, Some(count), total)
                    .unwrap()),
                reversed[..count]
            );
        }
        let end = ids[200];
        assert_eq!(
            got(stream.range_within(min, end, None, total).unwrap()),
            ids[..=200]
        );
        for refused in [
            stream.range_within(min, max, None, total - 1),
            stream.rev_range_within(max, min, None, total - 1),
        ] {
            assert!(matches!(refused, Err(StreamError::ReplyTooLarge(n)) if n == total - 1));
        }
        // By ID: deleted and missing ones are None, the rest copied in order.
        let mut wanted = ids.clone();
        wanted.insert(10, StreamId::new(151, 0));
        let meta = stream.meta();
        let found = stream.entries_in(&meta, &wanted, total).unwrap();
        assert_eq!(found.iter().filter(|e| e.is_none()).count(), 1);
        let found: Vec<StreamId> = found.into_iter().flatten().map(|e| e.id).collect();
        assert_eq!(found, ids);
        assert!(matches!(
            stream.entries_in(&meta, &wanted, total - 1),
            Err(StreamError::ReplyTooLarge(_))
        ));
    }

    #[test]
    fn a_range_reply_is_capped_in_bytes() {
        let stream = open(&FaultVfs::new(5));
        for ms in 1..=100 {
            add(&stream, ms, 0);
        }
        stream.set_reply_bytes_max(1000);
        assert!(matches!(
            stream.range(StreamId::MIN, StreamId::MAX, None),
            Err(StreamError::ReplyTooLarge(1000))
        ));
        assert!(matches!(
            stream.rev_range(StreamId::MAX, StreamId::MIN, None),
            Err(StreamError::ReplyTooLarge(1000))
        ));
        assert_eq!(
            stream
                .range(StreamId::MIN, StreamId::MAX, Some(10))
                .unwrap()
                .len(),
            10,
            "COUNT keeps it small"
        );
    }

    #[test]
    fn set_id_is_validated_and_persisted() {
        let vfs = FaultVfs::new(4);
        let stream = open(&vfs);
        add(&stream, 10, 1);
        assert!(matches!(
            stream.set_id(StreamId::new(5, 5), None, None),
            Err(StreamError::SetIdTooSmall)
        ));
        assert!(matches!(
            stream.set_id(StreamId::new(30, 1), Some(0), None),
            Err(StreamError::EntriesAddedTooSmall)
        ));
        assert!(matches!(
            stream.set_id(StreamId::new(30, 1), None, Some(StreamId::new(40, 1))),
            Err(StreamError::SetIdBelowMaxDeleted)
        ));
        stream
            .set_id(StreamId::new(20, 1), Some(7), Some(StreamId::new(3, 0)))
            .unwrap();
        drop(stream);
        let stream = open(&vfs);
        assert_eq!(stream.last_id(), StreamId::new(20, 1));
        let info = stream.info().unwrap();
        assert_eq!(
            (info.entries_added, info.max_deleted, info.length),
            (7, StreamId::new(3, 0), 1)
        );
        assert!(matches!(
            stream.add(IdSpec::Explicit(StreamId::new(20, 1)), fields(0)),
            Err(StreamError::IdTooSmall)
        ));
        add(&stream, 21, 0);
        assert_eq!(stream.info().unwrap().entries_added, 8);
    }
}
