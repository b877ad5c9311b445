//! A queue: a log of messages plus an acknowledgement cursor shared by its consumers.
//!
//! Every message is appended to the queue's log. What is ready for delivery is the part of the
//! log past `next_ready` plus the `requeued` offsets (returned by nack, reject, recover or a
//! closed channel; they go out again first, in their original order, marked redelivered).
//! Delivered messages are `unacked` until acknowledged; acknowledged offsets join `acked`, and
//! once everything below an offset is acknowledged (`ack_floor`) the log may drop whole
//! segments below it, so disk use follows the backlog.
//!
//! Acknowledgements of a durable queue go to a small journal (`acks/`) without waiting for its
//! fsync: after a crash an acknowledged message may be delivered again (at-least-once), but a
//! published, confirmed message is never lost. Only persistent messages (delivery mode 2)
//! survive a restart, as in RabbitMQ.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use amq_protocol::types::FieldTable;
use byteorder::{ByteOrder, LittleEndian as LE};
use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;

use super::args::{Overflow, QueueArgs};
use super::message::Message;
use super::ranges::RangeSet;
use crate::broker::budget::MemoryBudget;
use crate::broker::journal::Journal;
use crate::storage::io::Vfs;
use crate::storage::{self, Log, LogConfig};

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
    /// One past the highest offset handed out, and how far the journal has recorded that.
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

#[derive(Debug)]
pub struct DeadLetter {
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
    log: Log,
    journal: Option<Journal>,
    state: Mutex<QueueState>,
    /// Woken when deliveries may be possible (new messages, credit, consumers).
    dispatch_wanted: Arc<Notify>,
    /// A dispatcher task is running for this queue.
    pub dispatcher_running: AtomicBool,
    /// A background fsync of the acknowledgement journal is scheduled.
    pub ack_sync_scheduled: AtomicBool,
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
pub struct QueueOptions {
    pub name: String,
    pub id: u64,
    pub durable: bool,
    pub auto_delete: bool,
    pub exclusive_owner: Option<u64>,
    pub arguments: FieldTable,
}

const OP_ACKED: u8 = 1;
const OP_SNAPSHOT: u8 = 2;
const OP_DELIVERED: u8 = 3;

/// What the acknowledgement journal records.
#[derive(Default)]
struct AckRecord {
    acked: RangeSet,
    floor: u64,
    /// Every offset below this may have been delivered (for the redelivered flag after a
    /// restart).
    delivered_high: u64,
}

impl Queue {
    /// Open (or create) the queue's log in `dir` and recover its acknowledgement state.
    pub fn open(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        log_config: LogConfig,
        options: QueueOptions,
    ) -> storage::Result<Queue> {
        let log = Log::open_with(Arc::clone(&vfs), dir.join("messages"), log_config)?;
        let args = QueueArgs::parse(&options.name, &options.arguments).unwrap_or_default();
        let mut record = AckRecord::default();
        // A stream's messages are never removed by acknowledgements: no journal.
        let journal = if options.durable && !args.stream {
            let (journal, ops) = Journal::open(vfs, &dir.join("acks"))?;
            for op in ops {
                apply_op(&op, &mut record);
            }
            Some(journal)
        } else {
            None
        };
        let AckRecord {
            mut acked,
            floor: mut ack_floor,
            delivered_high,
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
            journal,
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
                ready_bytes,
                delivered_high: 0,
                delivered_journaled: 0,
            }),
            dispatch_wanted: Arc::new(Notify::new()),
            dispatcher_running: AtomicBool::new(false),
            ack_sync_scheduled: AtomicBool::new(false),
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
        Ok(queue)
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Append a message without waiting for durability; returns the offset to wait for, or
    /// `None` if a full queue with `x-overflow` `reject-publish` refused it. A full queue with
    /// `drop-head` (the default) drops its oldest ready messages to make room (dead-lettered
    /// if configured).
    pub fn publish(&self, message: &Message) -> storage::Result<Option<u64>> {
        let limited = self.args.max_length.is_some() || self.args.max_length_bytes.is_some();
        if self.args.stream || !limited {
            // (A stream's x-max-length-bytes is retention, applied by the log.)
            return self.append(message).map(Some);
        }
        let mut state = self.lock();
        let size = message.body.len() as u64;
        loop {
            let count = self.backlog_count(&state);
            let full = self.args.max_length.is_some_and(|max| count + 1 > max)
                || self
                    .args
                    .max_length_bytes
                    .is_some_and(|max| state.ready_bytes + size > max);
            if !full {
                break;
            }
            match self.args.overflow {
                Overflow::DropHead => {
                    if !self.drop_head(&mut state)? {
                        break;
                    }
                }
                Overflow::RejectPublish => return Ok(None),
                Overflow::RejectPublishDlx => {
                    self.dead_letter(&mut state, message.clone(), DeadReason::Maxlen);
                    return Ok(None);
                }
            }
        }
        let offset = self.append(message)?;
        state.ready_bytes += size;
        Ok(Some(offset))
    }

    fn append(&self, message: &Message) -> storage::Result<u64> {
        let record = message.to_record();
        Ok(self
            .log
            .append_without_waiting(std::slice::from_ref(&record))?
            .next_offset)
    }

    /// Ready messages counting those appended but not yet durable (for length limits).
    fn backlog_count(&self, state: &QueueState) -> u64 {
        let end = self.log.next_offset();
        let tail = end.saturating_sub(state.next_ready);
        tail - state.acked.count_in(state.next_ready, end)
            + state.requeued.len() as u64
            + state.by_priority.len() as u64
    }

    /// Drop the oldest ready message (dead-lettered as `maxlen` if configured). Its content
    /// is needed only for dead-lettering or byte accounting; if it is not durable yet, this
    /// waits for the fsync that makes it readable. Returns false if nothing is ready.
    fn drop_head(&self, state: &mut QueueState) -> storage::Result<bool> {
        let next = state.requeued.first().copied().or_else(|| {
            skip_acked(state);
            (state.next_ready < self.log.next_offset()).then_some(state.next_ready)
        });
        let Some(offset) = next else {
            return Ok(false);
        };
        if offset >= self.log.visible_next_offset() {
            self.log.wait_until_durable(offset + 1)?;
        }
        let Some((taken, _, message)) = self.take_next(state)? else {
            return Ok(false);
        };
        debug_assert_eq!(taken, offset);
        self.acknowledge(state, taken);
        self.dead_letter(state, message, DeadReason::Maxlen);
        Ok(true)
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
        let dispatched = self.dispatch_classic(&mut state);
        self.journal_delivered(&mut state);
        dispatched
    }

    /// Record (lazily, like acknowledgements) how far messages have been handed out.
    fn journal_delivered(&self, state: &mut QueueState) {
        if state.delivered_high > state.delivered_journaled {
            state.delivered_journaled = state.delivered_high;
            let mut op = vec![OP_DELIVERED];
            op.extend_from_slice(&state.delivered_high.to_le_bytes());
            self.journal_op(op);
        }
    }

    fn dispatch_classic(self: &Arc<Self>, state: &mut QueueState) -> storage::Result<()> {
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
            };
            consumer.spec.backlog.add(bytes);
            if !no_ack {
                consumer.unacked += 1;
                consumer
                    .spec
                    .channel_limit
                    .unacked
                    .fetch_add(1, Ordering::Relaxed);
            }
            let id = consumer.spec.id;
            if consumer
                .spec
                .sink
                .send(QueueEvent::Deliver(delivery))
                .is_err()
            {
                // The connection is gone; it will remove the consumer. Put the message back.
                consumer.spec.backlog.remove(bytes);
                state.requeued.insert(offset);
                state.consumers.retain(|c| c.spec.id != id);
                continue;
            }
            if no_ack {
                self.acknowledge(state, offset);
            } else {
                state.unacked.insert(offset, (id, size));
                state.delivered_high = state.delivered_high.max(offset + 1);
            }
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
            self.dead_letter(state, message, DeadReason::Expired);
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

    /// Keep a dropped message for dead-lettering if the queue has a dead-letter exchange.
    fn dead_letter(&self, state: &mut QueueState, message: Message, reason: DeadReason) {
        if self.args.dead_letter_exchange.is_some() {
            state.dead_letters.push(DeadLetter { message, reason });
        }
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
                self.dead_letter(&mut state, message, DeadReason::Expired);
                continue;
            }
            // Not expired: put it back where it was.
            self.put_back(&mut state, offset, message, redelivered);
            break;
        }
        Ok(())
    }

    /// Messages dropped since the last call that should go to the dead-letter exchange.
    pub fn take_dead_letters(&self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.lock().dead_letters)
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

    /// `basic.get`: the next ready message, and how many remain after it.
    pub fn get(
        self: &Arc<Self>,
        no_ack: bool,
    ) -> storage::Result<Option<(u64, bool, Message, u64)>> {
        self.touch();
        let mut state = self.lock();
        let Some((offset, redelivered, message)) = self.take_ready(&mut state)? else {
            return Ok(None);
        };
        if no_ack {
            self.acknowledge(&mut state, offset);
        } else {
            state.unacked.insert(offset, (0, message.body.len() as u64));
            state.delivered_high = state.delivered_high.max(offset + 1);
            self.journal_delivered(&mut state);
        }
        let remaining = self.ready_count(&state);
        Ok(Some((offset, redelivered, message, remaining)))
    }

    /// Acknowledge a delivered message.
    /// `consumer_id` is the consumer it went to (0 for `basic.get`); only streams need it.
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

    /// Drop a delivered message without requeueing it (reject or nack): dead-lettered if the
    /// queue has a dead-letter exchange (see [`Queue::take_dead_letters`]).
    pub fn reject(&self, offset: u64, consumer_id: u64) -> storage::Result<()> {
        if self.args.stream {
            self.stream_credit(consumer_id);
            return Ok(());
        }
        let mut state = self.lock();
        if let Some((consumer_id, _)) = state.unacked.remove(&offset) {
            release_credit(&mut state, consumer_id);
            self.acknowledge(&mut state, offset);
            if self.args.dead_letter_exchange.is_some() {
                if let Some(message) = self.read_one(offset)? {
                    self.dead_letter(&mut state, message, DeadReason::Rejected);
                }
            }
        }
        drop(state);
        self.wake_dispatcher();
        Ok(())
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

    /// Remove every ready message (not the unacknowledged ones); returns how many.
    pub fn purge(&self) -> u64 {
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
            self.journal_op(encode_acked(start, end));
        }
        state.ahead.clear();
        state.next_ready = end;
        state.ready_bytes = 0;
        self.advance_floor(&mut state);
        count
    }

    fn acknowledge(&self, state: &mut QueueState, offset: u64) {
        state.acked.insert(offset);
        self.journal_op(encode_acked(offset, offset + 1));
        self.advance_floor(state);
    }

    /// Move the floor over acknowledged runs; drop log segments wholly below it and compact
    /// the journal now and then.
    fn advance_floor(&self, state: &mut QueueState) {
        let before = state.ack_floor;
        while let Some(end) = state.acked.run_from(state.ack_floor) {
            state.ack_floor = end;
        }
        if state.ack_floor == before {
            return;
        }
        state.acked.remove_below(state.ack_floor);
        if let Err(e) = self.log.truncate_before(state.ack_floor) {
            tracing::warn!(queue = %self.name, error = %e, "dropping acknowledged segments failed");
        }
        if let Some(journal) = &self.journal {
            if journal.wants_snapshot() {
                let snapshot = encode_snapshot(state.ack_floor, &state.acked, state.delivered_high);
                if let Err(e) = journal.snapshot(snapshot) {
                    tracing::warn!(queue = %self.name, error = %e, "ack journal snapshot failed");
                }
            }
        }
    }

    /// The acknowledgement journal's log and the offset that makes every acknowledgement so
    /// far durable, if some are not yet: callers ask for that fsync in the background, so
    /// acknowledgements reach disk soon without anyone waiting for them.
    pub fn ack_sync_target(&self) -> Option<(Log, u64)> {
        let log = self.journal.as_ref()?.log();
        let next = log.next_offset();
        (next > log.visible_next_offset()).then(|| (log.clone(), next))
    }

    fn journal_op(&self, op: Vec<u8>) {
        if let Some(journal) = &self.journal {
            // Lazily durable: losing it means a redelivery, never a loss.
            if let Err(e) = journal.append_without_waiting(op) {
                tracing::warn!(queue = %self.name, error = %e, "recording an ack failed");
            }
        }
    }

    /// Mark deleted, tell every consumer, close the logs. The caller removes the files.
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

    pub fn close(&self) {
        if let Err(e) = self.log.close() {
            tracing::warn!(queue = %self.name, error = %e, "closing queue log failed");
        }
        if let Some(journal) = &self.journal {
            let _ = journal.close();
        }
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

fn encode_acked(start: u64, end: u64) -> Vec<u8> {
    let mut op = vec![OP_ACKED; 17];
    LE::write_u64(&mut op[1..9], start);
    LE::write_u64(&mut op[9..17], end);
    op
}

fn encode_snapshot(floor: u64, acked: &RangeSet, delivered_high: u64) -> Vec<u8> {
    let mut op = vec![OP_SNAPSHOT];
    op.extend_from_slice(&floor.to_le_bytes());
    let ranges: Vec<(u64, u64)> = acked.iter().collect();
    op.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    for (s, e) in ranges {
        op.extend_from_slice(&s.to_le_bytes());
        op.extend_from_slice(&e.to_le_bytes());
    }
    op.extend_from_slice(&delivered_high.to_le_bytes());
    op
}

/// Apply one journal operation; anything malformed is ignored (it can only make a message be
/// delivered again).
fn apply_op(op: &Bytes, record: &mut AckRecord) {
    match op.first() {
        Some(&OP_ACKED) if op.len() == 17 => {
            record
                .acked
                .insert_range(LE::read_u64(&op[1..9]), LE::read_u64(&op[9..17]));
        }
        Some(&OP_DELIVERED) if op.len() == 9 => {
            record.delivered_high = record.delivered_high.max(LE::read_u64(&op[1..9]));
        }
        Some(&OP_SNAPSHOT) if op.len() >= 13 => {
            let count = LE::read_u32(&op[9..13]) as usize;
            let ranges_end = 13 + count * 16;
            // Snapshots may end with the delivered mark (8 bytes).
            if op.len() != ranges_end && op.len() != ranges_end + 8 {
                return;
            }
            record.floor = LE::read_u64(&op[1..9]);
            record.acked = RangeSet::default();
            for i in 0..count {
                let at = 13 + i * 16;
                record
                    .acked
                    .insert_range(LE::read_u64(&op[at..]), LE::read_u64(&op[at + 8..]));
            }
            if op.len() == ranges_end + 8 {
                let high = LE::read_u64(&op[ranges_end..]);
                record.delivered_high = record.delivered_high.max(high);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    use crate::storage::io::OsVfs;
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

    fn open(dir: &Path, segment_bytes_max: u64) -> Arc<Queue> {
        let options = QueueOptions {
            name: "q".into(),
            id: 1,
            durable: true,
            auto_delete: false,
            exclusive_owner: None,
            arguments: FieldTable::default(),
        };
        let config = LogConfig {
            segment_bytes_max,
            ..LogConfig::default()
        };
        Arc::new(Queue::open(Arc::new(OsVfs), dir, config, options).unwrap())
    }

    fn publish_durably(queue: &Queue, message: &Message) {
        let offset = queue.publish(message).unwrap().unwrap();
        queue.log().wait_until_durable(offset).unwrap();
    }

    #[test]
    fn acks_survive_a_restart_and_transient_messages_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(dir.path(), 1 << 20);
        for i in 0..5 {
            publish_durably(&queue, &message(&format!("m{i}"), i != 3));
        }
        assert_eq!(queue.message_count(), 5);
        let (first, _, m, remaining) = queue.get(false).unwrap().unwrap();
        assert_eq!((&m.body[..], remaining), (&b"m0"[..], 4));
        let (second, ..) = queue.get(true).unwrap().unwrap();
        queue.ack(first, 0);
        assert_eq!(second, 1);
        queue.close();
        drop(queue);
        let queue = open(dir.path(), 1 << 20);
        // m0 acked, m1 auto-acked, m3 transient: m2 and m4 remain.
        assert_eq!(queue.message_count(), 2);
        let bodies: Vec<_> =
            std::iter::from_fn(|| queue.get(true).unwrap().map(|g| g.2.body)).collect();
        assert_eq!(
            bodies,
            [Bytes::from_static(b"m2"), Bytes::from_static(b"m4")]
        );
    }

    #[test]
    fn acknowledged_segments_are_deleted_so_disk_follows_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(dir.path(), 4096);
        let body = "x".repeat(500);
        for _ in 0..100 {
            publish_durably(&queue, &message(&body, true));
        }
        let full = queue.log_bytes();
        assert!(queue.log().segment_count() > 5);
        let mut offsets = Vec::new();
        while let Some((offset, ..)) = queue.get(false).unwrap() {
            offsets.push(offset);
        }
        // Requeue one in the middle: nothing at or after it can be dropped yet.
        for &offset in &offsets[..90] {
            queue.ack(offset, 0);
        }
        assert!(
            queue.log_bytes() < full / 5,
            "{} of {full}",
            queue.log_bytes()
        );
        queue.requeue(offsets[95], 0);
        let (again, redelivered, ..) = queue.get(false).unwrap().unwrap();
        assert_eq!((again, redelivered), (offsets[95], true));
    }
}
