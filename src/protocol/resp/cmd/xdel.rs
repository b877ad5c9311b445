//! `XDEL key id [id ...]` and `XSETID key last-id [ENTRIESADDED entries-added]
//! [MAXDELETEDID max-deleted-id]`.

use super::xadd::{parse_ids, stream_error, INVALID_STREAM_ID};
use super::{existing_stream, Context, Reply};
use crate::broker::StreamId;
use crate::protocol::resp::args::{parse_i64, Args};

pub fn xdel(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let key = args.required()?;
    // Every ID is checked before anything is deleted.
    let ids = parse_ids(args.rest())?;
    let Some(stream) = existing_stream(context, &key) else {
        return Ok(Reply::Integer(0));
    };
    let (deleted, commit) = stream.delete(&ids).map_err(stream_error)?;
    context.pending.add(commit, context.reply_index);
    Ok(Reply::Integer(deleted as i64))
}

pub fn xsetid(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let key = args.required()?;
    let last_id =
        StreamId::parse(&args.required()?, 0).ok_or_else(|| Reply::error(INVALID_STREAM_ID))?;
    let (mut entries_added, mut max_deleted) = (None, None);
    while args.remaining() > 0 {
        if args.eat("ENTRIESADDED") {
            let n = parse_i64(&args.optional().ok_or_else(Reply::syntax_error)?)?;
            if n < 0 {
                return Err(Reply::error("ERR entries_added must be positive"));
            }
            entries_added = Some(n as u64);
        } else if args.eat("MAXDELETEDID") {
            let id = args.optional().ok_or_else(Reply::syntax_error)?;
            max_deleted =
                Some(StreamId::parse(&id, 0).ok_or_else(|| Reply::error(INVALID_STREAM_ID))?);
        } else {
            return Err(Reply::syntax_error());
        }
    }
    let Some(stream) = existing_stream(context, &key) else {
        return Err(Reply::error("ERR no such key"));
    };
    let commit = stream
        .set_id(last_id, entries_added, max_deleted)
        .map_err(stream_error)?;
    context.pending.add(commit, context.reply_index);
    Ok(Reply::ok())
}
