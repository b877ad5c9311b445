//! Keyspace commands over every entity the broker keeps: DEL/UNLINK, EXISTS, TYPE, DBSIZE,
//! KEYS, FLUSHALL/FLUSHDB.

use super::{Context, Reply};
use crate::broker::catalog::EntityKind;
use crate::protocol::glob::glob_match;
use crate::protocol::resp::args::Args;

fn storage_error(e: impl std::fmt::Display) -> Reply {
    Reply::error(format!("ERR {e}"))
}

/// `DEL key [key ...]` (and `UNLINK`): deletes and frees disk space.
pub fn del(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let mut deleted = 0;
    for key in args.rest() {
        let (existed, commit) = context.broker.delete(&key).map_err(storage_error)?;
        context.pending.add(commit, context.reply_index);
        deleted += i64::from(existed);
    }
    Ok(Reply::Integer(deleted))
}

/// `EXISTS key [key ...]`: a key named twice counts twice, as in Redis.
pub fn exists(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let found = args
        .rest()
        .iter()
        .filter(|k| context.broker.kind_of(k).is_some())
        .count();
    Ok(Reply::Integer(found as i64))
}

/// `TYPE key`
pub fn type_of(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    Ok(Reply::Status(
        match context.broker.kind_of(&args.required()?) {
            Some(EntityKind::Stream) => "stream",
            Some(EntityKind::Topic | EntityKind::Queue) | None => "none",
        },
    ))
}

/// `DBSIZE`
pub fn dbsize(_: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    Ok(Reply::Integer(context.broker.len() as i64))
}

/// `KEYS pattern`
pub fn keys(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let pattern = args.required()?;
    let names = context
        .broker
        .names()
        .into_iter()
        .filter(|(n, _)| glob_match(&pattern, n));
    Ok(Reply::Array(names.map(|(n, _)| Reply::Bulk(n)).collect()))
}

/// `FLUSHALL [ASYNC|SYNC]` (and `FLUSHDB`): delete everything.
pub fn flushall(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let _ = args.eat("ASYNC") || args.eat("SYNC");
    args.finish()?;
    let commit = context.broker.delete_all().map_err(storage_error)?;
    context.pending.add(commit, context.reply_index);
    Ok(Reply::ok())
}

/// `RENAME key newkey`: the entity keeps its data and directory; only its name changes.
pub fn rename(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let (from, to) = (args.required()?, args.required()?);
    let (existed, commit) = context.broker.rename(&from, &to).map_err(storage_error)?;
    context.pending.add(commit, context.reply_index);
    match existed {
        true => Ok(Reply::ok()),
        false => Err(Reply::error("ERR no such key")),
    }
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`: the cursor is a position in the
/// sorted key list, so a full scan returns every key present throughout it.
pub fn scan(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    // Redis reads the cursor as an unsigned long, so `-1` wraps to a cursor past every key.
    let text = args.required()?;
    let cursor: usize = std::str::from_utf8(&text)
        .ok()
        .and_then(|c| {
            c.parse::<u64>()
                .ok()
                .or_else(|| c.parse::<i64>().ok().map(|n| n as u64))
        })
        .map(|c| usize::try_from(c).unwrap_or(usize::MAX))
        .ok_or_else(|| Reply::error("ERR invalid cursor"))?;
    let (mut pattern, mut count, mut kind) = (None, 10usize, None);
    while args.remaining() > 0 {
        if args.eat("MATCH") {
            pattern = Some(args.optional().ok_or_else(Reply::syntax_error)?);
        } else if args.eat("COUNT") {
            let n = crate::protocol::resp::args::parse_i64(
                &args.optional().ok_or_else(Reply::syntax_error)?,
            )?;
            if n < 1 {
                return Err(Reply::syntax_error());
            }
            count = n as usize;
        } else if args.eat("TYPE") {
            kind = Some(
                args.optional()
                    .ok_or_else(Reply::syntax_error)?
                    .to_ascii_lowercase(),
            );
        } else {
            return Err(Reply::syntax_error());
        }
    }
    let names = context.broker.names();
    let end = cursor.saturating_add(count).min(names.len());
    let page = names.get(cursor.min(end)..end).unwrap_or_default();
    let keys = page
        .iter()
        .filter(|(n, _)| pattern.as_ref().is_none_or(|p| glob_match(p, n)))
        .filter(|(_, k)| {
            kind.as_ref()
                .is_none_or(|t| t.as_slice() == kind_name(*k).as_bytes())
        })
        .map(|(n, _)| Reply::Bulk(n.clone()))
        .collect();
    let next = if end >= names.len() { 0 } else { end };
    Ok(Reply::Array(vec![
        Reply::bulk(next.to_string()),
        Reply::Array(keys),
    ]))
}

fn kind_name(kind: EntityKind) -> &'static str {
    match kind {
        EntityKind::Stream => "stream",
        EntityKind::Topic | EntityKind::Queue => "none",
    }
}
