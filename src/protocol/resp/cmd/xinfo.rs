//! `XINFO STREAM key` and `XINFO HELP` (GROUPS and CONSUMERS arrive with consumer groups).

use super::xadd::stream_error;
use super::xrange::entry_reply;
use super::{existing_stream, Context, Reply};
use crate::protocol::resp::args::Args;

pub fn xinfo(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let sub = args.required()?;
    match sub.to_ascii_uppercase().as_slice() {
        b"STREAM" => stream(args, context),
        b"HELP" => Ok(Reply::Array(
            [
                "XINFO <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "STREAM <key>",
                "    Show information about the stream.",
                "HELP",
                "    Print this help.",
            ]
            .into_iter()
            .map(Reply::Status)
            .collect(),
        )),
        _ => Err(Reply::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try XINFO HELP.",
            String::from_utf8_lossy(&sub)
        ))),
    }
}

fn stream(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let key = args.required()?;
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
    let entry = |e: Option<_>| e.map_or(Reply::Nil, entry_reply);
    Ok(Reply::Map(vec![
        (Reply::bulk("length"), Reply::Integer(info.length as i64)),
        // Potok has no radix tree; its segments play that part.
        (Reply::bulk("radix-tree-keys"), Reply::Integer(segments)),
        (Reply::bulk("radix-tree-nodes"), Reply::Integer(segments)),
        (
            Reply::bulk("last-generated-id"),
            Reply::bulk(info.last_id.to_string()),
        ),
        (
            Reply::bulk("max-deleted-entry-id"),
            Reply::bulk(info.max_deleted.to_string()),
        ),
        (
            Reply::bulk("entries-added"),
            Reply::Integer(info.entries_added as i64),
        ),
        (
            Reply::bulk("recorded-first-entry-id"),
            Reply::bulk(first_id),
        ),
        (Reply::bulk("groups"), Reply::Integer(0)),
        (Reply::bulk("first-entry"), entry(info.first_entry)),
        (Reply::bulk("last-entry"), entry(info.last_entry)),
    ]))
}
