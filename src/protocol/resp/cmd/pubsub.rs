//! Pub/Sub: `SUBSCRIBE`, `PSUBSCRIBE`, `UNSUBSCRIBE`, `PUNSUBSCRIBE`, `PUBLISH`, `PUBSUB
//! CHANNELS|NUMSUB|NUMPAT`, and Potok's replay extension, `TOPIC.READ` and `TOPIC.SUBSCRIBE`.
//!
//! Every PUBLISH is appended to the channel's topic log before it is fanned out, so history can
//! be replayed:
//! - `TOPIC.READ channel start [COUNT n]`: stored messages from `start` (an offset, `-` for the
//!   oldest kept, or `@<unix ms>` for the first published at or after that time), as
//!   `[offset, timestamp_ms, payload]` triples.
//! - `TOPIC.SUBSCRIBE channel start`: subscribe, then receive every stored message from `start`
//!   as ordinary `message` pushes, then live ones: no gap and no duplicate between the two.
//! - `TOPIC.DELETE channel [channel ...]`: delete channels' stored messages (an operator's
//!   cleanup; live subscriptions stay, and the next PUBLISH starts a new log at offset 0).
//!   Replies with the number of channels that had a log, as DEL counts keys.

use bytes::Bytes;

use super::{Context, Reply};
use crate::broker::topic::Topic;
use crate::protocol::resp::args::{parse_i64, Args};

/// Most stored messages TOPIC.SUBSCRIBE replays (TOPIC.READ pages through more).
const REPLAY_MESSAGES_MAX: usize = 10_000;
/// Default and largest COUNT for TOPIC.READ.
const READ_COUNT_DEFAULT: usize = 1_000;
const READ_COUNT_MAX: usize = 100_000;

fn confirmation(kind: &'static str, name: Option<Bytes>, count: usize) -> Reply {
    Reply::Push(vec![
        Reply::bulk(kind),
        name.map_or(Reply::Nil, Reply::Bulk),
        Reply::Integer(count as i64),
    ])
}

fn subscription_count(context: &Context<'_>) -> usize {
    context.session.subscriptions.len() + context.session.patterns.len()
}

fn subscribe_to(context: &mut Context<'_>, channel: Bytes) -> Reply {
    if context.session.subscriptions.insert(channel.clone()) {
        context
            .shared
            .pubsub
            .subscribe(&channel, context.session.id, &context.session.subscriber);
    }
    confirmation("subscribe", Some(channel), subscription_count(context))
}

pub fn subscribe(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let replies = args
        .rest()
        .into_iter()
        .map(|channel| subscribe_to(context, channel))
        .collect();
    Ok(Reply::Many(replies))
}

pub fn psubscribe(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let mut replies = Vec::new();
    for pattern in args.rest() {
        if context.session.patterns.insert(pattern.clone()) {
            context.shared.pubsub.psubscribe(
                &pattern,
                context.session.id,
                &context.session.subscriber,
            );
        }
        replies.push(confirmation(
            "psubscribe",
            Some(pattern),
            subscription_count(context),
        ));
    }
    Ok(Reply::Many(replies))
}

/// What an (P)UNSUBSCRIBE leaves: channels or patterns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Subscriptions {
    Channels,
    Patterns,
}

/// Leave the named subscriptions (all of that kind when none is named), confirming each.
fn leave(args: &mut Args, context: &mut Context<'_>, kind: Subscriptions) -> Reply {
    let label = if kind == Subscriptions::Channels {
        "unsubscribe"
    } else {
        "punsubscribe"
    };
    let mut names = args.rest();
    if names.is_empty() {
        let held = if kind == Subscriptions::Channels {
            &context.session.subscriptions
        } else {
            &context.session.patterns
        };
        names = held.iter().cloned().collect();
    }
    if names.is_empty() {
        return confirmation(label, None, subscription_count(context));
    }
    let mut replies = Vec::new();
    for name in names {
        let (id, registry) = (context.session.id, &context.shared.pubsub);
        match kind {
            Subscriptions::Channels if context.session.subscriptions.remove(&name) => {
                registry.unsubscribe(&name, id)
            }
            Subscriptions::Patterns if context.session.patterns.remove(&name) => {
                registry.punsubscribe(&name, id)
            }
            _ => {}
        }
        replies.push(confirmation(label, Some(name), subscription_count(context)));
    }
    Reply::Many(replies)
}

pub fn unsubscribe(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    Ok(leave(args, context, Subscriptions::Channels))
}

pub fn punsubscribe(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    Ok(leave(args, context, Subscriptions::Patterns))
}

/// `PUBLISH channel message`: stored in the channel's topic log, then delivered live.
pub fn publish(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let (channel, payload) = (args.required()?, args.required()?);
    let topic = context
        .broker
        .topic_or_create(&channel)
        .map_err(|e| Reply::error(format!("ERR {e}")))?;
    let _turn = topic.lock();
    let (_, commit) = topic
        .append(payload.clone())
        .map_err(|e| Reply::error(format!("ERR {e}")))?;
    // Subscribers get it at once; the reply waits until the history holding it is stored.
    context.pending.add(commit, context.reply_index);
    Ok(Reply::Integer(
        context.shared.publish(&channel, &payload) as i64
    ))
}

/// `PUBSUB CHANNELS [pattern]`, `PUBSUB NUMSUB [channel ...]`, `PUBSUB NUMPAT`.
pub fn pubsub(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let typed = args.required()?;
    let sub = typed.to_ascii_uppercase();
    let registry = &context.shared.pubsub;
    match sub.as_slice() {
        b"CHANNELS" => {
            let pattern = args.optional();
            args.finish()
                .map_err(|_| Reply::wrong_arity("pubsub|channels"))?;
            Ok(Reply::Array(
                registry
                    .channels(pattern.as_deref())
                    .into_iter()
                    .map(Reply::Bulk)
                    .collect(),
            ))
        }
        b"NUMSUB" => Ok(Reply::Array(
            args.rest()
                .into_iter()
                .flat_map(|c| {
                    let n = registry.subscriber_count(&c) as i64;
                    [Reply::Bulk(c), Reply::Integer(n)]
                })
                .collect(),
        )),
        b"NUMPAT" => Ok(Reply::Integer(registry.pattern_count() as i64)),
        _ => Err(Reply::error(format!(
            "ERR unknown subcommand '{}'. Try PUBSUB HELP.",
            String::from_utf8_lossy(&typed)
        ))),
    }
}

/// Where a replay starts: an offset, `-` (oldest kept), `$` (the end), or `@<unix ms>`.
fn replay_start(topic: &Topic, arg: &[u8]) -> Result<u64, Reply> {
    match arg {
        b"-" => Ok(topic.start_offset()),
        b"$" => Ok(topic.next_offset()),
        _ => match arg.strip_prefix(b"@") {
            Some(ms) => topic
                .offset_for_timestamp(parse_i64(ms)?)
                .map_err(|e| Reply::error(format!("ERR {e}"))),
            None => {
                let offset = parse_i64(arg)?;
                u64::try_from(offset).map_err(|_| Reply::not_an_integer())
            }
        },
    }
}

fn message(channel: &Bytes, payload: Bytes) -> Reply {
    Reply::Push(vec![
        Reply::bulk("message"),
        Reply::Bulk(channel.clone()),
        Reply::Bulk(payload),
    ])
}

/// `TOPIC.READ channel start [COUNT n]`
pub fn topic_read(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let (channel, start) = (args.required()?, args.required()?);
    let mut count = READ_COUNT_DEFAULT;
    if args.eat("COUNT") {
        let n = parse_i64(&args.optional().ok_or_else(Reply::syntax_error)?)?;
        count = n.clamp(0, READ_COUNT_MAX as i64) as usize;
    }
    args.finish()?;
    let Some(topic) = context.broker.topic(&channel) else {
        return Ok(Reply::Array(Vec::new()));
    };
    let from = replay_start(&topic, &start)?;
    let budget = context.reply_budget();
    let read = topic
        .read(from, topic.next_offset(), count, budget.bytes_max)
        .map_err(|e| Reply::error(format!("ERR {e}")))?;
    if read.messages.is_empty() && read.stopped_at_bytes {
        return Err(context.reply_too_large(budget));
    }
    Ok(Reply::Array(
        read.messages
            .into_iter()
            .map(|m| {
                Reply::Array(vec![
                    Reply::Integer(m.offset as i64),
                    Reply::Integer(m.timestamp_ms),
                    Reply::Bulk(m.payload),
                ])
            })
            .collect(),
    ))
}

/// `TOPIC.DELETE channel [channel ...]`: the number of channels whose log was deleted. The
/// reply waits for the deletion to be durable, as DEL's does.
pub fn topic_delete(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let mut deleted = 0;
    for channel in args.rest() {
        let (existed, commit) = context
            .broker
            .delete_topic(&channel)
            .map_err(|e| Reply::error(format!("ERR {e}")))?;
        context.pending.add(commit, context.reply_index);
        deleted += i64::from(existed);
    }
    Ok(Reply::Integer(deleted))
}

/// `TOPIC.SUBSCRIBE channel start`
pub fn topic_subscribe(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let (channel, start) = (args.required()?, args.required()?);
    args.finish()?;
    let topic = context
        .broker
        .topic_or_create(&channel)
        .map_err(|e| Reply::error(format!("ERR {e}")))?;
    let from = replay_start(&topic, &start)?;
    // Subscribe and note where live delivery begins with publishing paused: every message is
    // either stored before `live_from` (replayed here) or delivered live, never both.
    let (confirm, live_from) = {
        let _turn = topic.lock();
        (subscribe_to(context, channel.clone()), topic.next_offset())
    };
    // The replay stops early rather than pass the reply budget; TOPIC.READ pages further.
    let stored = topic
        .read(
            from,
            live_from,
            REPLAY_MESSAGES_MAX,
            context.reply_budget().bytes_max,
        )
        .map_err(|e| Reply::error(format!("ERR {e}")))?;
    let mut replies = vec![confirm];
    replies.extend(
        stored
            .messages
            .into_iter()
            .map(|m| message(&channel, m.payload)),
    );
    Ok(Reply::Many(replies))
}
