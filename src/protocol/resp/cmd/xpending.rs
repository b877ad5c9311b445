//! `XPENDING key group [[IDLE min-idle-time] start end count [consumer]]`

use super::xadd::{stream_error, INVALID_STREAM_ID};
use super::{existing_stream, Context, Reply};
use crate::broker::{PendingFilter, StreamError, StreamId};
use crate::protocol::resp::args::{parse_i64, Args};

pub fn no_such_key_or_group(key: &[u8], group: &[u8]) -> Reply {
    Reply::error(format!(
        "NOGROUP No such key '{}' or consumer group '{}'",
        String::from_utf8_lossy(key),
        String::from_utf8_lossy(group)
    ))
}

/// Range bounds as XPENDING takes them: `-`, `+`, IDs, and `(` for exclusive.
fn bound(arg: &[u8], start: bool) -> Result<StreamId, Reply> {
    let invalid = || Reply::error(INVALID_STREAM_ID);
    match arg {
        b"-" => Ok(StreamId::MIN),
        b"+" => Ok(StreamId::MAX),
        _ => match arg.strip_prefix(b"(") {
            Some(rest) => {
                let id =
                    StreamId::parse(rest, if start { 0 } else { u64::MAX }).ok_or_else(invalid)?;
                let moved = if start {
                    id.successor()
                } else {
                    id.predecessor()
                };
                moved.ok_or_else(|| {
                    Reply::error(format!(
                        "ERR invalid {} ID for the interval",
                        if start { "start" } else { "end" }
                    ))
                })
            }
            None => StreamId::parse(arg, if start { 0 } else { u64::MAX }).ok_or_else(invalid),
        },
    }
}

pub fn xpending(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let (key, group) = (args.required()?, args.required()?);
    let extended = args.remaining() > 0;
    let filter = if extended {
        let mut min_idle_ms = 0;
        if args.eat("IDLE") {
            let ms = parse_i64(&args.optional().ok_or_else(Reply::syntax_error)?)?;
            min_idle_ms = ms.max(0) as u64;
        }
        let (start, end) = (
            args.optional().ok_or_else(Reply::syntax_error)?,
            args.optional().ok_or_else(Reply::syntax_error)?,
        );
        let count = parse_i64(&args.optional().ok_or_else(Reply::syntax_error)?)?.max(0) as usize;
        let consumer = args.optional();
        args.finish()?;
        Some(PendingFilter {
            min_idle_ms,
            start: bound(&start, true)?,
            end: bound(&end, false)?,
            count,
            consumer,
        })
    } else {
        None
    };
    let stream =
        existing_stream(context, &key).ok_or_else(|| no_such_key_or_group(&key, &group))?;
    let to_reply = |e: StreamError| match e {
        StreamError::NoGroup => no_such_key_or_group(&key, &group),
        other => stream_error(other),
    };
    match filter {
        None => {
            let summary = stream.pending_summary(&group).map_err(to_reply)?;
            if summary.count == 0 {
                return Ok(Reply::Array(vec![
                    Reply::Integer(0),
                    Reply::Nil,
                    Reply::Nil,
                    Reply::NilArray,
                ]));
            }
            let id = |id: Option<StreamId>| id.map_or(Reply::Nil, Reply::Id);
            let consumers = summary
                .per_consumer
                .into_iter()
                .map(|(name, n)| Reply::Array(vec![Reply::Bulk(name), Reply::bulk(n.to_string())]))
                .collect();
            Ok(Reply::Array(vec![
                Reply::Integer(summary.count as i64),
                id(summary.smallest),
                id(summary.largest),
                Reply::Array(consumers),
            ]))
        }
        Some(filter) => {
            let rows = stream.pending_range(&group, &filter).map_err(to_reply)?;
            // Sized before the reply is built: an ID, a consumer and two integers per row.
            let budget = context.reply_budget();
            let bytes: u64 = rows.iter().map(|r| 104 + r.consumer.len() as u64).sum();
            if bytes > budget.bytes_max {
                return Err(context.reply_too_large(budget));
            }
            Ok(Reply::Array(
                rows.into_iter()
                    .map(|r| {
                        Reply::Array(vec![
                            Reply::Id(r.id),
                            Reply::Bulk(r.consumer),
                            Reply::Integer(r.idle_ms as i64),
                            Reply::Integer(r.delivery_count as i64),
                        ])
                    })
                    .collect(),
            ))
        }
    }
}
