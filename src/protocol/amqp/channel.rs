//! One AMQP channel: its methods carried out on the broker's AMQP model, content assembly for
//! publishes, delivery tags, prefetch, publisher confirms and transactions.
//!
//! Durability: every broker operation returns a commit. Under confirm mode the channel's waiter
//! task acks a round's publishes once the round's latest commit is durable (group commit shared
//! with everything else); in a transaction `tx.commit-ok` waits the same way. Replies that
//! report a change (`declare-ok`, `bind-ok`, `purge-ok`, `delete-ok`, `get-ok` of an
//! automatically acknowledged message) wait for theirs through [`Ctx::pending`]: the
//! connection writes a round's output once it is durable. The broker makes commits durable
//! (and the messages visible) whether or not anyone waits.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::protocol::{basic, channel, confirm, exchange, queue, tx, AMQPClass};
use amq_protocol::types::ShortString;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc::{self, UnboundedSender};

use super::frame::{put_content, put_method};
use super::AmqpShared;
use crate::broker::amqp::{
    code, AmqpError, Backlog, ChannelLimit, ConsumerSpec, Destination, ExchangeDeclare, Message,
    Queue, QueueDeclare, QueueEvent,
};
use crate::broker::Commit;

/// Largest message body accepted (RabbitMQ's default `max_message_size`).
pub const MESSAGE_BYTES_MAX: u64 = 128 * 1024 * 1024;

/// What the connection lends a channel while it handles a method.
pub struct Ctx<'a> {
    pub shared: &'a Arc<AmqpShared>,
    pub connection_id: u64,
    pub out: &'a mut Vec<u8>,
    pub frame_max: u32,
    /// Where the connection's consumers receive deliveries.
    pub events: &'a UnboundedSender<QueueEvent>,
    /// consumer id → channel, for routing deliveries.
    pub consumer_channels: &'a mut HashMap<u64, u16>,
    /// Where channel waiter tasks report confirms and commits.
    pub done: &'a UnboundedSender<WaitDone>,
    /// The latest commit the output written so far depends on: the connection writes it
    /// once that is durable.
    pub pending: &'a mut Commit,
    /// The connection's deliveries not yet handed to a channel (all its consumers share it).
    pub backlog: &'a Arc<Backlog>,
}

impl Ctx<'_> {
    /// The output written from now on reports `commit`'s change.
    fn depends_on(&mut self, commit: Commit) {
        *self.pending = (*self.pending).max(commit);
    }
}

/// A publish waiting for its content.
struct PendingPublish {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    header: Option<(u64, AMQPProperties, Bytes)>,
    body: BytesMut,
}

struct Unacked {
    queue: Arc<Queue>,
    offset: u64,
    /// The consumer it went to (0 for `basic.get`): streams give credit back to it.
    consumer_id: u64,
    /// Counts toward the channel's global prefetch.
    counted: bool,
}

struct ConsumerEntry {
    queue: Arc<Queue>,
    id: u64,
}

/// Work for the channel's waiter task, processed in order.
pub enum WaitItem {
    /// Confirm publishes `first..=seq` once `waits` are durable: nack those in `nacked`
    /// (refused by a full queue), ack the rest.
    Confirm {
        first: u64,
        seq: u64,
        nacked: Vec<u64>,
        commit: Commit,
    },
    /// Answer `tx.commit-ok` once `commit` is durable.
    Commit { commit: Commit },
}

/// What a waiter task reports back to the connection.
#[derive(Debug)]
pub enum WaitDone {
    Confirmed {
        channel: u16,
        first: u64,
        seq: u64,
        ok: bool,
        nacked: Vec<u64>,
    },
    Committed {
        channel: u16,
        ok: bool,
    },
}

#[derive(Default)]
struct Transaction {
    publishes: Vec<(Vec<Arc<Queue>>, Message)>,
    /// (tag, multiple, requeue or ack): replayed at commit.
    settlements: Vec<Settlement>,
}

#[derive(Clone, Copy)]
enum Settlement {
    Ack {
        tag: u64,
        multiple: bool,
    },
    Reject {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

pub struct Channel {
    pub id: u16,
    /// Set after the server sent `channel.close`: everything but close/close-ok is dropped.
    pub closing: bool,
    pending: Option<PendingPublish>,
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    consumers: HashMap<String, ConsumerEntry>,
    /// Prefetch for consumers created from now on (`basic.qos`, global = false).
    consumer_prefetch: u32,
    limit: Arc<ChannelLimit>,
    last_queue: Option<String>,
    confirm: bool,
    next_publish_seq: u64,
    tx: Option<Transaction>,
    /// The latest commit of this round's publishes.
    round_commit: Commit,
    /// Queues acknowledged this round: each commits its acknowledgements once at its end.
    round_acked: Vec<Arc<Queue>>,
    /// Confirm sequence numbers published this round: first, last, and those to nack.
    round_first_seq: Option<u64>,
    round_seq: Option<u64>,
    round_nacked: Vec<u64>,
    waiter: Option<mpsc::UnboundedSender<WaitItem>>,
}

fn ok(out: &mut Vec<u8>, channel: u16, method: AMQPClass) {
    put_method(out, channel, method);
}

/// Reply with `method` unless the request asked for no reply (`nowait`).
fn reply_unless(nowait: bool, out: &mut Vec<u8>, channel: u16, method: AMQPClass) {
    if !nowait {
        put_method(out, channel, method);
    }
}

fn precondition(text: String) -> AmqpError {
    AmqpError::new(code::PRECONDITION_FAILED, text)
}

impl Channel {
    pub fn new(id: u16) -> Channel {
        Channel {
            id,
            closing: false,
            pending: None,
            next_tag: 1,
            unacked: BTreeMap::new(),
            consumers: HashMap::new(),
            consumer_prefetch: 0,
            limit: Arc::new(ChannelLimit::default()),
            last_queue: None,
            confirm: false,
            next_publish_seq: 1,
            tx: None,
            round_commit: Commit::NONE,
            round_acked: Vec::new(),
            round_first_seq: None,
            round_seq: None,
            round_nacked: Vec::new(),
            waiter: None,
        }
    }

    pub fn awaiting_content(&self) -> bool {
        self.pending.is_some()
    }

    /// Carry out one method.
    pub fn handle(&mut self, method: AMQPClass, ctx: &mut Ctx<'_>) -> Result<(), AmqpError> {
        if self.pending.is_some() {
            return Err(AmqpError::new(
                code::UNEXPECTED_FRAME,
                "expected content header for class 60, got non content header frame instead",
            ));
        }
        let id = self.id;
        match method {
            AMQPClass::Channel(channel::AMQPMethod::Flow(flow)) => {
                if !flow.active {
                    return Err(AmqpError::new(code::NOT_IMPLEMENTED, "active=false"));
                }
                ok(
                    ctx.out,
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: true,
                    })),
                );
            }
            AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                return Err(AmqpError::new(
                    code::CHANNEL_ERROR,
                    "second 'channel.open' seen",
                ));
            }
            AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::Request(_)) => {
                ok(
                    ctx.out,
                    id,
                    AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::RequestOk(
                        amq_protocol::protocol::access::RequestOk {},
                    )),
                );
            }
            AMQPClass::Exchange(m) => self.exchange_method(m, ctx)?,
            AMQPClass::Queue(m) => self.queue_method(m, ctx)?,
            AMQPClass::Basic(m) => self.basic_method(m, ctx)?,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(select)) => {
                if self.tx.is_some() {
                    return Err(precondition("cannot switch from tx to confirm mode".into()));
                }
                self.confirm = true;
                self.ensure_waiter(ctx);
                reply_unless(
                    select.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                );
            }
            AMQPClass::Tx(m) => self.tx_method(m, ctx)?,
            other => {
                return Err(AmqpError::new(
                    code::COMMAND_INVALID,
                    format!(
                        "method {}.{} is not valid from a client on a channel",
                        other.get_amqp_class_id(),
                        other.get_amqp_method_id()
                    ),
                ))
            }
        }
        Ok(())
    }

    fn exchange_method(
        &mut self,
        m: exchange::AMQPMethod,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), AmqpError> {
        let vhost = ctx.shared.broker.vhost();
        let id = self.id;
        match m {
            exchange::AMQPMethod::Declare(d) => {
                let commit = vhost.declare_exchange(ExchangeDeclare {
                    name: d.exchange.to_string(),
                    kind: d.kind.to_string(),
                    passive: d.passive,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments,
                })?;
                ctx.depends_on(commit);
                reply_unless(
                    d.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
                );
            }
            exchange::AMQPMethod::Delete(d) => {
                let commit = vhost.delete_exchange(d.exchange.as_str(), d.if_unused)?;
                ctx.depends_on(commit);
                reply_unless(
                    d.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                );
            }
            exchange::AMQPMethod::Bind(b) => {
                let commit = vhost.bind(
                    b.source.as_str(),
                    Destination::Exchange(b.destination.to_string()),
                    b.routing_key.as_str(),
                    b.arguments,
                )?;
                ctx.depends_on(commit);
                reply_unless(
                    b.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                );
            }
            exchange::AMQPMethod::Unbind(b) => {
                let commit = vhost.unbind(
                    b.source.as_str(),
                    Destination::Exchange(b.destination.to_string()),
                    b.routing_key.as_str(),
                    b.arguments,
                )?;
                ctx.depends_on(commit);
                reply_unless(
                    b.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                );
            }
            other => return Err(server_method(AMQPClass::Exchange(other))),
        }
        Ok(())
    }

    /// An empty queue name means the channel's last declared queue, as in RabbitMQ.
    fn queue_name(&self, name: &ShortString) -> Result<String, AmqpError> {
        if !name.as_str().is_empty() {
            return Ok(name.to_string());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::new(code::NOT_FOUND, "no previously declared queue"))
    }

    fn queue_method(&mut self, m: queue::AMQPMethod, ctx: &mut Ctx<'_>) -> Result<(), AmqpError> {
        let vhost = ctx.shared.broker.vhost();
        let id = self.id;
        match m {
            queue::AMQPMethod::Declare(d) => {
                let (declared, commit) = vhost.declare_queue(
                    QueueDeclare {
                        name: d.queue.to_string(),
                        passive: d.passive,
                        durable: d.durable,
                        exclusive: d.exclusive,
                        auto_delete: d.auto_delete,
                        arguments: d.arguments,
                    },
                    ctx.connection_id,
                )?;
                ctx.depends_on(commit);
                self.last_queue = Some(declared.name.clone());
                reply_unless(
                    d.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: declared.name.into(),
                        message_count: declared.message_count,
                        consumer_count: declared.consumer_count,
                    })),
                );
            }
            queue::AMQPMethod::Bind(b) => {
                let name = self.queue_name(&b.queue)?;
                vhost.queue_for(&name, ctx.connection_id)?;
                let key = if b.queue.as_str().is_empty() && b.routing_key.as_str().is_empty() {
                    name.clone()
                } else {
                    b.routing_key.to_string()
                };
                let commit = vhost.bind(
                    b.exchange.as_str(),
                    Destination::Queue(name),
                    &key,
                    b.arguments,
                )?;
                ctx.depends_on(commit);
                reply_unless(
                    b.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                );
            }
            queue::AMQPMethod::Unbind(b) => {
                let name = self.queue_name(&b.queue)?;
                vhost.queue_for(&name, ctx.connection_id)?;
                let commit = vhost.unbind(
                    b.exchange.as_str(),
                    Destination::Queue(name),
                    b.routing_key.as_str(),
                    b.arguments,
                )?;
                ctx.depends_on(commit);
                ok(
                    ctx.out,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                );
            }
            queue::AMQPMethod::Purge(p) => {
                let name = self.queue_name(&p.queue)?;
                if vhost.queue_for(&name, ctx.connection_id)?.is_stream() {
                    return Err(not_for_streams("queue.purge", &name));
                }
                let (count, commit) = vhost.purge_queue(&name, ctx.connection_id)?;
                ctx.depends_on(commit);
                reply_unless(
                    p.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                        message_count: count,
                    })),
                );
            }
            queue::AMQPMethod::Delete(d) => {
                let name = self.queue_name(&d.queue)?;
                let (count, commit) =
                    vhost.delete_queue(&name, ctx.connection_id, d.if_unused, d.if_empty)?;
                ctx.depends_on(commit);
                reply_unless(
                    d.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                        message_count: count,
                    })),
                );
            }
            other => return Err(server_method(AMQPClass::Queue(other))),
        }
        Ok(())
    }

    fn basic_method(&mut self, m: basic::AMQPMethod, ctx: &mut Ctx<'_>) -> Result<(), AmqpError> {
        let id = self.id;
        match m {
            basic::AMQPMethod::Qos(q) => {
                if q.global {
                    self.limit
                        .prefetch
                        .store(u32::from(q.prefetch_count), Ordering::Relaxed);
                } else {
                    self.consumer_prefetch = u32::from(q.prefetch_count);
                }
                ok(
                    ctx.out,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
                // More room may mean more deliveries.
                for c in self.consumers.values() {
                    c.queue.wake_dispatcher();
                }
            }
            basic::AMQPMethod::Consume(c) => self.consume(c, ctx)?,
            basic::AMQPMethod::Cancel(c) => {
                let tag = c.consumer_tag.to_string();
                self.cancel_consumer(&tag, ctx);
                reply_unless(
                    c.nowait,
                    ctx.out,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: tag.into(),
                    })),
                );
            }
            basic::AMQPMethod::Publish(p) => {
                self.pending = Some(PendingPublish {
                    exchange: p.exchange.to_string(),
                    routing_key: p.routing_key.to_string(),
                    mandatory: p.mandatory,
                    header: None,
                    body: BytesMut::new(),
                });
            }
            basic::AMQPMethod::Get(g) => self.get(g, ctx)?,
            basic::AMQPMethod::Ack(a) => {
                let settlement = Settlement::Ack {
                    tag: a.delivery_tag,
                    multiple: a.multiple,
                };
                self.settle_or_defer(settlement, ctx.shared)?;
            }
            basic::AMQPMethod::Nack(n) => {
                let settlement = Settlement::Reject {
                    tag: n.delivery_tag,
                    multiple: n.multiple,
                    requeue: n.requeue,
                };
                self.settle_or_defer(settlement, ctx.shared)?;
            }
            basic::AMQPMethod::Reject(r) => {
                let settlement = Settlement::Reject {
                    tag: r.delivery_tag,
                    multiple: false,
                    requeue: r.requeue,
                };
                self.settle_or_defer(settlement, ctx.shared)?;
            }
            basic::AMQPMethod::Recover(r) => {
                self.recover(r.requeue)?;
                ok(
                    ctx.out,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
            }
            basic::AMQPMethod::RecoverAsync(r) => self.recover(r.requeue)?,
            other => return Err(server_method(AMQPClass::Basic(other))),
        }
        Ok(())
    }

    fn consume(&mut self, c: basic::Consume, ctx: &mut Ctx<'_>) -> Result<(), AmqpError> {
        let name = self.queue_name(&c.queue)?;
        let queue = ctx
            .shared
            .broker
            .vhost()
            .queue_for(&name, ctx.connection_id)?;
        let tag = if c.consumer_tag.as_str().is_empty() {
            crate::broker::amqp::generated_name("amq.ctag-")
        } else {
            c.consumer_tag.to_string()
        };
        if self.consumers.contains_key(&tag) {
            return Err(AmqpError::new(
                code::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let mut stream_offset = 0;
        if queue.is_stream() {
            let prefetch = self
                .consumer_prefetch
                .max(self.limit.prefetch.load(Ordering::Relaxed));
            if prefetch == 0 {
                return Err(precondition(format!(
                    "consumer prefetch count is not set for 'queue '{name}' in vhost '/''"
                )));
            }
            if c.no_ack {
                return Err(AmqpError::new(
                    code::NOT_IMPLEMENTED,
                    format!("automatic acknowledgement not supported by stream queues queue '{name}' in vhost '/'"),
                ));
            }
            stream_offset = queue
                .resolve_stream_offset(c.arguments.inner().get("x-stream-offset"))
                .map_err(precondition)?;
        }
        let consumer_id = ctx.shared.next_consumer_id.fetch_add(1, Ordering::Relaxed);
        // The reply goes out before any delivery: deliveries reach the connection as events,
        // handled after this method's output is queued.
        reply_unless(
            c.nowait,
            ctx.out,
            self.id,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: tag.clone().into(),
            })),
        );
        queue
            .add_consumer(ConsumerSpec {
                id: consumer_id,
                tag: tag.clone(),
                no_ack: c.no_ack,
                exclusive: c.exclusive,
                prefetch: self.consumer_prefetch,
                channel_limit: Arc::clone(&self.limit),
                backlog: Arc::clone(ctx.backlog),
                sink: ctx.events.clone(),
                stream_offset,
                priority: consumer_priority(&c.arguments),
            })
            .map_err(|_| {
                AmqpError::new(
                    code::ACCESS_REFUSED,
                    format!("queue '{name}' in vhost '/' in exclusive use"),
                )
            })?;
        ctx.consumer_channels.insert(consumer_id, self.id);
        ctx.shared.broker.vhost().ensure_dispatcher(&queue);
        self.consumers.insert(
            tag,
            ConsumerEntry {
                queue,
                id: consumer_id,
            },
        );
        Ok(())
    }

    /// Remove a consumer (client cancel, channel close); an auto-delete queue may go with it.
    fn cancel_consumer(&mut self, tag: &str, ctx: &mut Ctx<'_>) {
        if let Some(entry) = self.consumers.remove(tag) {
            ctx.consumer_channels.remove(&entry.id);
            if entry.queue.remove_consumer(entry.id) {
                ctx.shared.broker.vhost().auto_delete_queue(&entry.queue);
            }
        }
    }

    fn get(&mut self, g: basic::Get, ctx: &mut Ctx<'_>) -> Result<(), AmqpError> {
        let name = self.queue_name(&g.queue)?;
        let queue = ctx
            .shared
            .broker
            .vhost()
            .queue_for(&name, ctx.connection_id)?;
        if queue.is_stream() {
            return Err(not_for_streams("basic.get", &name));
        }
        let (got, commit) = queue
            .get(g.no_ack)
            .map_err(|e| AmqpError::new(code::INTERNAL_ERROR, e.to_string()))?;
        ctx.depends_on(commit);
        route_dead_letters(ctx.shared, &queue);
        let Some((offset, redelivered, message, remaining)) = got else {
            ok(
                ctx.out,
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            );
            return Ok(());
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        if !g.no_ack {
            self.unacked.insert(
                tag,
                Unacked {
                    queue: Arc::clone(&queue),
                    offset,
                    consumer_id: 0,
                    counted: false,
                },
            );
        }
        ok(
            ctx.out,
            self.id,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: tag,
                redelivered,
                exchange: String::from_utf8_lossy(&message.exchange)
                    .into_owned()
                    .into(),
                routing_key: String::from_utf8_lossy(&message.routing_key)
                    .into_owned()
                    .into(),
                message_count: remaining.min(u32::MAX as u64) as u32,
            })),
        );
        put_content(
            ctx.out,
            self.id,
            &message.raw_properties,
            &message.body,
            ctx.frame_max,
        );
        Ok(())
    }

    /// Write a delivery from a queue (the connection took it off its backlog).
    pub fn deliver(&mut self, delivery: crate::broker::amqp::Delivery, ctx: &mut Ctx<'_>) {
        let consumer = self
            .consumers
            .values()
            .find(|c| c.id == delivery.consumer_id);
        if self.closing || consumer.is_none() {
            // Cancelled meanwhile: the message goes back (unless it was already acked).
            if !delivery.no_ack {
                self.limit.unacked.fetch_sub(1, Ordering::Relaxed);
                delivery
                    .queue
                    .requeue(delivery.offset, delivery.consumer_id);
            }
            return;
        }
        ctx.depends_on(delivery.commit);
        let tag = self.next_tag;
        self.next_tag += 1;
        let message = &delivery.message;
        ok(
            ctx.out,
            self.id,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: delivery.consumer_tag.clone().into(),
                delivery_tag: tag,
                redelivered: delivery.redelivered,
                exchange: String::from_utf8_lossy(&message.exchange)
                    .into_owned()
                    .into(),
                routing_key: String::from_utf8_lossy(&message.routing_key)
                    .into_owned()
                    .into(),
            })),
        );
        put_content(
            ctx.out,
            self.id,
            &message.raw_properties,
            &message.body,
            ctx.frame_max,
        );
        if !delivery.no_ack {
            self.unacked.insert(
                tag,
                Unacked {
                    queue: Arc::clone(&delivery.queue),
                    offset: delivery.offset,
                    consumer_id: delivery.consumer_id,
                    counted: true,
                },
            );
        }
    }

    /// The queue deleted a consumer: tell the client (consumer_cancel_notify).
    pub fn consumer_cancelled(&mut self, tag: &str, ctx: &mut Ctx<'_>) {
        if let Some(entry) = self.consumers.remove(tag) {
            ctx.consumer_channels.remove(&entry.id);
            if !self.closing {
                ok(
                    ctx.out,
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                        consumer_tag: tag.into(),
                        nowait: true,
                    })),
                );
            }
        }
    }

    fn settle_or_defer(
        &mut self,
        settlement: Settlement,
        shared: &AmqpShared,
    ) -> Result<(), AmqpError> {
        let (tag, multiple) = match settlement {
            Settlement::Ack { tag, multiple } | Settlement::Reject { tag, multiple, .. } => {
                (tag, multiple)
            }
        };
        // Unknown tags fail at once, in a transaction too. `multiple` with tag 0 means all.
        let known = if multiple {
            tag == 0 || self.unacked.range(..=tag).next().is_some()
        } else {
            self.unacked.contains_key(&tag)
        };
        if !known {
            return Err(precondition(format!("unknown delivery tag {tag}")));
        }
        match &mut self.tx {
            Some(tx) => tx.settlements.push(settlement),
            None => {
                // No reply reports it: a lost acknowledgement only means a redelivery.
                self.settle(settlement, shared)?;
            }
        }
        Ok(())
    }

    /// Carry out a settlement; returns the commit of the changes it made.
    fn settle(&mut self, settlement: Settlement, shared: &AmqpShared) -> Result<Commit, AmqpError> {
        let (tag, multiple, action) = match settlement {
            Settlement::Ack { tag, multiple } => (tag, multiple, None),
            Settlement::Reject {
                tag,
                multiple,
                requeue,
            } => (tag, multiple, Some(requeue)),
        };
        let tags: Vec<u64> = if multiple {
            let upto = if tag == 0 { u64::MAX } else { tag };
            self.unacked.range(..=upto).map(|(t, _)| *t).collect()
        } else if self.unacked.contains_key(&tag) {
            vec![tag]
        } else {
            return Err(precondition(format!("unknown delivery tag {tag}")));
        };
        let internal =
            |e: crate::broker::StorageError| AmqpError::new(code::INTERNAL_ERROR, e.to_string());
        let mut commit = Commit::NONE;
        for t in tags {
            let Some(u) = self.unacked.remove(&t) else {
                continue;
            };
            if u.counted {
                self.limit.unacked.fetch_sub(1, Ordering::Relaxed);
            }
            let done = match action {
                Some(true) => {
                    u.queue.requeue(u.offset, u.consumer_id);
                    Commit::NONE
                }
                Some(false) => {
                    let rejected = u.queue.reject(u.offset, u.consumer_id).map_err(internal)?;
                    rejected.max(route_dead_letters(shared, &u.queue))
                }
                None => {
                    u.queue.ack(u.offset, u.consumer_id);
                    if !self.round_acked.iter().any(|q| Arc::ptr_eq(q, &u.queue)) {
                        self.round_acked.push(Arc::clone(&u.queue));
                    }
                    Commit::NONE
                }
            };
            commit = commit.max(done);
        }
        Ok(commit)
    }

    fn recover(&mut self, requeue: bool) -> Result<(), AmqpError> {
        if !requeue {
            return Err(AmqpError::new(code::NOT_IMPLEMENTED, "requeue=false"));
        }
        self.requeue_all();
        Ok(())
    }

    fn requeue_all(&mut self) {
        for (_, u) in std::mem::take(&mut self.unacked) {
            if u.counted {
                self.limit.unacked.fetch_sub(1, Ordering::Relaxed);
            }
            u.queue.requeue(u.offset, u.consumer_id);
        }
    }

    fn tx_method(&mut self, m: tx::AMQPMethod, ctx: &mut Ctx<'_>) -> Result<(), AmqpError> {
        let id = self.id;
        match m {
            tx::AMQPMethod::Select(_) => {
                if self.confirm {
                    return Err(precondition("cannot switch from confirm to tx mode".into()));
                }
                if self.tx.is_none() {
                    self.tx = Some(Transaction::default());
                }
                self.ensure_waiter(ctx);
                ok(
                    ctx.out,
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                );
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(tx) = self.tx.replace(Transaction::default()) else {
                    return Err(precondition("channel is not transactional".into()));
                };
                let mut commit = Commit::NONE;
                for (queues, message) in tx.publishes {
                    for queue in queues {
                        let published = queue
                            .publish(&message)
                            .map_err(|e| AmqpError::new(code::INTERNAL_ERROR, e.to_string()))?;
                        commit = commit.max(published.unwrap_or_default());
                        commit = commit.max(route_dead_letters(ctx.shared, &queue));
                    }
                }
                for s in tx.settlements {
                    commit = commit.max(self.settle(s, ctx.shared)?);
                }
                commit = commit.max(self.flush_acks());
                if let Some(waiter) = &self.waiter {
                    let _ = waiter.send(WaitItem::Commit { commit });
                }
            }
            tx::AMQPMethod::Rollback(_) => {
                if self.tx.is_none() {
                    return Err(precondition("channel is not transactional".into()));
                }
                self.tx = Some(Transaction::default());
                ok(
                    ctx.out,
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
            }
            other => return Err(server_method(AMQPClass::Tx(other))),
        }
        Ok(())
    }

    /// Start the task that answers confirms and commits once their writes are durable.
    fn ensure_waiter(&mut self, ctx: &mut Ctx<'_>) {
        if self.waiter.is_some() {
            return;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<WaitItem>();
        let done = ctx.done.clone();
        let channel = self.id;
        let broker = Arc::clone(&ctx.shared.broker);
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                let (WaitItem::Confirm { commit, .. } | WaitItem::Commit { commit }) = &item;
                let ok = broker.wait_async(*commit).await.is_ok();
                let report = match item {
                    WaitItem::Confirm {
                        first, seq, nacked, ..
                    } => WaitDone::Confirmed {
                        channel,
                        first,
                        seq,
                        ok,
                        nacked,
                    },
                    WaitItem::Commit { .. } => WaitDone::Committed { channel, ok },
                };
                if done.send(report).is_err() {
                    return;
                }
            }
        });
        self.waiter = Some(tx);
    }

    /// A content header frame for this channel.
    pub fn content_header(
        &mut self,
        class_id: u16,
        body_size: u64,
        properties: AMQPProperties,
        raw_properties: Bytes,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), AmqpError> {
        let Some(pending) = self.pending.as_mut().filter(|p| p.header.is_none()) else {
            return Err(AmqpError::new(
                code::UNEXPECTED_FRAME,
                "unexpected content header",
            ));
        };
        if class_id != 60 {
            return Err(AmqpError::new(
                code::FRAME_ERROR,
                format!("content header for class {class_id}"),
            ));
        }
        if body_size > MESSAGE_BYTES_MAX {
            self.pending = None;
            return Err(precondition(format!(
                "message size {body_size} is larger than configured max size {MESSAGE_BYTES_MAX}"
            )));
        }
        pending.header = Some((body_size, properties, raw_properties));
        if body_size == 0 {
            self.finish_publish(ctx)?;
        }
        Ok(())
    }

    /// A content body frame for this channel.
    pub fn content_body(&mut self, body: Bytes, ctx: &mut Ctx<'_>) -> Result<(), AmqpError> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(AmqpError::new(
                code::UNEXPECTED_FRAME,
                "unexpected content body",
            ));
        };
        let Some((size, _, _)) = &pending.header else {
            return Err(AmqpError::new(
                code::UNEXPECTED_FRAME,
                "content body before its header",
            ));
        };
        if pending.body.len() as u64 + body.len() as u64 > *size {
            return Err(AmqpError::new(
                code::FRAME_ERROR,
                "content body longer than declared",
            ));
        }
        pending.body.extend_from_slice(&body);
        if pending.body.len() as u64 == *size {
            self.finish_publish(ctx)?;
        }
        Ok(())
    }

    /// A publish's content is complete: route it, return it if mandatory and unroutable, and
    /// append it to every queue it reaches.
    fn finish_publish(&mut self, ctx: &mut Ctx<'_>) -> Result<(), AmqpError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let Some((_, properties, raw_properties)) = pending.header else {
            return Ok(());
        };
        let vhost = ctx.shared.broker.vhost();
        let queues = vhost.route(
            &pending.exchange,
            &pending.routing_key,
            properties.headers().as_ref(),
        )?;
        let message = Message {
            exchange: Bytes::from(pending.exchange.clone().into_bytes()),
            routing_key: Bytes::from(pending.routing_key.clone().into_bytes()),
            raw_properties,
            properties,
            body: pending.body.freeze(),
            enqueued_ms: crate::broker::now_ms(),
        };
        if queues.is_empty() && pending.mandatory {
            ok(
                ctx.out,
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code: code::NO_ROUTE,
                    reply_text: "NO_ROUTE".into(),
                    exchange: pending.exchange.into(),
                    routing_key: pending.routing_key.into(),
                })),
            );
            put_content(
                ctx.out,
                self.id,
                &message.raw_properties,
                &message.body,
                ctx.frame_max,
            );
        }
        if let Some(tx) = &mut self.tx {
            tx.publishes.push((queues, message));
            return Ok(());
        }
        let mut refused = false;
        for queue in &queues {
            let published = queue
                .publish(&message)
                .map_err(|e| AmqpError::new(code::INTERNAL_ERROR, e.to_string()))?;
            match published {
                Some(commit) => self.round_commit = self.round_commit.max(commit),
                // A full queue with reject-publish: the publisher gets a nack.
                None => refused = true,
            }
            let routed = route_dead_letters(ctx.shared, queue);
            self.round_commit = self.round_commit.max(routed);
        }
        if self.confirm {
            let seq = self.next_publish_seq;
            self.next_publish_seq += 1;
            self.round_first_seq.get_or_insert(seq);
            self.round_seq = Some(seq);
            if refused {
                self.round_nacked.push(seq);
            }
        }
        Ok(())
    }

    /// End of a round of input: hand this round's confirms to the waiter task. (Without
    /// confirms nothing waits: the broker makes the messages durable and visible.)
    pub fn end_round(&mut self) {
        self.flush_acks();
        let commit = std::mem::take(&mut self.round_commit);
        if let Some(seq) = self.round_seq.take() {
            let first = self.round_first_seq.take().unwrap_or(seq);
            let nacked = std::mem::take(&mut self.round_nacked);
            if let Some(waiter) = &self.waiter {
                let _ = waiter.send(WaitItem::Confirm {
                    first,
                    seq,
                    nacked,
                    commit,
                });
            }
        }
    }

    /// Commit the acknowledgements of this round, once per queue; returns the latest commit.
    fn flush_acks(&mut self) -> Commit {
        let mut commit = Commit::NONE;
        for queue in std::mem::take(&mut self.round_acked) {
            match queue.flush() {
                Ok(done) => commit = commit.max(done),
                Err(e) => {
                    tracing::warn!(queue = %queue.name, error = %e, "recording acknowledgements failed")
                }
            }
        }
        commit
    }

    /// The channel is going away: unacknowledged deliveries return to their queues and its
    /// consumers are removed.
    pub fn close(&mut self, ctx: &mut Ctx<'_>) {
        self.end_round();
        self.pending = None;
        let tags: Vec<String> = self.consumers.keys().cloned().collect();
        for tag in tags {
            self.cancel_consumer(&tag, ctx);
        }
        self.requeue_all();
        self.waiter = None;
    }
}

/// A consumer's `x-priority` argument (0 when absent).
fn consumer_priority(arguments: &amq_protocol::types::FieldTable) -> i64 {
    arguments
        .inner()
        .get("x-priority")
        .and_then(crate::broker::amqp::args::integer)
        .unwrap_or(0)
}

/// RabbitMQ's answer to a method streams do not support.
fn not_for_streams(method: &str, queue: &str) -> AmqpError {
    AmqpError::new(
        code::NOT_IMPLEMENTED,
        format!("{method} not supported by stream queues queue '{queue}' in vhost '/'"),
    )
}

/// A method only a server may send.
fn server_method(method: AMQPClass) -> AmqpError {
    AmqpError::new(
        code::COMMAND_INVALID,
        format!(
            "method {}.{} is not valid from a client",
            method.get_amqp_class_id(),
            method.get_amqp_method_id()
        ),
    )
}

/// Route what `queue` dropped to its dead-letter exchange; returns the commit (nothing needs
/// to wait for it unless a reply reports the drop).
pub fn route_dead_letters(shared: &AmqpShared, queue: &Arc<Queue>) -> Commit {
    match shared.broker.vhost().route_dead_letters(queue) {
        Ok(commit) => commit,
        Err(e) => {
            tracing::warn!(queue = %queue.name, error = %e.text, "dead-lettering failed");
            Commit::NONE
        }
    }
}
