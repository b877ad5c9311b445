//! `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name...`, `COMMAND DOCS [name...]`, `COMMAND LIST`:
//! enough for redis-cli and client libraries, generated from the dispatch table.

use super::{lookup, CommandSpec, Context, Reply, COMMANDS};
use crate::protocol::resp::args::Args;

fn info(spec: &CommandSpec) -> Reply {
    // [name, arity, flags, first key, last key, key step, ACL categories, tips, key specs,
    //  subcommands], as Redis 7 replies.
    let has_key = !matches!(
        spec.name,
        "command"
            | "dbsize"
            | "echo"
            | "flushall"
            | "flushdb"
            | "hello"
            | "keys"
            | "ping"
            | "quit"
            | "select"
    );
    let (first, last) = match spec.name {
        _ if !has_key => (0, 0),
        "del" | "exists" | "unlink" => (1, -1),
        _ => (1, 1),
    };
    Reply::Array(vec![
        Reply::bulk(spec.name),
        Reply::Integer(i64::from(spec.arity)),
        Reply::Array(Vec::new()),
        Reply::Integer(first),
        Reply::Integer(last),
        Reply::Integer(i64::from(has_key)),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

pub fn command(args: &mut Args, _: &mut Context<'_>) -> Result<Reply, Reply> {
    let Some(sub) = args.optional() else {
        return Ok(Reply::Array(COMMANDS.iter().map(info).collect()));
    };
    match sub.to_ascii_lowercase().as_slice() {
        b"count" => {
            args.finish()?;
            Ok(Reply::Integer(COMMANDS.len() as i64))
        }
        b"list" => Ok(Reply::Array(
            COMMANDS.iter().map(|c| Reply::bulk(c.name)).collect(),
        )),
        b"info" => Ok(Reply::Array(
            args.rest()
                .iter()
                .map(|n| lookup(n).map_or(Reply::Nil, info))
                .collect(),
        )),
        // Documentation is optional for clients; an empty map means "no docs".
        b"docs" => Ok(Reply::Map(Vec::new())),
        _ => Err(Reply::error(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&sub)
        ))),
    }
}
