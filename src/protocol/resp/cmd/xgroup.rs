//! `XGROUP CREATE key group id|$ [MKSTREAM] [ENTRIESREAD n]`, `XGROUP SETID key group id|$
//! [ENTRIESREAD n]`, `XGROUP DESTROY key group`, `XGROUP CREATECONSUMER key group consumer`,
//! `XGROUP DELCONSUMER key group consumer`, `XGROUP HELP`.

use bytes::Bytes;

use super::xadd::{stream_error, INVALID_STREAM_ID};
use super::{existing_stream, Context, Reply};
use crate::broker::{GroupStart, StreamError, StreamId};
use crate::protocol::resp::args::{parse_i64, Args};

const KEY_REQUIRED: &str = "ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically.";

fn no_group(key: &[u8], group: &[u8]) -> Reply {
    Reply::error(format!(
        "NOGROUP No such consumer group '{}' for key name '{}'",
        String::from_utf8_lossy(group),
        String::from_utf8_lossy(key)
    ))
}

fn group_error(e: StreamError, key: &[u8], group: &[u8]) -> Reply {
    match e {
        StreamError::NoGroup => no_group(key, group),
        StreamError::BusyGroup => Reply::error("BUSYGROUP Consumer Group name already exists"),
        other => stream_error(other),
    }
}

fn parse_start(arg: &[u8]) -> Result<GroupStart, Reply> {
    match arg {
        b"$" => Ok(GroupStart::Last),
        id => StreamId::parse(id, 0)
            .map(GroupStart::Id)
            .ok_or_else(|| Reply::error(INVALID_STREAM_ID)),
    }
}

/// `[MKSTREAM] [ENTRIESREAD n]` (MKSTREAM only for CREATE).
fn parse_options(args: &mut Args, allow_mkstream: bool) -> Result<(bool, Option<u64>), Reply> {
    let (mut mkstream, mut entries_read) = (false, None);
    while args.remaining() > 0 {
        if allow_mkstream && args.eat("MKSTREAM") {
            mkstream = true;
        } else if args.eat("ENTRIESREAD") {
            let n = parse_i64(&args.optional().ok_or_else(Reply::syntax_error)?)?;
            if n < -1 {
                return Err(Reply::error(
                    "ERR value for ENTRIESREAD must be positive or -1",
                ));
            }
            entries_read = u64::try_from(n).ok();
        } else {
            return Err(Reply::syntax_error());
        }
    }
    Ok((mkstream, entries_read))
}

const HELP: [&str; 17] = [
    "XGROUP <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CREATE <key> <groupname> <id|$> [option]",
    "    Create a new consumer group. Options are:",
    "    * MKSTREAM",
    "      Create the empty stream if it does not exist.",
    "    * ENTRIESREAD entries_read",
    "      Set the group's entries_read counter (internal use).",
    "CREATECONSUMER <key> <groupname> <consumer>",
    "    Create a new consumer in the specified group.",
    "DELCONSUMER <key> <groupname> <consumer>",
    "    Remove the specified consumer.",
    "DESTROY <key> <groupname>",
    "    Remove the specified group.",
    "SETID <key> <groupname> <id|$> [ENTRIESREAD entries_read]",
    "    Set the current group ID and entries_read counter.",
    "HELP",
    "    Print this help.",
];

pub fn xgroup(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let typed = args.required()?;
    let sub = typed.to_ascii_uppercase();
    if sub == b"HELP" {
        return Ok(Reply::Array(
            HELP.iter().map(|l| Reply::Status(l)).collect(),
        ));
    }
    let arity = match sub.as_slice() {
        b"CREATE" | b"SETID" => 3,
        b"DESTROY" => 2,
        b"CREATECONSUMER" | b"DELCONSUMER" => 3,
        _ => 0,
    };
    let name = String::from_utf8_lossy(&sub).to_lowercase();
    if arity == 0 {
        return Err(Reply::error(format!(
            "ERR unknown subcommand '{}'. Try XGROUP HELP.",
            String::from_utf8_lossy(&typed)
        )));
    }
    if args.remaining() < arity {
        return Err(Reply::error(format!(
            "ERR wrong number of arguments for 'xgroup|{name}' command"
        )));
    }
    let (key, group) = (args.required()?, args.required()?);
    match sub.as_slice() {
        b"CREATE" => {
            let start = parse_start(&args.required()?)?;
            let (mkstream, entries_read) = parse_options(args, true)?;
            let stream = match existing_stream(context, &key) {
                Some(stream) => stream,
                None if mkstream => context
                    .broker
                    .stream_or_create(&key)
                    .map_err(|e| Reply::error(format!("ERR {e}")))?,
                None => return Err(Reply::error(KEY_REQUIRED)),
            };
            let commit = stream
                .create_group(&group, start, entries_read)
                .map_err(|e| group_error(e, &key, &group))?;
            context.pending.add(commit, context.reply_index);
            Ok(Reply::ok())
        }
        b"SETID" => {
            let start = parse_start(&args.required()?)?;
            let (_, entries_read) = parse_options(args, false)?;
            let stream =
                existing_stream(context, &key).ok_or_else(|| Reply::error(KEY_REQUIRED))?;
            let commit = stream
                .set_group_id(&group, start, entries_read)
                .map_err(|e| group_error(e, &key, &group))?;
            context.pending.add(commit, context.reply_index);
            Ok(Reply::ok())
        }
        b"DESTROY" => {
            args.finish()?;
            let stream =
                existing_stream(context, &key).ok_or_else(|| Reply::error(KEY_REQUIRED))?;
            let (existed, commit) = stream.destroy_group(&group).map_err(stream_error)?;
            context.pending.add(commit, context.reply_index);
            Ok(Reply::Integer(i64::from(existed)))
        }
        _ => {
            let consumer: Bytes = args.required()?;
            args.finish()?;
            let stream =
                existing_stream(context, &key).ok_or_else(|| Reply::error(KEY_REQUIRED))?;
            let result = if sub == b"CREATECONSUMER" {
                stream
                    .create_consumer(&group, &consumer)
                    .map(|(created, commit)| (i64::from(created), commit))
            } else {
                stream
                    .delete_consumer(&group, &consumer)
                    .map(|(pending, commit)| (pending as i64, commit))
            };
            let (count, commit) = result.map_err(|e| group_error(e, &key, &group))?;
            context.pending.add(commit, context.reply_index);
            Ok(Reply::Integer(count))
        }
    }
}
