//! The write-ahead log: one per data directory, taking every durable change of every entity.
//!
//! It is a [`Log`] (`<data>/wal/`, the segment format of `storage-format.md` §2–9) whose
//! records are *entries*: an append to an entity log (the entity's encoded batch, byte for
//! byte) or an operation on some owner's state (opaque bytes the broker gives meaning to). The
//! entries of one [`WalTxn`] are one batch, so they are durable together or not at all. An
//! entry's offset in the log is its log sequence number (LSN); a commit is durable once the
//! log is durable up to the commit's end.
//!
//! One group commit covers every entity: a sync thread writes and fsyncs whatever was
//! committed while the previous fsync ran, so the cost of durability does not grow with the
//! number of streams and queues. Appends to [`Visibility::Durable`] logs become visible to
//! readers once their commit is durable; the sync thread tells each log.
//!
//! Entity logs write their tails to their segment files later; a checkpoint makes those files
//! durable, writes the `checkpoint` file (the LSN replay starts from) and drops whole
//! write-ahead log segments before it. Recovery replays the entries from the checkpoint on.
//!
//! Entry body (`storage-format.md` § Write-ahead log): `kind u8 | id u64 | payload`, kind 1 =
//! append (id = the entity log, payload = its batch), kind 2 = operation (id = the owner,
//! payload = the operation).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use byteorder::{ByteOrder, LittleEndian as LE};
use bytes::{BufMut, Bytes, BytesMut};

use super::config::{Durability, LogConfig};
use super::entity_log::{EntityLog, PreparedAppend, Visibility};
use super::error::{Error, Result};
use super::io::{write_atomically, OpenMode, Vfs};
use super::log::{Log, LogIter};
use super::meta::{Checkpoint, CHECKPOINT_FILE};
use super::record::Record;
use super::recovery::now_ms;

/// The write-ahead log's directory inside the data directory.
pub const WAL_DIR: &str = "wal";
/// Write-ahead log segments: dropped whole once a checkpoint passes them.
pub const WAL_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

const KIND_APPEND: u8 = 1;
const KIND_OP: u8 = 2;
const ENTRY_PREFIX_BYTES: usize = 1 + 8;

/// A log sequence number: a commit is durable once the write-ahead log is durable up to it.
/// `Commit::NONE` (nothing written) is always durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Commit(u64);

impl Commit {
    pub const NONE: Commit = Commit(0);

    /// The later of two commits: waiting for it waits for both.
    pub fn max(self, other: Commit) -> Commit {
        Commit(self.0.max(other.0))
    }

    pub fn lsn(self) -> u64 {
        self.0
    }

    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

/// One entry as replay sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalEntry {
    /// A batch for entity log `log`, encoded as that log stores it.
    Append { log: u64, batch: Bytes },
    /// An operation on `owner`'s state.
    Op { owner: u64, op: Bytes },
}

enum Item {
    Append(EntityLog, Vec<Record>),
    Op(u64, Bytes),
}

/// Changes to commit atomically: appends to entity logs and operations, in order.
#[derive(Default)]
pub struct WalTxn {
    items: Vec<Item>,
}

impl WalTxn {
    pub fn new() -> WalTxn {
        WalTxn::default()
    }

    /// A transaction with room for `items` appends and operations.
    pub fn with_capacity(items: usize) -> WalTxn {
        WalTxn {
            items: Vec::with_capacity(items),
        }
    }

    /// Append `records` to `log` (merged into this transaction's earlier append to the same
    /// log, if any, so one log gets one batch).
    pub fn append(&mut self, log: &EntityLog, records: Vec<Record>) {
        for item in &mut self.items {
            if let Item::Append(existing, earlier) = item {
                if existing.same_log(log) {
                    earlier.extend(records);
                    return;
                }
            }
        }
        self.items.push(Item::Append(log.clone(), records));
    }

    /// [`WalTxn::append`] for a caller that appends to `log` once in this transaction (so
    /// nothing needs merging): no search of the earlier appends.
    pub fn append_unique(&mut self, log: &EntityLog, records: Vec<Record>) {
        debug_assert!(
            !self
                .items
                .iter()
                .any(|item| matches!(item, Item::Append(l, _) if l.same_log(log))),
            "a second append to one log in a transaction"
        );
        self.items.push(Item::Append(log.clone(), records));
    }

    /// Record an operation on `owner`'s state.
    pub fn op(&mut self, owner: u64, op: impl Into<Bytes>) {
        self.items.push(Item::Op(owner, op.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Add `other`'s changes after this transaction's.
    pub fn extend(&mut self, other: WalTxn) {
        for item in other.items {
            match item {
                Item::Append(log, records) => self.append(&log, records),
                op @ Item::Op(..) => self.items.push(op),
            }
        }
    }
}

/// What a commit did: its LSN and the offsets each append got, in the order they were added.
#[derive(Clone, Debug, Default)]
pub struct Committed {
    pub commit: Commit,
    pub appends: Vec<super::log::AppendInfo>,
}

struct Syncer {
    requested: bool,
    stop: bool,
}

struct WalInner {
    log: Log,
    vfs: Arc<dyn Vfs>,
    data_dir: PathBuf,
    durability: Durability,
    /// Serializes commits, so entity offsets follow the order of the entries.
    append_lock: Mutex<()>,
    /// Operations recorded with [`Wal::defer_op`], written first by the next commit.
    deferred: Mutex<Vec<(u64, Bytes)>>,
    /// Whether `deferred` holds anything (checked without its lock by every commit).
    has_deferred: AtomicBool,
    /// Durable-visibility appends waiting for their commit, in LSN order: (the commit's LSN,
    /// the log, the offset the append ends at).
    touched: Mutex<VecDeque<(u64, EntityLog, u64)>>,
    syncer: Mutex<Syncer>,
    sync_wanted: Condvar,
    checkpoint: Mutex<u64>,
}

/// The data directory's write-ahead log; see the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<WalInner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The write-ahead log's own log settings under a durability policy.
pub fn wal_log_config(durability: Durability) -> LogConfig {
    LogConfig {
        segment_bytes_max: WAL_SEGMENT_BYTES,
        batch_bytes_max: u64::from(super::batch::BATCH_BYTES_MAX),
        durability,
        ..LogConfig::default()
    }
}

impl Wal {
    /// Open (or create) `<data_dir>/wal` and read the checkpoint. `durability` is the server's
    /// policy: under `always` a commit is durable once the sync thread's fsync covers it.
    pub fn open(vfs: Arc<dyn Vfs>, data_dir: &Path, durability: Durability) -> Result<Wal> {
        Wal::open_with(vfs, data_dir, wal_log_config(durability))
    }

    /// [`Wal::open`] with the write-ahead log's own log settings (see [`wal_log_config`]).
    pub fn open_with(vfs: Arc<dyn Vfs>, data_dir: &Path, config: LogConfig) -> Result<Wal> {
        let durability = config.durability;
        let log = Log::open_with(Arc::clone(&vfs), data_dir.join(WAL_DIR), config)?;
        let checkpoint = read_checkpoint(&*vfs, data_dir)
            .unwrap_or_else(|| log.start_offset())
            .max(log.start_offset());
        let inner = Arc::new(WalInner {
            log,
            vfs,
            data_dir: data_dir.to_path_buf(),
            durability,
            append_lock: Mutex::new(()),
            deferred: Mutex::new(Vec::new()),
            has_deferred: AtomicBool::new(false),
            touched: Mutex::new(VecDeque::new()),
            syncer: Mutex::new(Syncer {
                requested: false,
                stop: false,
            }),
            sync_wanted: Condvar::new(),
            checkpoint: Mutex::new(checkpoint),
        });
        let weak = Arc::downgrade(&inner);
        inner.log.set_visibility_listener(Arc::new(move || {
            if let Some(inner) = weak.upgrade() {
                inner.drain_touched();
            }
        }));
        // The fault-injecting file system keeps every operation on the caller's thread (so a
        // seeded crash test runs in one order): there, commits are synced by whoever waits.
        if durability == Durability::Always && inner.vfs.background_io() {
            spawn_syncer(Arc::downgrade(&inner));
        }
        Ok(Wal { inner })
    }

    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// The LSN replay starts from.
    pub fn checkpoint_lsn(&self) -> u64 {
        *lock(&self.inner.checkpoint)
    }

    /// One past the last entry written (durable or not).
    pub fn next_lsn(&self) -> u64 {
        self.inner.log.next_offset()
    }

    /// One past the last durable entry (under `never`, the last written one).
    pub fn durable_lsn(&self) -> u64 {
        self.inner.log.visible_next_offset()
    }

    /// Bytes the write-ahead log holds on disk.
    pub fn size_bytes(&self) -> u64 {
        self.inner.log.size_bytes()
    }

    /// Commit a transaction: its appends get their offsets and are added to their logs (in
    /// memory), and every entry goes into one write-ahead batch. Returns the commit to wait
    /// for; under `always` the sync thread makes it durable soon, whoever waits.
    pub fn commit(&self, txn: WalTxn) -> Result<Committed> {
        if txn.items.is_empty() && !self.inner.has_deferred.load(Ordering::Acquire) {
            return Ok(Committed::default());
        }
        let timestamp = now_ms();
        let guard = lock(&self.inner.append_lock);
        let mut records = Vec::with_capacity(txn.items.len());
        let mut prepared: Vec<(EntityLog, PreparedAppend)> = Vec::with_capacity(txn.items.len());
        for item in txn.items {
            match item {
                Item::Append(log, batch) => {
                    // The entity's batch is encoded once, after the entry's prefix: the entry
                    // and the log's tail share the buffer.
                    let mut prefix = [0; ENTRY_PREFIX_BYTES];
                    prefix[0] = KIND_APPEND;
                    LE::write_u64(&mut prefix[1..], log.id());
                    let (append, body) = log.prepare_after(&prefix, &batch)?;
                    records.push(Record {
                        timestamp_ms: timestamp,
                        key: None,
                        headers: Vec::new(),
                        body,
                    });
                    prepared.push((log, append));
                }
                Item::Op(owner, op) => records.push(entry_record(timestamp, KIND_OP, owner, &op)),
            }
        }
        // Taken only once nothing of this commit can be refused any more, and put back if the
        // write fails: deferred operations are never dropped, whoever's commit fails.
        let deferred = self.inner.take_deferred();
        if !deferred.is_empty() {
            let mut all = Vec::with_capacity(deferred.len() + records.len());
            all.extend(
                deferred
                    .iter()
                    .map(|(owner, op)| entry_record(timestamp, KIND_OP, *owner, op)),
            );
            all.append(&mut records);
            records = all;
        }
        if records.is_empty() {
            return Ok(Committed::default());
        }
        let lsn = match self.inner.log.append_without_waiting(&records) {
            Ok(appended) => appended.next_offset,
            Err(e) => {
                self.inner.restore_deferred(deferred);
                return Err(e);
            }
        };
        let mut appends = Vec::with_capacity(prepared.len());
        {
            let mut touched = lock(&self.inner.touched);
            for (log, append) in prepared {
                appends.push(append.info());
                let end = log.publish(append);
                if log.visibility() == Visibility::Durable {
                    touched.push_back((lsn, log, end));
                }
            }
        }
        drop(guard);
        // Under `never` (and when an fsync raced ahead) the commit may be durable already.
        self.inner.drain_touched();
        if self.inner.durability == Durability::Always {
            self.inner.request_sync();
        }
        Ok(Committed {
            commit: Commit(lsn),
            appends,
        })
    }

    /// Record an operation on `owner`'s state without a commit of its own: the next commit
    /// (whoever makes it) writes it first, ahead of its own entries, so everything committed
    /// after this call is ordered after the operation and durable only with it. For a change
    /// nobody waits for by itself, such as creating the stream an XADD is about to append to
    /// (the append's commit carries the creation). [`Wal::sync`] and [`Wal::close`] write what
    /// is still deferred.
    pub fn defer_op(&self, owner: u64, op: Bytes) {
        let mut deferred = lock(&self.inner.deferred);
        deferred.push((owner, op));
        self.inner.has_deferred.store(true, Ordering::Release);
    }

    /// Whether replies must wait for commits (the `always` policy).
    pub fn acks_wait(&self) -> bool {
        self.inner.durability == Durability::Always
    }

    /// Block until `commit` is durable (at once under `never` and interval policies, which
    /// acknowledge before the fsync).
    pub fn wait(&self, commit: Commit) -> Result<()> {
        if commit.is_none() || !self.acks_wait() {
            return Ok(());
        }
        self.inner.request_sync();
        self.inner.log.wait_until_durable(commit.0)
    }

    /// [`Wal::wait`] for async callers: awaits the sync thread without holding a thread.
    pub async fn wait_async(&self, commit: Commit) -> Result<()> {
        if commit.is_none() || !self.acks_wait() {
            return Ok(());
        }
        let mut durable = self.inner.log.subscribe_durable();
        loop {
            if *durable.borrow_and_update() >= commit.0 {
                return Ok(());
            }
            if self.inner.log.is_failed() {
                return Err(Error::PreviousIo);
            }
            if durable.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }

    /// Make everything committed so far durable now, whatever the policy (checkpoints and
    /// shutdown).
    pub fn sync(&self) -> Result<()> {
        self.commit(WalTxn::new())?;
        if self.inner.durability == Durability::Always {
            self.inner.log.sync_now()?;
        } else {
            let target = self.inner.log.next_offset();
            self.inner.log.wait_until_durable(target)?;
        }
        self.inner.drain_touched();
        Ok(())
    }

    /// Entries from `from` on, in order, with their LSNs (recovery).
    pub fn replay(&self, from: u64) -> WalReplay {
        WalReplay {
            records: self.inner.log.iter(from),
        }
    }

    /// Record that every entry below `lsn` is durable elsewhere (entity files, metadata), then
    /// drop the write-ahead log segments wholly before it. The caller made those files durable
    /// first.
    pub fn set_checkpoint(&self, lsn: u64) -> Result<()> {
        let mut checkpoint = lock(&self.inner.checkpoint);
        if lsn <= *checkpoint {
            return Ok(());
        }
        write_atomically(
            &*self.inner.vfs,
            &self.inner.data_dir.join(CHECKPOINT_FILE),
            &Checkpoint { lsn }.encode(),
        )?;
        *checkpoint = lsn;
        drop(checkpoint);
        self.inner.log.truncate_before(lsn)?;
        Ok(())
    }

    /// Stop the sync thread and close the log cleanly (after a final sync).
    pub fn close(&self) -> Result<()> {
        {
            let mut syncer = lock(&self.inner.syncer);
            syncer.stop = true;
            self.inner.sync_wanted.notify_all();
        }
        self.sync()?;
        self.inner.log.close()
    }
}

impl WalInner {
    /// The deferred operations, taken for the commit being made (under the append lock).
    fn take_deferred(&self) -> Vec<(u64, Bytes)> {
        if !self.has_deferred.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut deferred = lock(&self.deferred);
        self.has_deferred.store(false, Ordering::Release);
        std::mem::take(&mut *deferred)
    }

    /// Put back deferred operations a failed commit took, ahead of any deferred since.
    fn restore_deferred(&self, taken: Vec<(u64, Bytes)>) {
        if taken.is_empty() {
            return;
        }
        let mut deferred = lock(&self.deferred);
        let later = std::mem::replace(&mut *deferred, taken);
        deferred.extend(later);
        self.has_deferred.store(true, Ordering::Release);
    }

    fn request_sync(&self) {
        let mut syncer = lock(&self.syncer);
        if !syncer.requested {
            syncer.requested = true;
            self.sync_wanted.notify_one();
        }
    }

    /// Tell every log whose appends the durable point now covers (each once: one call shows
    /// all of a log's appends up to that point).
    fn drain_touched(&self) {
        let durable = self.log.visible_next_offset();
        let covered: Vec<(EntityLog, u64)> = {
            let mut touched = lock(&self.touched);
            let mut covered: Vec<(EntityLog, u64)> = Vec::new();
            while touched.front().is_some_and(|(lsn, ..)| *lsn <= durable) {
                let Some((_, log, end)) = touched.pop_front() else {
                    break;
                };
                // Commits to one log tend to come in runs: a repeat of one of the last few
                // moves its end on (offsets only grow, in LSN order).
                let recent = covered.len().saturating_sub(8);
                match covered[recent..].iter_mut().find(|(l, _)| l.same_log(&log)) {
                    Some(seen) => seen.1 = end,
                    None => covered.push((log, end)),
                }
            }
            covered
        };
        for (log, end) in covered {
            log.show_through(end);
        }
    }
}

/// The `always` policy's sync thread: whenever commits are waiting, lead group-commit rounds
/// until everything written is durable.
fn spawn_syncer(wal: Weak<WalInner>) {
    let spawned = crate::storage::background::spawn_essential("potok-wal-sync", move || loop {
        let Some(inner) = wal.upgrade() else { return };
        {
            let mut syncer = lock(&inner.syncer);
            while !syncer.requested && !syncer.stop {
                // Woken by commits; the timeout only lets the thread notice a dropped log.
                syncer = inner
                    .sync_wanted
                    .wait_timeout(syncer, Duration::from_millis(500))
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|e| e.into_inner().0);
                if Arc::strong_count(&inner) == 1 {
                    return;
                }
            }
            if syncer.stop {
                return;
            }
            syncer.requested = false;
        }
        if let Err(e) = inner.log.sync_now() {
            tracing::error!(error = %e, "write-ahead log sync failed; commits fail until restart");
            return;
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the write-ahead log sync thread");
    }
}

fn read_checkpoint(vfs: &dyn Vfs, data_dir: &Path) -> Option<u64> {
    let path = data_dir.join(CHECKPOINT_FILE);
    if !vfs.exists(&path) {
        return None;
    }
    let bytes = vfs
        .open(&path, OpenMode::Read)
        .and_then(|f| (*f).read_all())
        .ok()?;
    match Checkpoint::decode(&bytes) {
        Some(checkpoint) => Some(checkpoint.lsn),
        None => {
            tracing::warn!(path = %path.display(), "damaged checkpoint file; replaying the whole write-ahead log");
            None
        }
    }
}

/// `kind | id | payload` as one write-ahead record.
fn entry_record(timestamp_ms: i64, kind: u8, id: u64, payload: &[u8]) -> Record {
    let mut body = BytesMut::with_capacity(ENTRY_PREFIX_BYTES + payload.len());
    body.put_u8(kind);
    body.put_u64_le(id);
    body.put_slice(payload);
    Record {
        timestamp_ms,
        key: None,
        headers: Vec::new(),
        body: body.freeze(),
    }
}

/// Decode a write-ahead record body; `None` for bytes that are not an entry.
pub fn decode_entry(body: &Bytes) -> Option<WalEntry> {
    if body.len() < ENTRY_PREFIX_BYTES {
        return None;
    }
    let id = LE::read_u64(&body[1..9]);
    let payload = body.slice(ENTRY_PREFIX_BYTES..);
    match body[0] {
        KIND_APPEND => Some(WalEntry::Append {
            log: id,
            batch: payload,
        }),
        KIND_OP => Some(WalEntry::Op {
            owner: id,
            op: payload,
        }),
        _ => None,
    }
}

/// Iterator over the entries of the write-ahead log; see [`Wal::replay`].
pub struct WalReplay {
    records: LogIter,
}

impl Iterator for WalReplay {
    type Item = Result<(u64, WalEntry)>;

    fn next(&mut self) -> Option<Self::Item> {
        let (lsn, record) = match self.records.next()? {
            Ok(next) => next,
            Err(e) => return Some(Err(e)),
        };
        match decode_entry(&record.body) {
            Some(entry) => Some(Ok((lsn, entry))),
            None => Some(Err(Error::InvalidArgument(format!(
                "write-ahead record {lsn} is not an entry"
            )))),
        }
    }
}

#[cfg(test)]
mod tests;
