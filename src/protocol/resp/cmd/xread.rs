//! `XREAD [COUNT count] [BLOCK milliseconds] STREAMS key [key ...] id [id ...]`

use std::time::Duration;

use bytes::Bytes;

use super::xadd::{stream_error, INVALID_STREAM_ID};
use super::xrange::entry_reply;
use super::{Blocked, Context, Reply};
use crate::broker::{Broker, StreamId};
use crate::protocol::resp::args::{parse_i64, Args};
use crate::protocol::resp::reply::Protocol;

/// Parse the options before `STREAMS`: (count, block timeout).
fn parse_options(args: &mut Args) -> Result<(Option<usize>, Option<Duration>), Reply> {
    let (mut count, mut block) = (None, None);
    loop {
        if args.eat("STREAMS") {
            return Ok((count, block));
        } else if args.eat("COUNT") {
            let value = args.optional().ok_or_else(Reply::syntax_error)?;
            count = Some(parse_i64(&value)?.max(0) as usize);
        } else if args.eat("BLOCK") {
            let value = args.optional().ok_or_else(Reply::syntax_error)?;
            let ms = parse_i64(&value)
                .map_err(|_| Reply::error("ERR timeout is not an integer or out of range"))?;
            if ms < 0 {
                return Err(Reply::error("ERR timeout is negative"));
            }
            block = Some(Duration::from_millis(ms as u64));
        } else {
            return Err(Reply::syntax_error());
        }
    }
}

/// Entries after each ID, for the streams that have some; `None` when none has.
fn read_after(
    broker: &Broker,
    keys: &[Bytes],
    after: &[StreamId],
    count: Option<usize>,
    protocol: Protocol,
) -> Result<Option<Reply>, Reply> {
    let mut found = Vec::new();
    for (key, after) in keys.iter().zip(after) {
        let (Some(stream), Some(start)) = (broker.stream(key), after.successor()) else {
            continue;
        };
        let entries = stream
            .range(start, StreamId::MAX, count)
            .map_err(stream_error)?;
        if !entries.is_empty() {
            found.push((
                Reply::Bulk(key.clone()),
                Reply::Array(entries.into_iter().map(entry_reply).collect()),
            ));
        }
    }
    if found.is_empty() {
        return Ok(None);
    }
    Ok(Some(match protocol {
        Protocol::Resp3 => Reply::Map(found),
        Protocol::Resp2 => Reply::Array(
            found
                .into_iter()
                .map(|(k, v)| Reply::Array(vec![k, v]))
                .collect(),
        ),
    }))
}

pub fn xread(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let (count, block) = parse_options(args)?;
    let rest = args.rest();
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return Err(Reply::error(
            "ERR Unbalanced 'xread' list of streams: for each stream key an ID or '$' must be specified.",
        ));
    }
    let (keys, ids) = rest.split_at(rest.len() / 2);
    let keys = keys.to_vec();
    // `$` means "what is newest now", fixed at call time so a blocked read sees what follows.
    let after: Vec<StreamId> = keys
        .iter()
        .zip(ids)
        .map(|(key, id)| match id.as_ref() {
            b"$" => Ok(context
                .broker
                .stream(key)
                .map_or(StreamId::MIN, |s| s.last_id())),
            id => StreamId::parse(id, 0).ok_or_else(|| Reply::error(INVALID_STREAM_ID)),
        })
        .collect::<Result<_, _>>()?;
    let protocol = context.session.protocol;
    if let Some(reply) = read_after(context.broker, &keys, &after, count, protocol)? {
        return Ok(reply);
    }
    let Some(timeout) = block else {
        return Ok(Reply::NilArray);
    };
    let watched = keys.clone();
    *context.blocked = Some(Blocked {
        keys: watched,
        timeout: (!timeout.is_zero()).then_some(timeout),
        retry: Box::new(move |broker: &Broker| read_after(broker, &keys, &after, count, protocol)),
        timeout_reply: Reply::NilArray,
    });
    Ok(Reply::NilArray)
}
