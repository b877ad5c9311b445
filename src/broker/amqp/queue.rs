//! A queue: a log of messages plus an acknowledgement cursor shared by its consumers.
//!
//! Every message is appended to the queue's log. What is ready for delivery is the part of the
//! log past `next_ready` plus the `requeued` offsets (returned by nack, reject, recover or a
//! closed channel; they go out again first, in their original order, marked redelivered).
//! Delivered messages are `unacked` until acknowledged; acknowledged offsets join `acked`, and
//! once everything below an offset is acknowledged (`ack_floor`) the log may drop whole
//! segments below it, so disk use follows the backlog.
//!
//! A durable queue's log and its acknowledgement state ([`super::acks`]) change through the
//! write-ahead log: every operation that changes them commits its appends and operations
//! together and returns the [`Commit`], which the caller awaits before any reply that reports
//! the change (a confirm, `purge-ok`, `get-ok` of an auto-acknowledged message). A removal
//! never comes back once reported; a dead-lettered message reaches its dead-letter exchange at
//! least once (see [`super::acks`]). Only persistent messages (delivery mode 2) survive a
//! restart, as in RabbitMQ. A non-durable queue's log never goes through the write-ahead log:
//! its messages stay in memory (written to its files only under memory pressure) and are gone
//! after a restart.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use amq_protocol::types::FieldTable;
use byteorder::{ByteOrder, LittleEndian as LE};
use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;

use super::acks::{self, AckRecord};
use super::args::{Overflow, QueueArgs};
use super::message::Message;
use super::ranges::RangeSet;
use crate::broker::budget::MemoryBudget;
use crate::broker::store::{domain, op_bytes, Store};
use crate::storage::meta_store::MetaItem;
use crate::storage::wal::{WalEntry, WalTxn};
use crate::storage::{self, Commit, EntityLog, LogConfig, Record, Visibility};

/// Deliveries queued for a connection but not yet written; past this many, or
/// [`BACKLOG_BYTES_MAX`] bytes of them, its consumers get no more until it catches up (a slow
/// or no-ack consumer cannot make the server buffer without bound).
pub const BACKLOG_MAX: usize = 1024;
pub const BACKLOG_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// The deliveries queued for one connection and not yet handed to its channels, counted and
/// sized; the bytes are also charged to the server-wide output budget. Whatever the limits, a
/// connection with nothing queued always has room for one delivery, so a message larger than
/// [`BACKLOG_BYTES_MAX`] still goes out.
#[derive(Debug)]
pub struct Backlog {
    count: AtomicUsize,
    bytes: AtomicU64,
    budget: Arc<MemoryBudget>,
}

impl Backlog {
    pub fn new(budget: Arc<MemoryBudget>) -> Backlog {
        Backlog {
            count: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            budget,
        }
    }

    /// Whether one more delivery may be queued.
    pub fn has_room(&self) -> bool {
        let count = self.count.load(Ordering::Relaxed);
        count == 0
            || (count < BACKLOG_MAX
                && self.bytes.load(Ordering::Relaxed) < BACKLOG_BYTES_MAX
                && self.budget.has_room_for(1))
    }

    /// A delivery of `bytes` (see [`Delivery::bytes`]) was queued.
    pub fn add(&self, bytes: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.budget.charge(bytes);
    }

    /// A delivery of `bytes` left the queue (handed to its channel, or dropped).
    pub fn remove(&self, bytes: u64) {
        let _ = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(bytes))
            });
        self.budget.release(bytes);
    }
}

impl Drop for Backlog {
    /// Deliveries still queued when the connection went are dropped with it.
    fn drop(&mut self) {
        self.budget.release(*self.bytes.get_mut());
    }
}
/// Bytes read from the log at a time when filling the look-ahead.
const READ_AHEAD_BYTES: u64 = 256 * 1024;

/// Prefetch shared by every consumer on one channel (`basic.qos` with `global`), and the
/// channel's unacknowledged deliveries.
#[derive(Debug, Default)]
pub struct ChannelLimit {
    /// 0 = unlimited.
    pub prefetch: AtomicU32,
    pub unacked: AtomicUsize,
}

impl ChannelLimit {
    fn has_room(&self) -> bool {
        let prefetch = self.prefetch.load(Ordering::Relaxed) as usize;
        prefetch == 0 || self.unacked.load(Ordering::Relaxed) < prefetch
    }
}

/// What a queue sends a consumer's connection. (Nearly every event is a delivery, so the
/// size difference to the rare cancel is not worth a box per delivery.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum QueueEvent {
    Deliver(Delivery),
    /// The queue went away (deleted); the consumer is gone.
    Cancelled {
        consumer_id: u64,
        consumer_tag: String,
    },
}

/// What a queued delivery is counted as: its body, properties, exchange and routing key,
/// and 64 bytes for the rest.
fn delivery_bytes(message: &Message) -> u64 {
    (message.body.len()
        + message.raw_properties.len()
        + message.exchange.len()
        + message.routing_key.len()) as u64
        + 64
}

impl Delivery {
    /// Its size in a connection's [`Backlog`].
    pub fn bytes(&self) -> u64 {
        delivery_bytes(&self.message)
    }
}

#[derive(Debug)]
pub struct Delivery {
    pub queue: Arc<Queue>,
    pub consumer_tag: String,
    pub consumer_id: u64,
    pub offset: u64,
    pub redelivered: bool,
    pub no_ack: bool,
    pub message: Message,
    /// Wait for this before sending: an automatically acknowledged delivery reports its
    /// message's removal, so the removal must be durable first.
    pub commit: Commit,
}

/// A consumer as the queue sees it.
pub struct ConsumerSpec {
    pub id: u64,
    pub tag: String,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer prefetch; 0 = unlimited.
    pub prefetch: u32,
    pub channel_limit: Arc<ChannelLimit>,
    /// Deliveries queued for the consumer's connection and not yet written.
    pub backlog: Arc<Backlog>,
    pub sink: UnboundedSender<QueueEvent>,
    /// Stream queues: the offset this consumer reads from (see
    /// [`Queue::resolve_stream_offset`]).
    pub stream_offset: u64,
    /// `x-priority`: consumers with a higher priority get messages while they have room.
    pub priority: i64,
}

struct Consumer {
    spec: ConsumerSpec,
    unacked: usize,
    /// Stream queues: the next offset to deliver to this consumer.
    cursor: u64,
}

impl Consumer {
    fn has_room(&self) -> bool {
        if !self.spec.backlog.has_room() {
            return false;
        }
        if self.spec.no_ack {
            return true;
        }
        (self.spec.prefetch == 0 || self.unacked < self.spec.prefetch as usize)
            && self.spec.channel_limit.has_room()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error("queue has an exclusive consumer")]
    ExclusiveConsumer,
    #[error("queue has consumers")]
    InUse,
}

struct QueueState {
    /// The next log offset never handed out.
    next_ready: u64,
    /// Offsets handed back, to go out again first.
    requeued: BTreeSet<u64>,
    /// Delivered and not yet acknowledged: offset → (consumer id (0 for `basic.get`), body
    /// bytes).
    unacked: HashMap<u64, (u64, u64)>,
    /// Body bytes of the ready messages (for `x-max-length-bytes`).
    ready_bytes: u64,
    /// One past the highest offset handed out, and how far the write-ahead log has recorded
    /// that.
    delivered_high: u64,
    delivered_journaled: u64,
    /// Acknowledged offsets at or above `ack_floor`.
    acked: RangeSet,
    /// Every offset below this is acknowledged (or gone).
    ack_floor: u64,
    /// Messages read ahead from `next_ready` on.
    ahead: VecDeque<(u64, Message)>,
    /// Priority queues (`x-max-priority`): every ready message read from the log so far (and
    /// every requeued one), highest priority first, then oldest; with its redelivered flag.
    by_priority: std::collections::BTreeMap<(std::cmp::Reverse<u8>, u64), (Message, bool)>,
    consumers: Vec<Consumer>,
    /// Round-robin position in `consumers`.
    next_consumer: usize,
    /// Set once a consumer attached (auto-delete applies after the last one leaves).
    had_consumer: bool,
    /// Messages dropped with a dead-letter exchange configured, for the caller to route
    /// ([`Queue::take_dead_letters`]).
    dead_letters: Vec<DeadLetter>,
    /// Dead letters recorded but not yet routed (durable queues): offset → reason.
    intents: BTreeMap<u64, DeadReason>,
    /// Operations applied in memory that the next commit records (durable queues only).
    ops: Vec<Vec<u8>>,
    /// LSN of the last commit applied (replay skips older operations).
    lsn: u64,
    /// Changed since the last checkpoint.
    dirty: bool,
}

/// Why a message left a queue without being acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadReason {
    Rejected,
    Expired,
    Maxlen,
}

impl DeadReason {
    pub fn name(self) -> &'static str {
        match self {
            DeadReason::Rejected => "rejected",
            DeadReason::Expired => "expired",
            DeadReason::Maxlen => "maxlen",
        }
    }
}

/// What `basic.get` took: offset, redelivered, the message, how many remain.
pub type Got = (u64, bool, Message, u64);

#[derive(Debug)]
pub struct DeadLetter {
    /// Where it was in its queue.
    pub offset: u64,
    pub message: Message,
    pub reason: DeadReason,
}

pub struct Queue {
    pub name: String,
    pub id: u64,
    pub durable: bool,
    pub auto_delete: bool,
    /// The connection that declared an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub arguments: FieldTable,
    /// The arguments Potok acts on, parsed.
    pub args: QueueArgs,
    log: EntityLog,
    store: Arc<Store>,
    state: Mutex<QueueState>,
    /// Woken when deliveries may be possible (new messages, credit, consumers).
    dispatch_wanted: Arc<Notify>,
    /// A dispatcher task is running for this queue.
    pub dispatcher_running: AtomicBool,
    deleted: AtomicBool,
    /// When the queue was last used (declared, consumed from, read with basic.get), for
    /// `x-expires`.
    last_used_ms: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).finish()
    }
}

/// How a queue is created.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    pub name: String,
    pub id: u64,
    pub durable: bool,
    pub auto_delete: bool,
    pub exclusive_owner: Option<u64>,
    pub arguments: FieldTable,
}

/// The metadata store key of queue `id`'s acknowledgement state.
pub fn meta_key(id: u64) -> Bytes {
    let mut key = Vec::with_capacity(9);
    key.push(b'q');
    key.extend_from_slice(&id.to_be_bytes());
    Bytes::from(key)
}

impl Queue {
    /// Open queue `id` from its directory, its acknowledgement snapshot (the metadata store's
    /// value) and what the write-ahead log holds for it since the checkpoint, in order. A
    /// non-durable queue starts empty.
    pub fn open(
        store: Arc<Store>,
        dir: &Path,
        log_config: LogConfig,
        options: QueueOptions,
        snapshot: Option<&Bytes>,
        replay: Vec<(u64, WalEntry)>,
    ) -> storage::Result<Queue> {
        let visibility = if options.durable {
            Visibility::for_durability(log_config.durability)
        } else {
            Visibility::Immediate
        };
        let log = EntityLog::open(
            Arc::clone(store.logs()),
            options.id,
            dir,
            log_config,
            visibility,
        )?;
        let args = QueueArgs::parse(&options.name, &options.arguments).unwrap_or_default();
        let mut record = AckRecord::default();
        let mut lsn = 0;
        if let Some(value) = snapshot {
            if value.len() >= 8 && record.apply(&value[8..]) {
                lsn = LE::read_u64(value);
            } else {
                tracing::error!(queue = %options.name, "damaged acknowledgement snapshot; messages may be delivered again");
            }
        }
        let replayed = !replay.is_empty();
        lsn = crate::broker::store::replay_entity(&log, replay, domain::QUEUE, lsn, |body| {
            record.apply(body);
        })?;
        let AckRecord {
            mut acked,
            floor: mut ack_floor,
            delivered_high,
            intents,
        } = record;
        ack_floor = ack_floor.max(log.start_offset());
        acked.remove_below(ack_floor);
        // Transient messages do not survive a restart: count them as acknowledged.
        let mut ready_bytes = 0;
        let mut offset = ack_floor;
        let end = if args.stream {
            offset
        } else {
            log.visible_next_offset()
        };
        while offset < end {
            let read = log.read(offset, READ_AHEAD_BYTES)?;
            let Some(next) = read.next_offset() else {
                break;
            };
            for record in read.records() {
                if !Message::record_is_persistent(&record) {
                    acked.insert(record.offset);
                } else if !acked.contains(record.offset) {
                    ready_bytes += record.body.len() as u64;
                }
            }
            offset = next;
        }
        let queue = Queue {
            name: options.name,
            id: options.id,
            durable: options.durable,
            auto_delete: options.auto_delete,
            exclusive_owner: options.exclusive_owner,
            args,
            arguments: options.arguments,
            log,
            store,
            state: Mutex::new(QueueState {
                next_ready: ack_floor,
                requeued: BTreeSet::new(),
                unacked: HashMap::new(),
                acked,
                ack_floor,
                ahead: VecDeque::new(),
                by_priority: std::collections::BTreeMap::new(),
                consumers: Vec::new(),
                next_consumer: 0,
                had_consumer: false,
                dead_letters: Vec::new(),
                intents,
                ops: Vec::new(),
                lsn,
                // Transient messages dropped above, and anything replayed, reach the next
                // snapshot.
                dirty: true,
                ready_bytes,
                delivered_high: 0,
                delivered_journaled: 0,
            }),
            dispatch_wanted: Arc::new(Notify::new()),
            dispatcher_running: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            last_used_ms: std::sync::atomic::AtomicI64::new(crate::storage::recovery::now_ms()),
        };
        {
            let mut state = queue.lock();
            queue.advance_floor(&mut state);
            skip_acked(&mut state);
            // Messages that may have been delivered before the restart go out first, marked
            // redelivered, as RabbitMQ does.
            let delivered = delivered_high.min(queue.log.visible_next_offset());
            for offset in state.next_ready..delivered {
                if !state.acked.contains(offset) {
                    state.requeued.insert(offset);
                }
            }
            state.next_ready = state.next_ready.max(delivered);
            state.delivered_high = delivered_high;
            state.delivered_journaled = delivered_high;
        }
        let wake = Arc::clone(&queue.dispatch_wanted);
        queue
            .log
            .set_visibility_listener(Arc::new(move || wake.notify_one()));
        let _ = replayed;
        Ok(queue)
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn log(&self) -> &EntityLog {
        &self.log
    }

    /// Whether changes go through the write-ahead log (durable queues; a stream queue's
    /// acknowledgements change nothing durable).
    fn journaled(&self) -> bool {
        self.durable
    }

    /// Commit what the operation under way changed: the operations it applied in memory and
    /// `txn` (its appends). The caller holds the state lock, so commits follow the order the
    /// changes were applied in.
    fn commit(&self, state: &mut QueueState, mut txn: WalTxn) -> storage::Result<Commit> {
        for op in state.ops.drain(..) {
            txn.op(self.id, op_bytes(domain::QUEUE, &op));
        }
        if txn.is_empty() {
            return Ok(Commit::NONE);
        }
        let commit = self.store.commit(txn)?.commit;
        state.lsn = commit.lsn();
        state.dirty = true;
        Ok(commit)
    }

    /// The metadata store item a checkpoint writes, if the state changed since the last one.
    pub fn take_snapshot(&self) -> Option<MetaItem> {
        if !self.journaled() {
            return None;
        }
        let mut state = self.lock();
        if !state.dirty {
            return None;
        }
        state.dirty = false;
        let record = AckRecord {
            acked: state.acked.clone(),
            floor: state.ack_floor,
            delivered_high: state.delivered_journaled,
            intents: state.intents.clone(),
        };
        let mut value = state.lsn.to_le_bytes().to_vec();
        value.extend_from_slice(&record.encode_snapshot());
        Some((meta_key(self.id), Some(Bytes::from(value))))
    }

    /// Mark the state changed (a checkpoint that took it failed).
    pub fn mark_dirty(&self) {
        self.lock().dirty = true;
    }

    /// Drop whole segments every message of which is removed (a checkpoint calls it once the
    /// removals are durable). Pending dead letters are kept: recovery may need to read them.
    pub fn free_acked(&self) -> storage::Result<()> {
        if self.args.stream {
            return Ok(());
        }
        let floor = {
            let state = self.lock();
            let pending = state.intents.keys().next().copied().unwrap_or(u64::MAX);
            state.ack_floor.min(pending)
        };
        self.log
            .truncate_before(floor.min(self.log.next_offset()))?;
        Ok(())
    }

    /// Append a message; returns the commit to wait for before confirming it, or `None` if a
    /// full queue with `x-overflow` `reject-publish` refused it. A full queue with `drop-head`
    /// (the default) drops its oldest ready messages to make room (dead-lettered if
    /// configured; the caller then routes [`Queue::take_dead_letters`]), in the same commit.
    pub fn publish(&self, message: &Message) -> storage::Result<Option<Commit>> {
        let limited = self.args.max_length.is_some() || self.args.max_length_bytes.is_some();
        if self.args.stream || !limited {
            // Nothing but the append: no state to lock. (A stream's x-max-length-bytes is
            // retention, applied by the log.)
            let record = message.to_record();
            if !self.journaled() {
                self.log.append_volatile(std::slice::from_ref(&record))?;
                return Ok(Some(Commit::NONE));
            }
            let mut txn = WalTxn::new();
            txn.append(&self.log, vec![record]);
            return Ok(Some(self.store.commit(txn)?.commit));
        }
        let mut state = self.lock();
        let size = message.body.len() as u64;
        loop {
            if !self.over_limit(&state, 1, size) {
                break;
            }
            match self.args.overflow {
                Overflow::DropHead => {
                    if !self.drop_head(&mut state)? {
                        break;
                    }
                }
                Overflow::RejectPublish => {
                    self.commit(&mut state, WalTxn::new())?;
                    return Ok(None);
                }
                Overflow::RejectPublishDlx => {
                    // Never enqueued: dead-lettered straight from the publish.
                    state.dead_letters.push(DeadLetter {
                        offset: u64::MAX,
                        message: message.clone(),
                        reason: DeadReason::Maxlen,
                    });
                    self.commit(&mut state, WalTxn::new())?;
                    return Ok(None);
                }
            }
        }
        let commit = self.append(&mut state, message)?;
        state.ready_bytes += size;
        Ok(Some(commit))
    }

    /// Append a message and commit, with whatever else the operation changed.
    fn append(&self, state: &mut QueueState, message: &Message) -> storage::Result<Commit> {
        let record = message.to_record();
        if !self.journaled() {
            self.log.append_volatile(std::slice::from_ref(&record))?;
            return self.commit(state, WalTxn::new());
        }
        let mut txn = WalTxn::new();
        txn.append(&self.log, vec![record]);
        self.commit(state, txn)
    }

    /// Add messages another queue dead-lettered here (the caller commits `txn`, with its own
    /// queue's DeadLettered mark); [`Queue::received`] settles the accounting after.
    pub fn append_dead_letters(
        &self,
        txn: &mut WalTxn,
        records: Vec<Record>,
    ) -> storage::Result<()> {
        if self.journaled() {
            txn.append(&self.log, records);
        } else {
            self.log.append_volatile(&records)?;
        }
        Ok(())
    }

    /// Messages of `bytes` body bytes arrived through [`Queue::append_dead_letters`]: count
    /// them, enforce the length limits, wake the consumers.
    pub fn received(&self, bytes: u64) -> storage::Result<Commit> {
        let mut state = self.lock();
        state.ready_bytes += bytes;
        let mut commit = Commit::NONE;
        if !self.args.stream
            && (self.args.max_length.is_some() || self.args.max_length_bytes.is_some())
        {
            while self.over_limit(&state, 0, 0) {
                if !self.drop_head(&mut state)? {
                    break;
                }
            }
            commit = self.commit(&mut state, WalTxn::new())?;
        }
        drop(state);
        self.wake_dispatcher();
        Ok(commit)
    }

    /// Whether adding `messages` messages of `bytes` body bytes would pass a length limit.
    fn over_limit(&self, state: &QueueState, messages: u64, bytes: u64) -> bool {
        let count = self.backlog_count(state);
        self.args
            .max_length
            .is_some_and(|max| count + messages > max)
            || self
                .args
                .max_length_bytes
                .is_some_and(|max| state.ready_bytes + bytes > max)
    }

    /// Ready messages counting those appended but not yet durable (for length limits).
    fn backlog_count(&self, state: &QueueState) -> u64 {
        let end = self.log.next_offset();
        let tail = end.saturating_sub(state.next_ready);
        tail - state.acked.count_in(state.next_ready, end)
            + state.requeued.len() as u64
            + state.by_priority.len() as u64
    }

    /// Drop the oldest ready message (dead-lettered as `maxlen` if configured), whether or not
    /// its append is durable yet (its removal is committed after it). Returns false if nothing
    /// is ready.
    fn drop_head(&self, state: &mut QueueState) -> storage::Result<bool> {
        let next = state.requeued.first().copied().or_else(|| {
            skip_acked(state);
            (state.next_ready < self.log.next_offset()).then_some(state.next_ready)
        });
        let Some(offset) = next else {
            return Ok(false);
        };
        let taken = if offset >= self.log.visible_next_offset() {
            // Still in memory, waiting for its commit: take it from there.
            let message = self.read_written(offset)?;
            state.next_ready = offset + 1;
            skip_acked(state);
            message.map(|m| {
                state.ready_bytes = state.ready_bytes.saturating_sub(m.body.len() as u64);
                (offset, false, m)
            })
        } else {
            self.take_next(state)?
        };
        let Some((taken, _, message)) = taken else {
            return Ok(false);
        };
        debug_assert_eq!(taken, offset);
        self.acknowledge(state, taken);
        self.dead_letter(state, taken, message, DeadReason::Maxlen);
        Ok(true)
    }

    /// The message at `offset` whether or not it is visible yet.
    fn read_written(&self, offset: u64) -> storage::Result<Option<Message>> {
        let read = self.log.read_written(offset, 1)?;
        let message = read
            .records()
            .find(|r| r.offset == offset)
            .and_then(|r| Message::from_record(&r));
        Ok(message)
    }

    /// Messages ready for delivery (not counting unacknowledged ones).
    pub fn message_count(&self) -> u64 {
        let state = self.lock();
        self.ready_count(&state)
    }

    fn ready_count(&self, state: &QueueState) -> u64 {
        let end = self.log.visible_next_offset();
        if self.args.stream {
            return end - self.log.start_offset().min(end);
        }
        let tail = end.saturating_sub(state.next_ready);
        tail - state.acked.count_in(state.next_ready, end)
            + state.requeued.len() as u64
            + state.by_priority.len() as u64
    }

    pub fn consumer_count(&self) -> usize {
        self.lock().consumers.len()
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Wait until deliveries may be possible (for the dispatcher task).
    pub async fn dispatch_wanted(&self) {
        self.dispatch_wanted.notified().await;
    }

    pub fn wake_dispatcher(&self) {
        self.dispatch_wanted.notify_one();
    }

    /// Attach a consumer. An exclusive consumer needs an unconsumed queue; nobody joins a
    /// queue with an exclusive consumer.
    pub fn add_consumer(&self, spec: ConsumerSpec) -> Result<(), QueueError> {
        self.touch();
        let mut state = self.lock();
        if state.consumers.iter().any(|c| c.spec.exclusive)
            || (spec.exclusive && !state.consumers.is_empty())
        {
            return Err(QueueError::ExclusiveConsumer);
        }
        let cursor = spec.stream_offset;
        state.consumers.push(Consumer {
            spec,
            unacked: 0,
            cursor,
        });
        state.had_consumer = true;
        drop(state);
        self.wake_dispatcher();
        Ok(())
    }

    /// Detach a consumer; its unacknowledged deliveries stay with its channel. Returns whether
    /// the queue should now be auto-deleted.
    pub fn remove_consumer(&self, consumer_id: u64) -> bool {
        self.touch();
        let mut state = self.lock();
        state.consumers.retain(|c| c.spec.id != consumer_id);
        self.auto_delete && state.had_consumer && state.consumers.is_empty()
    }

    /// Hand out what can be handed out now, round-robin over consumers with room.
    pub fn dispatch(self: &Arc<Self>) -> storage::Result<()> {
        let mut state = self.lock();
        if self.is_deleted() {
            return Ok(());
        }
        if self.args.stream {
            return self.dispatch_stream(&mut state);
        }
        let mut outgoing = Vec::new();
        let dispatched = self.dispatch_classic(&mut state, &mut outgoing);
        self.journal_delivered(&mut state);
        let commit = self.commit(&mut state, WalTxn::new());
        self.send_deliveries(
            &mut state,
            outgoing,
            commit.as_ref().copied().unwrap_or_default(),
        );
        dispatched.and(commit.map(|_| ()))
    }

    /// Record (without anyone waiting: losing it only loses a redelivered flag) how far
    /// messages have been handed out.
    fn journal_delivered(&self, state: &mut QueueState) {
        if state.delivered_high > state.delivered_journaled {
            state.delivered_journaled = state.delivered_high;
            let op = acks::encode_delivered(state.delivered_high);
            self.journal_op(state, op);
        }
    }

    /// Hand ready messages to consumers with room, round-robin; the deliveries go out once the
    /// removals of automatically acknowledged ones are committed ([`Queue::send_deliveries`]).
    fn dispatch_classic(
        self: &Arc<Self>,
        state: &mut QueueState,
        outgoing: &mut Vec<(usize, Delivery)>,
    ) -> storage::Result<()> {
        loop {
            if state.consumers.is_empty() {
                return Ok(());
            }
            let Some(pick) = self.pick_consumer(state) else {
                return Ok(());
            };
            let Some((offset, redelivered, message)) = self.take_ready(state)? else {
                return Ok(());
            };
            let size = message.body.len() as u64;
            let consumer = &mut state.consumers[pick];
            let bytes = delivery_bytes(&message);
            let no_ack = consumer.spec.no_ack;
            let delivery = Delivery {
                queue: Arc::clone(self),
                consumer_tag: consumer.spec.tag.clone(),
                consumer_id: consumer.spec.id,
                offset,
                redelivered,
                no_ack,
                message,
                commit: Commit::NONE,
            };
            consumer.spec.backlog.add(bytes);
            let id = consumer.spec.id;
            if no_ack {
                self.acknowledge(state, offset);
            } else {
                consumer.unacked += 1;
                consumer
                    .spec
                    .channel_limit
                    .unacked
                    .fetch_add(1, Ordering::Relaxed);
                state.unacked.insert(offset, (id, size));
                state.delivered_high = state.delivered_high.max(offset + 1);
            }
            outgoing.push((pick, delivery));
        }
    }

    /// Send what [`Queue::dispatch_classic`] picked. A delivery whose connection is gone goes
    /// back (an automatically acknowledged one is lost with its connection, as in RabbitMQ).
    fn send_deliveries(
        &self,
        state: &mut QueueState,
        outgoing: Vec<(usize, Delivery)>,
        commit: Commit,
    ) {
        let mut gone = Vec::new();
        for (pick, mut delivery) in outgoing {
            let Some(consumer) = state.consumers.get(pick) else {
                continue;
            };
            let (offset, no_ack, id) = (delivery.offset, delivery.no_ack, consumer.spec.id);
            let bytes = delivery.bytes();
            if no_ack {
                delivery.commit = commit;
            }
            if consumer
                .spec
                .sink
                .send(QueueEvent::Deliver(delivery))
                .is_err()
            {
                consumer.spec.backlog.remove(bytes);
                if !no_ack {
                    state.unacked.remove(&offset);
                    state.requeued.insert(offset);
                }
                gone.push(id);
            }
        }
        if !gone.is_empty() {
            state.consumers.retain(|c| !gone.contains(&c.spec.id));
        }
    }

    /// Streams: every consumer reads on from its own cursor while its prefetch allows.
    fn dispatch_stream(self: &Arc<Self>, state: &mut QueueState) -> storage::Result<()> {
        let end = self.log.visible_next_offset();
        let start = self.log.start_offset();
        for consumer in state.consumers.iter_mut() {
            // Retention may have removed what a slow consumer had not read yet.
            consumer.cursor = consumer.cursor.max(start);
            while consumer.has_room() && consumer.cursor < end {
                let read = self.log.read(consumer.cursor, READ_AHEAD_BYTES)?;
                let Some(next) = read.next_offset() else {
                    break;
                };
                for record in read.records() {
                    if record.offset < consumer.cursor || !consumer.has_room() {
                        continue;
                    }
                    let Some(message) = Message::stream_delivery(&record) else {
                        consumer.cursor = record.offset + 1;
                        continue;
                    };
                    let delivery = Delivery {
                        queue: Arc::clone(self),
                        consumer_tag: consumer.spec.tag.clone(),
                        consumer_id: consumer.spec.id,
                        offset: record.offset,
                        redelivered: false,
                        no_ack: false,
                        message,
                        commit: Commit::NONE,
                    };
                    let bytes = delivery.bytes();
                    consumer.spec.backlog.add(bytes);
                    consumer.unacked += 1;
                    consumer
                        .spec
                        .channel_limit
                        .unacked
                        .fetch_add(1, Ordering::Relaxed);
                    consumer.cursor = record.offset + 1;
                    if consumer
                        .spec
                        .sink
                        .send(QueueEvent::Deliver(delivery))
                        .is_err()
                    {
                        consumer.spec.backlog.remove(bytes);
                        break;
                    }
                }
                if !consumer.has_room() {
                    break;
                }
                consumer.cursor = consumer.cursor.max(next);
            }
        }
        Ok(())
    }

    /// Streams: a delivery was settled (acked, nacked, rejected, returned): only the consumer's
    /// credit changes; nothing is removed or requeued.
    fn stream_credit(&self, consumer_id: u64) {
        release_credit(&mut self.lock(), consumer_id);
        self.wake_dispatcher();
    }

    /// Where a stream consumer starts, from its `x-stream-offset` argument: `first`, `last`,
    /// `next` (the default), an offset, a timestamp (seconds), or an interval back from now
    /// (`1h`, `30m`...). `Err` explains an unusable value.
    pub fn resolve_stream_offset(
        &self,
        spec: Option<&amq_protocol::types::AMQPValue>,
    ) -> Result<u64, String> {
        use amq_protocol::types::AMQPValue;
        let start = self.log.start_offset();
        let end = self.log.visible_next_offset();
        let at_time = |ms: i64| -> Result<u64, String> {
            Ok(self
                .log
                .offset_for_timestamp(ms)
                .map_err(|e| e.to_string())?
                .unwrap_or(end))
        };
        let text = |s: &str| -> Result<u64, String> {
            match s {
                "first" => Ok(start),
                "last" => Ok(end.saturating_sub(1).max(start)),
                "next" => Ok(end),
                other => {
                    let interval = super::args::parse_interval(other)
                        .ok_or_else(|| format!("invalid x-stream-offset '{other}'"))?;
                    let now = crate::storage::recovery::now_ms();
                    at_time(now - i64::try_from(interval.as_millis()).unwrap_or(i64::MAX))
                }
            }
        };
        let number = |n: i64| u64::try_from(n).unwrap_or(0).clamp(start, end);
        match spec {
            None => Ok(end),
            Some(AMQPValue::LongString(s)) => text(&String::from_utf8_lossy(s.as_bytes())),
            Some(AMQPValue::ShortString(s)) => text(s.as_str()),
            Some(AMQPValue::Timestamp(secs)) => at_time(
                i64::try_from(*secs)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000),
            ),
            Some(other) => match super::args::integer(other) {
                Some(n) => Ok(number(n)),
                None => Err(format!("invalid x-stream-offset {other:?}")),
            },
        }
    }

    /// Note a use (declaration, consumer, basic.get) for `x-expires`.
    pub fn touch(&self) {
        self.last_used_ms
            .store(crate::storage::recovery::now_ms(), Ordering::Relaxed);
    }

    /// Whether `x-expires` has passed with no consumer and no use.
    pub fn idle_expired(&self, now_ms: i64) -> bool {
        let Some(expires) = self.args.expires_ms else {
            return false;
        };
        let idle = now_ms - self.last_used_ms.load(Ordering::Relaxed);
        self.consumer_count() == 0 && idle >= i64::try_from(expires).unwrap_or(i64::MAX)
    }

    pub fn is_stream(&self) -> bool {
        self.args.stream
    }

    /// The next consumer with room, round-robin.
    fn pick_consumer(&self, state: &mut QueueState) -> Option<usize> {
        if self.args.single_active_consumer {
            // Only the longest-standing consumer receives; the next takes over when it goes.
            return state.consumers.first().filter(|c| c.has_room()).map(|_| 0);
        }
        // Round-robin among the highest-priority consumers that have room.
        let top = state
            .consumers
            .iter()
            .filter(|c| c.has_room())
            .map(|c| c.spec.priority)
            .max()?;
        let n = state.consumers.len();
        for i in 0..n {
            let index = (state.next_consumer + i) % n;
            let c = &state.consumers[index];
            if c.spec.priority == top && c.has_room() {
                state.next_consumer = (index + 1) % n;
                return Some(index);
            }
        }
        None
    }

    /// Take the next ready message that has not expired: requeued ones first, then the log
    /// from `next_ready`. Expired ones met on the way are dropped (dead-lettered if configured),
    /// as RabbitMQ expires messages when they reach the head.
    fn take_ready(&self, state: &mut QueueState) -> storage::Result<Option<(u64, bool, Message)>> {
        let now = crate::storage::recovery::now_ms();
        loop {
            let Some((offset, redelivered, message)) = self.take_next(state)? else {
                return Ok(None);
            };
            if !self.expired(&message, now) {
                return Ok(Some((offset, redelivered, message)));
            }
            self.acknowledge(state, offset);
            self.dead_letter(state, offset, message, DeadReason::Expired);
        }
    }

    fn expired(&self, message: &Message, now_ms: i64) -> bool {
        let ttl = match (self.args.message_ttl_ms, message.expiration_ms()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => return false,
        };
        message
            .enqueued_ms
            .saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX))
            <= now_ms
    }

    /// Keep a removed message for dead-lettering if the queue has a dead-letter exchange; a
    /// durable queue records the intent in the same commit as the removal.
    fn dead_letter(
        &self,
        state: &mut QueueState,
        offset: u64,
        message: Message,
        reason: DeadReason,
    ) {
        if self.args.dead_letter_exchange.is_none() {
            return;
        }
        if self.journaled() {
            state.intents.insert(offset, reason);
            self.journal_op(state, acks::encode_dead_letter(offset, reason));
        }
        state.dead_letters.push(DeadLetter {
            offset,
            message,
            reason,
        });
    }

    /// Drop expired messages at the head even with no consumer (a TTL queue feeding a
    /// dead-letter exchange is how delayed retries are built). Queues without a TTL or a
    /// dead-letter exchange are left alone: their expired messages go when they reach a
    /// consumer.
    pub fn expire_head(&self) -> storage::Result<()> {
        if self.args.message_ttl_ms.is_none() && self.args.dead_letter_exchange.is_none() {
            return Ok(());
        }
        let mut state = self.lock();
        let now = crate::storage::recovery::now_ms();
        while let Some((offset, redelivered, message)) = self.take_next(&mut state)? {
            if self.expired(&message, now) {
                self.acknowledge(&mut state, offset);
                self.dead_letter(&mut state, offset, message, DeadReason::Expired);
                continue;
            }
            // Not expired: put it back where it was.
            self.put_back(&mut state, offset, message, redelivered);
            break;
        }
        self.commit(&mut state, WalTxn::new())?;
        Ok(())
    }

    /// Messages removed since the last call that should go to the dead-letter exchange. The
    /// caller routes them and commits their arrival with [`Queue::commit_dead_letters`].
    pub fn take_dead_letters(&self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.lock().dead_letters)
    }

    /// Record in `txn` that these dead letters reached their targets (nothing for a queue
    /// that records no intents).
    fn dead_lettered_op(&self, txn: &mut WalTxn, offsets: &[u64]) {
        let recorded: Vec<u64> = offsets.iter().copied().filter(|&o| o != u64::MAX).collect();
        if self.journaled() && !recorded.is_empty() {
            txn.op(
                self.id,
                op_bytes(domain::QUEUE, &acks::encode_dead_lettered(&recorded)),
            );
        }
    }

    /// Dead letters recorded before a restart but never routed: read back from the log, to
    /// route again (recovery).
    pub fn recover_dead_letters(&self) -> storage::Result<()> {
        let pending: Vec<(u64, DeadReason)> = {
            let state = self.lock();
            state.intents.iter().map(|(o, r)| (*o, *r)).collect()
        };
        let mut letters = Vec::new();
        for (offset, reason) in pending {
            match self.read_written(offset)? {
                Some(message) => letters.push(DeadLetter {
                    offset,
                    message,
                    reason,
                }),
                None => {
                    tracing::warn!(queue = %self.name, offset, "a pending dead letter is no longer stored")
                }
            }
        }
        self.lock().dead_letters.extend(letters);
        Ok(())
    }

    fn take_next(&self, state: &mut QueueState) -> storage::Result<Option<(u64, bool, Message)>> {
        let taken = self.take_next_unaccounted(state)?;
        if let Some((_, _, message)) = &taken {
            state.ready_bytes = state.ready_bytes.saturating_sub(message.body.len() as u64);
        }
        Ok(taken)
    }

    fn take_next_unaccounted(
        &self,
        state: &mut QueueState,
    ) -> storage::Result<Option<(u64, bool, Message)>> {
        if self.args.max_priority.is_some() {
            self.index_priorities(state)?;
            return Ok(state
                .by_priority
                .pop_first()
                .map(|((_, offset), (message, redelivered))| (offset, redelivered, message)));
        }
        if let Some(offset) = state.requeued.pop_first() {
            match self.read_one(offset)? {
                Some(message) => return Ok(Some((offset, true, message))),
                // Gone (a purge raced it): nothing to deliver there.
                None => return self.take_next_unaccounted(state),
            }
        }
        if state.ahead.is_empty() {
            self.read_ahead(state)?;
        }
        Ok(state.ahead.pop_front().map(|(offset, message)| {
            state.next_ready = offset + 1;
            skip_acked(state);
            (offset, false, message)
        }))
    }

    /// The priority a message is served with.
    fn priority_of(&self, message: &Message) -> u8 {
        let max = self.args.max_priority.unwrap_or(0);
        message.properties.priority().unwrap_or(0).min(max)
    }

    /// Priority queues: read every visible message past `next_ready` into `by_priority`.
    fn index_priorities(&self, state: &mut QueueState) -> storage::Result<()> {
        let end = self.log.visible_next_offset();
        while state.next_ready < end {
            let read = self.log.read(state.next_ready, READ_AHEAD_BYTES)?;
            let Some(next) = read.next_offset() else {
                break;
            };
            for record in read.records() {
                if record.offset >= state.next_ready && !state.acked.contains(record.offset) {
                    if let Some(message) = Message::from_record(&record) {
                        let key = (std::cmp::Reverse(self.priority_of(&message)), record.offset);
                        state.by_priority.insert(key, (message, false));
                    }
                }
            }
            state.next_ready = next.max(state.next_ready + 1).min(end);
        }
        Ok(())
    }

    /// Put a message back among the ready ones (requeue, or an unexpired head put back).
    fn put_back(&self, state: &mut QueueState, offset: u64, message: Message, redelivered: bool) {
        state.ready_bytes += message.body.len() as u64;
        if self.args.max_priority.is_some() {
            let key = (std::cmp::Reverse(self.priority_of(&message)), offset);
            state.by_priority.insert(key, (message, redelivered));
        } else if redelivered {
            state.requeued.insert(offset);
        } else {
            state.next_ready = offset;
            state.ahead.push_front((offset, message));
        }
    }

    fn read_ahead(&self, state: &mut QueueState) -> storage::Result<()> {
        let end = self.log.visible_next_offset();
        let mut from = state.next_ready;
        while state.ahead.is_empty() && from < end {
            let read = self.log.read(from, READ_AHEAD_BYTES)?;
            let Some(next) = read.next_offset() else {
                break;
            };
            for record in read.records() {
                if record.offset >= from && !state.acked.contains(record.offset) {
                    if let Some(message) = Message::from_record(&record) {
                        state.ahead.push_back((record.offset, message));
                    }
                }
            }
            from = next;
        }
        if state.ahead.is_empty() {
            // Everything up to `from` was acknowledged (or unreadable): skip it.
            state.next_ready = state.next_ready.max(from.min(end));
        }
        Ok(())
    }

    fn read_one(&self, offset: u64) -> storage::Result<Option<Message>> {
        let read = self.log.read(offset, 1)?;
        let message = read
            .records()
            .find(|r| r.offset == offset)
            .and_then(|r| Message::from_record(&r));
        Ok(message)
    }

    /// `basic.get`: the next ready message, how many remain after it, and the commit to wait
    /// for before answering (the removal, with `no_ack`; expired messages met on the way).
    pub fn get(self: &Arc<Self>, no_ack: bool) -> storage::Result<(Option<Got>, Commit)> {
        self.touch();
        let mut state = self.lock();
        let Some((offset, redelivered, message)) = self.take_ready(&mut state)? else {
            let commit = self.commit(&mut state, WalTxn::new())?;
            return Ok((None, commit));
        };
        if no_ack {
            self.acknowledge(&mut state, offset);
        } else {
            state.unacked.insert(offset, (0, message.body.len() as u64));
            state.delivered_high = state.delivered_high.max(offset + 1);
            self.journal_delivered(&mut state);
        }
        let remaining = self.ready_count(&state);
        let commit = self.commit(&mut state, WalTxn::new())?;
        Ok((Some((offset, redelivered, message, remaining)), commit))
    }

    /// Acknowledge a delivered message. `consumer_id` is the consumer it went to (0 for
    /// `basic.get`); only streams need it. The acknowledgement is recorded by the queue's next
    /// commit: the caller makes one with [`Queue::flush`] once per round of acknowledgements
    /// (nothing waits for it, except `tx.commit-ok`: a lost acknowledgement means a
    /// redelivery, never a loss).
    pub fn ack(&self, offset: u64, consumer_id: u64) {
        if self.args.stream {
            return self.stream_credit(consumer_id);
        }
        let mut state = self.lock();
        if let Some((consumer_id, _)) = state.unacked.remove(&offset) {
            release_credit(&mut state, consumer_id);
            self.acknowledge(&mut state, offset);
        }
        drop(state);
        self.wake_dispatcher();
    }

    /// Commit the changes recorded since the last commit (acknowledgements).
    pub fn flush(&self) -> storage::Result<Commit> {
        let mut state = self.lock();
        self.commit(&mut state, WalTxn::new())
    }

    /// Commit `txn` (dead letters' arrival at their targets) with this queue's pending changes
    /// (the dead letters' removal and intents, if not yet committed) and the mark that the
    /// dead letters at `offsets` arrived: one commit, in that order.
    pub fn commit_dead_letters(&self, txn: WalTxn, offsets: &[u64]) -> storage::Result<Commit> {
        let mut state = self.lock();
        let mut pending = WalTxn::new();
        for op in state.ops.drain(..) {
            pending.op(self.id, op_bytes(domain::QUEUE, &op));
        }
        pending.extend(txn);
        self.dead_lettered_op(&mut pending, offsets);
        if pending.is_empty() {
            return Ok(Commit::NONE);
        }
        let commit = self.store.commit(pending)?.commit;
        for offset in offsets {
            state.intents.remove(offset);
        }
        state.lsn = commit.lsn();
        state.dirty = true;
        Ok(commit)
    }

    /// Drop a delivered message without requeueing it (reject or nack): dead-lettered if the
    /// queue has a dead-letter exchange (see [`Queue::take_dead_letters`]).
    pub fn reject(&self, offset: u64, consumer_id: u64) -> storage::Result<Commit> {
        if self.args.stream {
            self.stream_credit(consumer_id);
            return Ok(Commit::NONE);
        }
        let mut state = self.lock();
        if let Some((consumer_id, _)) = state.unacked.remove(&offset) {
            release_credit(&mut state, consumer_id);
            self.acknowledge(&mut state, offset);
            if self.args.dead_letter_exchange.is_some() {
                if let Some(message) = self.read_one(offset)? {
                    self.dead_letter(&mut state, offset, message, DeadReason::Rejected);
                }
            }
        }
        let commit = self.commit(&mut state, WalTxn::new())?;
        drop(state);
        self.wake_dispatcher();
        Ok(commit)
    }

    /// Put a delivered message back where it was; it goes out again marked redelivered.
    pub fn requeue(&self, offset: u64, consumer_id: u64) {
        if self.args.stream {
            return self.stream_credit(consumer_id);
        }
        let mut state = self.lock();
        if let Some((consumer_id, size)) = state.unacked.remove(&offset) {
            release_credit(&mut state, consumer_id);
            if self.args.max_priority.is_some() {
                // It competes by priority again, so its priority must be read back.
                match self.read_one(offset) {
                    Ok(Some(message)) => self.put_back(&mut state, offset, message, true),
                    _ => {
                        state.requeued.insert(offset);
                    }
                }
            } else {
                state.requeued.insert(offset);
                state.ready_bytes += size;
            }
        }
        drop(state);
        self.wake_dispatcher();
    }

    /// Remove every ready message (not the unacknowledged ones); returns how many, and the
    /// commit to wait for before answering `purge-ok`.
    pub fn purge(&self) -> storage::Result<(u64, Commit)> {
        let mut state = self.lock();
        let count = self.ready_count(&state);
        let end = self.log.visible_next_offset();
        let requeued: Vec<u64> = std::mem::take(&mut state.requeued).into_iter().collect();
        for offset in requeued {
            self.acknowledge(&mut state, offset);
        }
        let prioritized: Vec<u64> = std::mem::take(&mut state.by_priority)
            .into_keys()
            .map(|(_, offset)| offset)
            .collect();
        for offset in prioritized {
            self.acknowledge(&mut state, offset);
        }
        let start = state.next_ready;
        if start < end {
            state.acked.insert_range(start, end);
            self.journal_op(&mut state, acks::encode_acked(start, end));
        }
        state.ahead.clear();
        state.next_ready = end;
        state.ready_bytes = 0;
        self.advance_floor(&mut state);
        let commit = self.commit(&mut state, WalTxn::new())?;
        Ok((count, commit))
    }

    fn acknowledge(&self, state: &mut QueueState, offset: u64) {
        state.acked.insert(offset);
        self.journal_op(state, acks::encode_acked(offset, offset + 1));
        self.advance_floor(state);
    }

    /// Move the floor over acknowledged runs. The log's segments wholly below it go at the
    /// next checkpoint ([`Queue::free_acked`]), once the acknowledgements are durable.
    fn advance_floor(&self, state: &mut QueueState) {
        while let Some(end) = state.acked.run_from(state.ack_floor) {
            state.ack_floor = end;
        }
        state.acked.remove_below(state.ack_floor);
    }

    /// Note an operation for the next commit (durable queues only).
    fn journal_op(&self, state: &mut QueueState, op: Vec<u8>) {
        if self.journaled() && !self.args.stream {
            state.ops.push(op);
        }
    }

    /// Mark deleted, tell every consumer. The caller removes the files once the deletion is
    /// durable.
    pub fn delete(&self) {
        self.deleted.store(true, Ordering::Release);
        let consumers = std::mem::take(&mut self.lock().consumers);
        for consumer in consumers {
            let _ = consumer.spec.sink.send(QueueEvent::Cancelled {
                consumer_id: consumer.spec.id,
                consumer_tag: consumer.spec.tag.clone(),
            });
        }
        self.close();
        self.wake_dispatcher();
    }

    /// Let go of the log's cached descriptor (server shutdown). Nothing needs writing: the
    /// write-ahead log holds every change.
    pub fn close(&self) {
        self.log.release_files();
    }

    /// Whether a connection other than `connection` owns this exclusive queue.
    pub fn locked_for(&self, connection: u64) -> bool {
        self.exclusive_owner
            .is_some_and(|owner| owner != connection)
    }

    /// For `queue.delete` with `if-unused` / `if-empty`.
    pub fn check_delete(&self, if_unused: bool, if_empty: bool) -> Result<u64, QueueError> {
        let state = self.lock();
        if if_unused && !state.consumers.is_empty() {
            return Err(QueueError::InUse);
        }
        let count = self.ready_count(&state);
        if if_empty && count > 0 {
            return Err(QueueError::InUse);
        }
        Ok(count)
    }

    /// Bytes the log holds now (tests check that acknowledged segments go).
    pub fn log_bytes(&self) -> u64 {
        self.log.size_bytes()
    }
}

fn release_credit(state: &mut QueueState, consumer_id: u64) {
    if let Some(consumer) = state
        .consumers
        .iter_mut()
        .find(|c| c.spec.id == consumer_id)
    {
        consumer.unacked = consumer.unacked.saturating_sub(1);
    }
}

/// Move `next_ready` past acknowledged offsets (and drop read-ahead they cover).
fn skip_acked(state: &mut QueueState) {
    state.next_ready = state.next_ready.max(state.ack_floor);
    while let Some(end) = state.acked.run_from(state.next_ready) {
        state.next_ready = end;
    }
    while state
        .ahead
        .front()
        .is_some_and(|(o, _)| *o < state.next_ready || state.acked.contains(*o))
    {
        state.ahead.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::amqp::QueueDeclare;
    use crate::broker::{Broker, BrokerConfig};
    use crate::storage::io::{CrashMode, FaultVfs};

    #[test]
    fn a_backlog_is_bounded_in_count_bytes_and_budget_but_always_takes_one() {
        let budget = Arc::new(MemoryBudget::new(10 * BACKLOG_BYTES_MAX));
        let backlog = Backlog::new(Arc::clone(&budget));
        // One delivery larger than every bound still goes out, alone.
        backlog.add(BACKLOG_BYTES_MAX * 2);
        assert!(!backlog.has_room());
        backlog.remove(BACKLOG_BYTES_MAX * 2);
        assert!(backlog.has_room());
        for _ in 0..BACKLOG_MAX {
            assert!(backlog.has_room());
            backlog.add(1);
        }
        assert!(!backlog.has_room(), "count");
        // The server-wide budget: full elsewhere, only a lone delivery fits.
        let other = Backlog::new(Arc::clone(&budget));
        budget.charge(10 * BACKLOG_BYTES_MAX);
        assert!(other.has_room());
        other.add(1);
        assert!(!other.has_room(), "budget");
        budget.release(10 * BACKLOG_BYTES_MAX);
        // Dropped with deliveries still queued: their bytes leave the budget.
        drop(backlog);
        drop(other);
        assert_eq!(budget.held(), 0);
    }
    use amq_protocol::protocol::basic::AMQPProperties;

    fn message(body: &str, persistent: bool) -> Message {
        let properties =
            AMQPProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
        let raw = cookie_factory::gen_simple(
            amq_protocol::protocol::basic::gen_properties(&properties),
            Vec::new(),
        )
        .unwrap();
        Message {
            exchange: Bytes::new(),
            routing_key: Bytes::from_static(b"q"),
            raw_properties: Bytes::from(raw),
            properties,
            body: Bytes::from(body.to_string()),
            enqueued_ms: crate::storage::recovery::now_ms(),
        }
    }

    /// A broker on `vfs` with a durable queue `q` whose log rolls every `segment_bytes_max`.
    fn open(vfs: &FaultVfs, segment_bytes_max: u64) -> (Broker, Arc<Queue>) {
        let mut config = BrokerConfig::default();
        config.stream_log.segment_bytes_max = segment_bytes_max;
        let broker =
            Broker::open_with(Arc::new(vfs.clone()), std::path::Path::new("/data"), config)
                .unwrap();
        let declare = QueueDeclare {
            name: "q".into(),
            durable: true,
            ..QueueDeclare::default()
        };
        let (_, commit) = broker.vhost().declare_queue(declare, 1).unwrap();
        broker.wait(commit).unwrap();
        let queue = broker.vhost().queue("q").unwrap();
        (broker, queue)
    }

    fn publish_durably(broker: &Broker, queue: &Queue, message: &Message) {
        let commit = queue.publish(message).unwrap().unwrap();
        broker.wait(commit).unwrap();
    }

    #[test]
    fn acks_survive_a_crash_and_transient_messages_do_not() {
        let vfs = FaultVfs::new(1);
        let (broker, queue) = open(&vfs, 1 << 20);
        for i in 0..5 {
            publish_durably(&broker, &queue, &message(&format!("m{i}"), i != 3));
        }
        assert_eq!(queue.message_count(), 5);
        let (got, _) = queue.get(false).unwrap();
        let (first, _, m, remaining) = got.unwrap();
        assert_eq!((&m.body[..], remaining), (&b"m0"[..], 4));
        let (got, commit) = queue.get(true).unwrap();
        broker.wait(commit).unwrap();
        queue.ack(first, 0);
        broker.wait(queue.flush().unwrap()).unwrap();
        assert_eq!(got.unwrap().0, 1);
        drop((broker, queue));
        vfs.crash(CrashMode::DropUnsynced);
        let (broker, queue) = open(&vfs, 1 << 20);
        // m0 acked, m1 auto-acked, m3 transient: m2 and m4 remain.
        assert_eq!(queue.message_count(), 2);
        let bodies: Vec<_> =
            std::iter::from_fn(|| queue.get(true).unwrap().0.map(|g| g.2.body)).collect();
        assert_eq!(
            bodies,
            [Bytes::from_static(b"m2"), Bytes::from_static(b"m4")]
        );
        drop(broker);
    }

    #[test]
    fn idle_queues_open_on_first_use_and_a_checkpoint_keeps_what_only_the_log_held() {
        let vfs = FaultVfs::new(3);
        let (broker, queue) = open(&vfs, 1 << 20);
        let ttl = QueueDeclare {
            name: "timed".into(),
            durable: true,
            arguments: {
                let mut table = FieldTable::default();
                table.insert(
                    "x-message-ttl".into(),
                    amq_protocol::types::AMQPValue::LongLongInt(3_600_000),
                );
                table
            },
            ..QueueDeclare::default()
        };
        broker
            .wait(broker.vhost().declare_queue(ttl, 1).unwrap().1)
            .unwrap();
        publish_durably(&broker, &queue, &message("kept", true));
        drop((broker, queue));
        vfs.crash(CrashMode::DropUnsynced);

        let reopen = || {
            Broker::open_with(
                Arc::new(vfs.clone()),
                std::path::Path::new("/data"),
                BrokerConfig::default(),
            )
            .unwrap()
        };
        let broker = reopen();
        let open: Vec<String> = broker
            .vhost()
            .queues()
            .iter()
            .map(|q| q.name.clone())
            .collect();
        // Only the queue with a TTL (timed work) opened at start.
        assert_eq!(open, ["timed"]);
        // A checkpoint opens `q`: its message was only in the write-ahead log.
        broker.checkpoint().unwrap();
        assert_eq!(broker.vhost().queues().len(), 2);
        drop(broker);
        vfs.crash(CrashMode::DropUnsynced);

        let broker = reopen();
        assert_eq!(broker.vhost().queues().len(), 1, "q is idle again");
        let queue = broker.vhost().queue("q").expect("opened on first use");
        assert_eq!(queue.message_count(), 1);
        let (got, _) = queue.get(true).unwrap();
        assert_eq!(&got.unwrap().2.body[..], b"kept");
    }

    #[test]
    fn acknowledged_segments_are_deleted_so_disk_follows_the_backlog() {
        let vfs = FaultVfs::new(2);
        let (broker, queue) = open(&vfs, 4096);
        let body = "x".repeat(500);
        for _ in 0..100 {
            publish_durably(&broker, &queue, &message(&body, true));
        }
        broker.checkpoint().unwrap();
        let full = queue.log_bytes();
        assert!(queue.log().segment_count() > 5);
        let mut offsets = Vec::new();
        while let (Some((offset, ..)), _) = queue.get(false).unwrap() {
            offsets.push(offset);
        }
        for &offset in &offsets[..90] {
            queue.ack(offset, 0);
        }
        broker.wait(queue.flush().unwrap()).unwrap();
        {}
        // Acknowledged segments go once the acknowledgements are durable: at a checkpoint.
        broker.checkpoint().unwrap();
        assert!(
            queue.log_bytes() < full / 5,
            "{} of {full}",
            queue.log_bytes()
        );
        // Requeue one in the middle: it comes back, marked redelivered.
        queue.requeue(offsets[95], 0);
        let (again, redelivered, ..) = queue.get(false).unwrap().0.unwrap();
        assert_eq!((again, redelivered), (offsets[95], true));
    }
}
