//! `XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT count]] *|ms-*|id field value
//! [field value ...]`

use bytes::Bytes;

use super::xtrim::TrimParser;
use super::{Context, Reply};
use crate::broker::{IdSpec, StreamError, StreamId};
use crate::protocol::resp::args::Args;
use crate::storage::Durability;

pub const INVALID_STREAM_ID: &str = "ERR Invalid stream ID specified as stream command argument";

/// `*`, `ms-*`, `ms-seq` or `ms` (meaning `ms-0`).
fn parse_id_spec(arg: &[u8]) -> Result<IdSpec, Reply> {
    if arg == b"*" {
        return Ok(IdSpec::Auto);
    }
    if let Some(ms) = arg.strip_suffix(b"-*") {
        let id = StreamId::parse(ms, 0).filter(|_| !ms.contains(&b'-'));
        return id
            .map(|id| IdSpec::AutoSequence(id.ms))
            .ok_or_else(|| Reply::error(INVALID_STREAM_ID));
    }
    StreamId::parse(arg, 0)
        .map(IdSpec::Explicit)
        .ok_or_else(|| Reply::error(INVALID_STREAM_ID))
}

/// Parse a list of stream IDs (`ms-seq` or `ms`), all of them before anything is done.
pub fn parse_ids(args: Vec<Bytes>) -> Result<Vec<StreamId>, Reply> {
    args.iter()
        .map(|id| StreamId::parse(id, 0).ok_or_else(|| Reply::error(INVALID_STREAM_ID)))
        .collect()
}

pub fn stream_error(e: StreamError) -> Reply {
    Reply::error(format!("ERR {e}"))
}

pub fn xadd(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let key = args.required()?;
    let mut make_stream = true;
    let mut trim = TrimParser::default();
    loop {
        if args.eat("NOMKSTREAM") {
            make_stream = false;
        } else if !trim.parse_one(args)? {
            break;
        }
    }
    let trim = trim.finish()?;
    let spec = parse_id_spec(&args.required()?)?;
    let values = args.remaining();
    if values == 0 || !values.is_multiple_of(2) {
        return Err(Reply::wrong_arity("xadd"));
    }
    // Checked before the stream is created, so a bad request changes nothing.
    if spec == IdSpec::Explicit(StreamId::MIN) {
        return Err(stream_error(StreamError::IdZero));
    }
    let mut fields: Vec<(Bytes, Bytes)> = Vec::with_capacity(values / 2);
    while let (Some(field), Some(value)) = (args.optional(), args.optional()) {
        fields.push((field, value));
    }
    let (found, generation) = context.take_stream(&key);
    let stream = match found {
        Some(stream) => stream,
        None if !make_stream => return Ok(Reply::Nil),
        None => context
            .broker
            .stream_or_create(&key)
            .map_err(|e| Reply::error(format!("ERR {e}")))?,
    };
    let added = stream.add(spec, fields).map_err(stream_error)?;
    if let Some(trim) = trim {
        stream
            .trim(trim.strategy, trim.approximate, trim.limit)
            .map_err(stream_error)?;
    }
    // Under `always` the reply waits for the fsync (shared by the pipeline); under `interval`
    // and `never` the policy is to acknowledge once written.
    if stream.log().config().durability == Durability::Always {
        context
            .pending
            .add(stream.log(), added.next_offset, context.reply_index);
    }
    context.keep_stream(key, stream, generation);
    Ok(Reply::Id(added.id))
}
