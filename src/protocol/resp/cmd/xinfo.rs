//! `XINFO STREAM key`, `XINFO GROUPS key`, `XINFO CONSUMERS key group`, `XINFO HELP`.

use super::xadd::stream_error;
use super::xrange::entry_reply;
use super::{existing_stream, Context, Reply};
use crate::broker::group::GroupState;
use crate::broker::StreamId;
use crate::protocol::resp::args::Args;

pub fn xinfo(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let sub = args.required()?;
    match sub.to_ascii_uppercase().as_slice() {
        b"STREAM" => stream(args, context),
        b"GROUPS" => groups(args, context),
        b"CONSUMERS" => consumers(args, context),
        b"HELP" => Ok(Reply::Array(
            [
                "XINFO <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "CONSUMERS <key> <groupname>",
                "    Show consumers of <groupname>.",
                "GROUPS <key>",
                "    Show the stream consumer groups.",
                "STREAM <key> [FULL [COUNT <count>]",
                "    Show information about the stream.",
                "HELP",
                "    Print this help.",
            ]
            .into_iter()
            .map(Reply::Status)
            .collect(),
        )),
        _ => Err(Reply::error(format!(
            "ERR unknown subcommand '{}'. Try XINFO HELP.",
            String::from_utf8_lossy(&sub)
        ))),
    }
}

/// The next argument, or Redis's arity error for `xinfo|<subcommand>`.
fn required(args: &mut Args, sub: &str) -> Result<bytes::Bytes, Reply> {
    args.optional().ok_or_else(|| {
        Reply::error(format!(
            "ERR wrong number of arguments for 'xinfo|{sub}' command"
        ))
    })
}

fn stream(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let key = required(args, "stream")?;
    let full = args.eat("FULL");
    let mut count = 10usize;
    if full && args.eat("COUNT") {
        let n = crate::protocol::resp::args::parse_i64(
            &args.optional().ok_or_else(Reply::syntax_error)?,
        )?;
        count = if n <= 0 { usize::MAX } else { n as usize };
    }
    args.finish()?;
    let Some(stream) = existing_stream(context, &key) else {
        return Err(Reply::error("ERR no such key"));
    };
    let info = stream.info().map_err(stream_error)?;
    let segments = stream.log().segment_count() as i64;
    let first_id = info
        .first_entry
        .as_ref()
        .map_or("0-0".to_string(), |e| e.id.to_string());
    let mut fields = vec![
        (Reply::bulk("length"), Reply::Integer(info.length as i64)),
        // Potok has no radix tree; its segments play that part.
        (Reply::bulk("radix-tree-keys"), Reply::Integer(segments)),
        (Reply::bulk("radix-tree-nodes"), Reply::Integer(segments)),
        (Reply::bulk("last-generated-id"), Reply::Id(info.last_id)),
        (
            Reply::bulk("max-deleted-entry-id"),
            Reply::Id(info.max_deleted),
        ),
        (
            Reply::bulk("entries-added"),
            Reply::Integer(info.entries_added as i64),
        ),
        (
            Reply::bulk("recorded-first-entry-id"),
            Reply::bulk(first_id),
        ),
    ];
    if !full {
        let entry = |e: Option<_>| e.map_or(Reply::Nil, entry_reply);
        fields.push((
            Reply::bulk("groups"),
            Reply::Integer(stream.groups_info().len() as i64),
        ));
        fields.push((Reply::bulk("first-entry"), entry(info.first_entry)));
        fields.push((Reply::bulk("last-entry"), entry(info.last_entry)));
        return Ok(Reply::Map(fields));
    }
    let budget = context.reply_budget();
    let entries = stream
        .range_within(StreamId::MIN, StreamId::MAX, Some(count), budget.bytes_max)
        .map_err(|e| context.read_error(e, budget))?;
    fields.push((
        Reply::bulk("entries"),
        Reply::Array(entries.into_iter().map(entry_reply).collect()),
    ));
    let summaries = stream.groups_info();
    let states = stream.group_states();
    // The PEL listings, sized before they are built (each row, in the group's PEL and again
    // in its consumer's, about 100 bytes), within what the entries left of the budget.
    let rows: u64 = states
        .iter()
        .map(|(_, group)| 2 * group.pending.len().min(count) as u64)
        .sum();
    let entries_bytes: u64 = fields
        .iter()
        .map(|(k, v)| k.size_estimate() + v.size_estimate())
        .sum();
    if rows.saturating_mul(100).saturating_add(entries_bytes) > budget.bytes_max {
        return Err(context.reply_too_large(budget));
    }
    let groups = states
        .into_iter()
        .zip(summaries)
        .map(|((name, group), summary)| full_group(name, &group, summary.lag, count))
        .collect();
    fields.push((Reply::bulk("groups"), Reply::Array(groups)));
    Ok(Reply::Map(fields))
}

/// One group in XINFO STREAM FULL: its PEL and its consumers with theirs, at most `count` each.
fn full_group(name: bytes::Bytes, group: &GroupState, lag: Option<u64>, count: usize) -> Reply {
    let pending = group
        .pending
        .iter()
        .take(count)
        .map(|(id, p)| {
            Reply::Array(vec![
                Reply::Id(*id),
                Reply::Bulk(p.consumer.clone()),
                Reply::Integer(p.delivery_time_ms),
                Reply::Integer(p.delivery_count as i64),
            ])
        })
        .collect();
    let consumers = group
        .consumers
        .iter()
        .map(|(consumer, state)| {
            let own: Vec<Reply> = group
                .pending
                .iter()
                .filter(|(_, p)| p.consumer == consumer)
                .take(count)
                .map(|(id, p)| {
                    Reply::Array(vec![
                        Reply::Id(*id),
                        Reply::Integer(p.delivery_time_ms),
                        Reply::Integer(p.delivery_count as i64),
                    ])
                })
                .collect();
            Reply::Map(vec![
                (Reply::bulk("name"), Reply::Bulk(consumer.clone())),
                (Reply::bulk("seen-time"), Reply::Integer(state.seen_time_ms)),
                (
                    Reply::bulk("pel-count"),
                    Reply::Integer(group.pending_of(consumer) as i64),
                ),
                (Reply::bulk("pending"), Reply::Array(own)),
            ])
        })
        .collect();
    Reply::Map(vec![
        (Reply::bulk("name"), Reply::Bulk(name)),
        (
            Reply::bulk("last-delivered-id"),
            Reply::Id(group.last_delivered),
        ),
        (
            Reply::bulk("entries-read"),
            group
                .entries_read
                .map_or(Reply::Nil, |n| Reply::Integer(n as i64)),
        ),
        (
            Reply::bulk("lag"),
            lag.map_or(Reply::Nil, |n| Reply::Integer(n as i64)),
        ),
        (
            Reply::bulk("pel-count"),
            Reply::Integer(group.pending.len() as i64),
        ),
        (Reply::bulk("pending"), Reply::Array(pending)),
        (Reply::bulk("consumers"), Reply::Array(consumers)),
    ])
}

fn groups(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let key = required(args, "groups")?;
    args.finish()?;
    let stream = existing_stream(context, &key).ok_or_else(|| Reply::error("ERR no such key"))?;
    Ok(Reply::Array(
        stream
            .groups_info()
            .into_iter()
            .map(|g| {
                Reply::Map(vec![
                    (Reply::bulk("name"), Reply::Bulk(g.name)),
                    (Reply::bulk("consumers"), Reply::Integer(g.consumers as i64)),
                    (Reply::bulk("pending"), Reply::Integer(g.pending as i64)),
                    (
                        Reply::bulk("last-delivered-id"),
                        Reply::Id(g.last_delivered),
                    ),
                    (
                        Reply::bulk("entries-read"),
                        g.entries_read
                            .map_or(Reply::Nil, |n| Reply::Integer(n as i64)),
                    ),
                    (
                        Reply::bulk("lag"),
                        g.lag.map_or(Reply::Nil, |n| Reply::Integer(n as i64)),
                    ),
                ])
            })
            .collect(),
    ))
}

fn consumers(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let (key, group) = (required(args, "consumers")?, required(args, "consumers")?);
    args.finish()?;
    let stream = existing_stream(context, &key).ok_or_else(|| Reply::error("ERR no such key"))?;
    let consumers = stream.consumers_info(&group).map_err(|_| {
        Reply::error(format!(
            "NOGROUP No such consumer group '{}' for key name '{}'",
            String::from_utf8_lossy(&group),
            String::from_utf8_lossy(&key)
        ))
    })?;
    Ok(Reply::Array(
        consumers
            .into_iter()
            .map(|c| {
                Reply::Map(vec![
                    (Reply::bulk("name"), Reply::Bulk(c.name)),
                    (Reply::bulk("pending"), Reply::Integer(c.pending as i64)),
                    (Reply::bulk("idle"), Reply::Integer(c.idle_ms as i64)),
                ])
            })
            .collect(),
    ))
}
