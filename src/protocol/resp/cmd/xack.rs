//! `XACK key group id [id ...]`: the reply waits until the acknowledgement is durable, so an
//! acknowledged entry is never delivered again (pipelined XACKs share the fsync).

use super::xadd::{parse_ids, stream_error};
use super::{existing_stream, Context, Reply};
use crate::protocol::resp::args::Args;

pub fn xack(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let (key, group) = (args.required()?, args.required()?);
    let ids = parse_ids(args.rest())?;
    let Some(stream) = existing_stream(context, &key) else {
        return Ok(Reply::Integer(0));
    };
    let (acked, commit) = stream.ack(&group, &ids).map_err(stream_error)?;
    context.pending.add(commit, context.reply_index);
    Ok(Reply::Integer(acked as i64))
}
