//! `XRANGE key start end [COUNT count]` and `XREVRANGE key end start [COUNT count]`.

use super::xadd::INVALID_STREAM_ID;
use super::{existing_stream, Context, Reply};
use crate::broker::{Entry, StreamId};
use crate::protocol::resp::args::{parse_i64, Args};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bound {
    Start,
    End,
}

/// `-`, `+`, `ms`, `ms-seq`, or any of the ID forms after `(` for an exclusive bound.
fn parse_bound(arg: &[u8], bound: Bound) -> Result<StreamId, Reply> {
    match arg {
        b"-" => return Ok(StreamId::MIN),
        b"+" => return Ok(StreamId::MAX),
        _ => {}
    }
    let missing_seq = if bound == Bound::Start { 0 } else { u64::MAX };
    let (exclusive, text) = match arg.strip_prefix(b"(") {
        Some(rest) => (true, rest),
        None => (false, arg),
    };
    let id = StreamId::parse(text, missing_seq).ok_or_else(|| Reply::error(INVALID_STREAM_ID))?;
    match (exclusive, bound) {
        (false, _) => Ok(id),
        (true, Bound::Start) => id
            .successor()
            .ok_or_else(|| Reply::error("ERR invalid start ID for the interval")),
        (true, Bound::End) => id
            .predecessor()
            .ok_or_else(|| Reply::error("ERR invalid end ID for the interval")),
    }
}

/// `[COUNT n]`; a negative count means none, as in Redis.
fn parse_count(args: &mut Args) -> Result<Option<usize>, Reply> {
    if !args.eat("COUNT") {
        args.finish()?;
        return Ok(None);
    }
    let count = args.optional().ok_or_else(Reply::syntax_error)?;
    let count = parse_i64(&count)?.max(0);
    args.finish()?;
    Ok(Some(count as usize))
}

pub fn entry_reply(entry: Entry) -> Reply {
    let fields = entry
        .fields
        .into_iter()
        .flat_map(|(f, v)| [Reply::Bulk(f), Reply::Bulk(v)])
        .collect();
    Reply::Array(vec![Reply::Id(entry.id), Reply::Array(fields)])
}

fn range(args: &mut Args, context: &mut Context<'_>, reverse: bool) -> Result<Reply, Reply> {
    let key = args.required()?;
    let (first, second) = (args.required()?, args.required()?);
    let (start, end) = if reverse {
        (
            parse_bound(&second, Bound::Start)?,
            parse_bound(&first, Bound::End)?,
        )
    } else {
        (
            parse_bound(&first, Bound::Start)?,
            parse_bound(&second, Bound::End)?,
        )
    };
    let count = parse_count(args)?;
    let Some(stream) = existing_stream(context, &key) else {
        return Ok(Reply::Array(Vec::new()));
    };
    let budget = context.reply_budget();
    let entries = if reverse {
        stream.rev_range_within(end, start, count, budget.bytes_max)
    } else {
        stream.range_within(start, end, count, budget.bytes_max)
    };
    let entries = entries.map_err(|e| context.read_error(e, budget))?;
    Ok(Reply::Array(entries.into_iter().map(entry_reply).collect()))
}

pub fn xrange(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    range(args, context, false)
}

pub fn xrevrange(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    range(args, context, true)
}
