//! `XCLAIM key group consumer min-idle-time id [id ...] [IDLE ms] [TIME ms] [RETRYCOUNT count]
//! [FORCE] [JUSTID] [LASTID id]` and `XAUTOCLAIM key group consumer min-idle-time start
//! [COUNT count] [JUSTID]`.

use super::xadd::INVALID_STREAM_ID;
use super::xpending::no_such_key_or_group;
use super::xrange::entry_reply;
use super::{existing_stream, Context, Reply};
use crate::broker::{ClaimOptions, Entry, StreamError, StreamId};
use crate::protocol::resp::args::{parse_i64, Args};

fn claimed_reply(entries: Vec<Entry>, just_id: bool) -> Reply {
    Reply::Array(
        entries
            .into_iter()
            .map(|e| {
                if just_id {
                    Reply::Id(e.id)
                } else {
                    entry_reply(e)
                }
            })
            .collect(),
    )
}

fn min_idle(arg: &[u8], command: &str) -> Result<u64, Reply> {
    let ms = parse_i64(arg)
        .map_err(|_| Reply::error(format!("ERR Invalid min-idle-time argument for {command}")))?;
    Ok(ms.max(0) as u64)
}

fn parse_id(arg: &[u8]) -> Option<StreamId> {
    StreamId::parse(arg, 0)
}

pub fn xclaim(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let (key, group, consumer) = (args.required()?, args.required()?, args.required()?);
    let min_idle_ms = min_idle(&args.required()?, "XCLAIM")?;
    let rest = args.rest();
    // IDs come first; the first argument that is not an ID starts the options.
    // As in Redis, an argument that is not an ID, even the first, starts the options.
    let id_count = rest.iter().take_while(|a| parse_id(a).is_some()).count();
    let ids: Vec<StreamId> = rest[..id_count]
        .iter()
        .filter_map(|a| parse_id(a))
        .collect();
    let mut options = ClaimOptions::default();
    let mut i = id_count;
    let value = |i: usize| rest.get(i + 1).ok_or_else(Reply::syntax_error);
    while i < rest.len() {
        match rest[i].to_ascii_uppercase().as_slice() {
            b"FORCE" => options.force = true,
            b"JUSTID" => options.just_id = true,
            b"IDLE" => {
                options.idle_ms = Some(parse_i64(value(i)?)?.max(0) as u64);
                i += 1;
            }
            b"TIME" => {
                options.time_ms = Some(parse_i64(value(i)?)?);
                i += 1;
            }
            b"RETRYCOUNT" => {
                options.retry_count = Some(parse_i64(value(i)?)?.max(0) as u64);
                i += 1;
            }
            b"LASTID" => {
                options.last_id =
                    Some(parse_id(value(i)?).ok_or_else(|| Reply::error(INVALID_STREAM_ID))?);
                i += 1;
            }
            _ => {
                return Err(Reply::error(format!(
                    "ERR Unrecognized XCLAIM option '{}'",
                    String::from_utf8_lossy(&rest[i])
                )));
            }
        }
        i += 1;
    }
    let stream =
        existing_stream(context, &key).ok_or_else(|| no_such_key_or_group(&key, &group))?;
    let budget = context.reply_budget();
    let (claimed, commit) = stream
        .claim(
            &group,
            &consumer,
            min_idle_ms,
            &ids,
            &options,
            budget.bytes_max,
        )
        .map_err(|e| match e {
            StreamError::NoGroup => no_such_key_or_group(&key, &group),
            other => context.read_error(other, budget),
        })?;
    context.pending.add(commit, context.reply_index);
    Ok(claimed_reply(claimed, options.just_id))
}

pub fn xautoclaim(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let (key, group, consumer) = (args.required()?, args.required()?, args.required()?);
    let min_idle_ms = min_idle(&args.required()?, "XAUTOCLAIM")?;
    let start = args.required()?;
    let start = match start.as_ref() {
        b"-" => StreamId::MIN,
        arg => parse_id(arg).ok_or_else(|| Reply::error(INVALID_STREAM_ID))?,
    };
    let (mut count, mut just_id) = (100usize, false);
    while args.remaining() > 0 {
        if args.eat("COUNT") {
            let n = parse_i64(&args.optional().ok_or_else(Reply::syntax_error)?)?;
            // Redis caps COUNT so that count * 10 attempts cannot overflow.
            if !(1..=i64::MAX / 10).contains(&n) {
                return Err(Reply::error("ERR COUNT must be > 0"));
            }
            count = n as usize;
        } else if args.eat("JUSTID") {
            just_id = true;
        } else {
            return Err(Reply::syntax_error());
        }
    }
    let stream =
        existing_stream(context, &key).ok_or_else(|| no_such_key_or_group(&key, &group))?;
    let budget = context.reply_budget();
    let (result, commit) = stream
        .autoclaim(
            &group,
            &consumer,
            min_idle_ms,
            start,
            count,
            just_id,
            budget.bytes_max,
        )
        .map_err(|e| match e {
            StreamError::NoGroup => no_such_key_or_group(&key, &group),
            other => context.read_error(other, budget),
        })?;
    context.pending.add(commit, context.reply_index);
    Ok(Reply::Array(vec![
        Reply::Id(result.next),
        claimed_reply(result.claimed, just_id),
        Reply::Array(result.deleted.into_iter().map(Reply::Id).collect()),
    ]))
}
