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
        if context.broker.delete(&key).map_err(storage_error)? {
            deleted += 1;
        }
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
            None => "none",
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
    context.broker.delete_all().map_err(storage_error)?;
    Ok(Reply::ok())
}
