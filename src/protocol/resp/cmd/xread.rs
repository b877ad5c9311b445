//! `XREAD [COUNT count] [BLOCK milliseconds] STREAMS key [key ...] id [id ...]` and
//! `XREADGROUP GROUP group consumer [COUNT count] [BLOCK milliseconds] [NOACK] STREAMS key
//! [key ...] id [id ...]`.

use std::time::Duration;

use bytes::Bytes;

use super::xadd::{stream_error, INVALID_STREAM_ID};
use super::xrange::entry_reply;
use super::{Blocked, Context, Reply};
use crate::broker::{Broker, Commit, Entry, StreamError, StreamId};
use crate::protocol::resp::args::{parse_i64, Args};
use crate::protocol::resp::reply::Protocol;

#[derive(Default)]
struct Options {
    count: Option<usize>,
    block: Option<Duration>,
    noack: bool,
    group: Option<(Bytes, Bytes)>,
}

/// Parse the options before `STREAMS`.
fn parse_options(args: &mut Args, group_allowed: bool) -> Result<Options, Reply> {
    let mut options = Options::default();
    loop {
        if args.eat("STREAMS") {
            return Ok(options);
        } else if args.eat("COUNT") {
            let value = args.optional().ok_or_else(Reply::syntax_error)?;
            options.count = Some(parse_i64(&value)?.max(0) as usize);
        } else if args.eat("BLOCK") {
            let value = args.optional().ok_or_else(Reply::syntax_error)?;
            let ms = parse_i64(&value)
                .map_err(|_| Reply::error("ERR timeout is not an integer or out of range"))?;
            if ms < 0 {
                return Err(Reply::error("ERR timeout is negative"));
            }
            options.block = Some(Duration::from_millis(ms as u64));
        } else if group_allowed && args.eat("NOACK") {
            options.noack = true;
        } else if group_allowed && args.eat("GROUP") {
            let group = args.optional().ok_or_else(Reply::syntax_error)?;
            let consumer = args.optional().ok_or_else(Reply::syntax_error)?;
            options.group = Some((group, consumer));
        } else {
            return Err(Reply::syntax_error());
        }
    }
}

/// Split `key ... id ...` in halves.
fn keys_and_ids(args: &mut Args, command: &str) -> Result<(Vec<Bytes>, Vec<Bytes>), Reply> {
    let rest = args.rest();
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return Err(Reply::error(format!(
            "ERR Unbalanced '{command}' list of streams: for each stream key an ID or '$' must be specified."
        )));
    }
    let (keys, ids) = rest.split_at(rest.len() / 2);
    Ok((keys.to_vec(), ids.to_vec()))
}

/// XREAD's reply: per stream, its entries; RESP3 as a map.
fn streams_reply(found: Vec<(Reply, Reply)>, protocol: Protocol) -> Reply {
    match protocol {
        Protocol::Resp3 => Reply::Map(found),
        Protocol::Resp2 => Reply::Array(
            found
                .into_iter()
                .map(|(k, v)| Reply::Array(vec![k, v]))
                .collect(),
        ),
    }
}

/// Entries after each ID, for the streams that have some, in all no more than `bytes_max`
/// (else [`StreamError::ReplyTooLarge`]); `None` when no stream has any.
fn read_after(
    broker: &Broker,
    keys: &[Bytes],
    after: &[StreamId],
    count: Option<usize>,
    protocol: Protocol,
    mut bytes_max: u64,
) -> Result<Option<Reply>, StreamError> {
    let mut found = Vec::new();
    for (key, after) in keys.iter().zip(after) {
        let (Some(stream), Some(start)) = (broker.stream(key), after.successor()) else {
            continue;
        };
        let entries = stream.range_within(start, StreamId::MAX, count, bytes_max)?;
        bytes_max = bytes_max.saturating_sub(entries.iter().map(Entry::bytes).sum());
        if !entries.is_empty() {
            found.push((
                Reply::Bulk(key.clone()),
                Reply::Array(entries.into_iter().map(entry_reply).collect()),
            ));
        }
    }
    Ok((!found.is_empty()).then(|| streams_reply(found, protocol)))
}

pub fn xread(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let options = parse_options(args, false)?;
    let (keys, ids) = keys_and_ids(args, "xread")?;
    // `$` means "what is newest now", fixed at call time so a blocked read sees what follows.
    let after: Vec<StreamId> = keys
        .iter()
        .zip(&ids)
        .map(|(key, id)| match id.as_ref() {
            b"$" => Ok(context.broker.stream(key).map_or(StreamId::MIN, |s| s.last_id())),
            b">" => Err(Reply::error(
                "ERR The > ID can be specified only when calling XREADGROUP using the GROUP <group> <consumer> option.",
            )),
            id => StreamId::parse(id, 0).ok_or_else(|| Reply::error(INVALID_STREAM_ID)),
        })
        .collect::<Result<_, _>>()?;
    let (protocol, count) = (context.session.protocol, options.count);
    let budget = context.reply_budget();
    let read = read_after(
        context.broker,
        &keys,
        &after,
        count,
        protocol,
        budget.bytes_max,
    );
    if let Some(reply) = read.map_err(|e| context.read_error(e, budget))? {
        return Ok(reply);
    }
    let Some(timeout) = options.block else {
        return Ok(Reply::NilArray);
    };
    *context.blocked = Some(Blocked {
        keys: keys.clone(),
        timeout: (!timeout.is_zero()).then_some(timeout),
        retry: Box::new(move |broker: &Broker| {
            read_after(broker, &keys, &after, count, protocol, budget.bytes_max)
                .map_err(stream_error)
        }),
        timeout_reply: Reply::NilArray,
    });
    Ok(Reply::NilArray)
}

/// Where XREADGROUP reads a stream from.
#[derive(Clone, Copy)]
enum GroupRead {
    /// `>`: entries never delivered to the group.
    New,
    /// An ID: this consumer's pending entries after it.
    History(StreamId),
}

struct GroupReadRequest {
    group: Bytes,
    consumer: Bytes,
    keys: Vec<Bytes>,
    reads: Vec<GroupRead>,
    count: Option<usize>,
    noack: bool,
    protocol: Protocol,
    /// Entry bytes all streams' entries may take together (see [`Context::reply_budget`]).
    bytes_max: u64,
}

impl GroupReadRequest {
    /// One pass over the streams, and the commit of the deliveries it recorded. `None`: only
    /// `>` reads, and nothing new. A read over the byte budget is `Err(None)`, to be answered
    /// by the caller.
    fn run(
        &self,
        broker: &Broker,
        blocked_before: bool,
    ) -> Result<(Option<Reply>, Commit), Option<Reply>> {
        let mut found = Vec::new();
        let mut commit = Commit::NONE;
        let mut bytes_max = self.bytes_max;
        for (key, read) in self.keys.iter().zip(&self.reads) {
            let Some(stream) = broker.stream(key) else {
                return Err(Some(if blocked_before {
                    Reply::error("UNBLOCKED the stream key no longer exists")
                } else {
                    no_group_for_read(key, &self.group)
                }));
            };
            let no_group = |e: StreamError| match e {
                StreamError::NoGroup if blocked_before => Some(Reply::error(
                    "NOGROUP the consumer group this client was blocked on no longer exists",
                )),
                StreamError::NoGroup => Some(no_group_for_read(key, &self.group)),
                StreamError::ReplyTooLarge(_) => None,
                other => Some(stream_error(other)),
            };
            match read {
                GroupRead::New => {
                    let (entries, delivered) = stream
                        .read_group_new(
                            &self.group,
                            &self.consumer,
                            self.count,
                            self.noack,
                            bytes_max,
                        )
                        .map_err(no_group)?;
                    commit = commit.max(delivered);
                    bytes_max = bytes_max.saturating_sub(entries.iter().map(Entry::bytes).sum());
                    if !entries.is_empty() {
                        found.push((
                            Reply::Bulk(key.clone()),
                            Reply::Array(entries.into_iter().map(entry_reply).collect()),
                        ));
                    }
                }
                GroupRead::History(after) => {
                    let (entries, delivered) = stream
                        .read_group_history(
                            &self.group,
                            &self.consumer,
                            *after,
                            self.count,
                            bytes_max,
                        )
                        .map_err(no_group)?;
                    commit = commit.max(delivered);
                    let read: u64 = entries
                        .iter()
                        .filter_map(|(_, e)| e.as_ref().map(Entry::bytes))
                        .sum();
                    bytes_max = bytes_max.saturating_sub(read);
                    let replies = entries
                        .into_iter()
                        .map(|(id, entry)| {
                            entry.map_or_else(
                                || Reply::Array(vec![Reply::Id(id), Reply::NilArray]),
                                entry_reply,
                            )
                        })
                        .collect();
                    found.push((Reply::Bulk(key.clone()), Reply::Array(replies)));
                }
            }
        }
        let reply = (!found.is_empty()).then(|| streams_reply(found, self.protocol));
        Ok((reply, commit))
    }

    /// A pass for a blocked reader, whose reply goes out as soon as this returns: it waits
    /// (blocking the thread) for the deliveries' commit itself.
    fn run_blocked(&self, broker: &Broker) -> Result<Option<Reply>, Reply> {
        let (reply, commit) = self.run(broker, true).map_err(|e| {
            e.unwrap_or_else(|| stream_error(StreamError::ReplyTooLarge(self.bytes_max)))
        })?;
        broker
            .wait(commit)
            .map_err(|e| Reply::error(format!("ERR write failed, it may not be stored: {e}")))?;
        Ok(reply)
    }
}

fn no_group_for_read(key: &[u8], group: &[u8]) -> Reply {
    Reply::error(format!(
        "NOGROUP No such key '{}' or consumer group '{}' in XREADGROUP with GROUP option",
        String::from_utf8_lossy(key),
        String::from_utf8_lossy(group)
    ))
}

pub fn xreadgroup(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let options = parse_options(args, true)?;
    let Some((group, consumer)) = options.group else {
        return Err(Reply::error("ERR Missing GROUP option for XREADGROUP"));
    };
    let (keys, ids) = keys_and_ids(args, "xreadgroup")?;
    let reads = ids
        .iter()
        .map(|id| match id.as_ref() {
            b">" => Ok(GroupRead::New),
            b"$" => Err(Reply::error("ERR The $ ID is meaningless in the context of XREADGROUP: you want to read the history of this consumer by specifying a proper ID, or use the > ID to get new messages. The $ ID would just return an empty result set.")),
            id => StreamId::parse(id, 0).map(GroupRead::History).ok_or_else(|| Reply::error(INVALID_STREAM_ID)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Every key and group must exist before anything is read.
    for key in &keys {
        if !context
            .broker
            .stream(key)
            .is_some_and(|s| s.has_group(&group))
        {
            return Err(no_group_for_read(key, &group));
        }
    }
    let request = GroupReadRequest {
        group,
        consumer,
        keys,
        reads,
        count: options.count,
        noack: options.noack,
        protocol: context.session.protocol,
        bytes_max: context.reply_budget().bytes_max,
    };
    let budget = context.reply_budget();
    let read = request.run(context.broker, false);
    let (reply, commit) = read.map_err(|e| e.unwrap_or_else(|| context.reply_too_large(budget)))?;
    context.pending.add(commit, context.reply_index);
    if let Some(reply) = reply {
        return Ok(reply);
    }
    let Some(timeout) = options.block else {
        return Ok(Reply::NilArray);
    };
    *context.blocked = Some(Blocked {
        keys: request.keys.clone(),
        timeout: (!timeout.is_zero()).then_some(timeout),
        retry: Box::new(move |broker: &Broker| request.run_blocked(broker)),
        timeout_reply: Reply::NilArray,
    });
    Ok(Reply::NilArray)
}
