//! Command dispatch: one table of every command (name, arity, handler), used for execution and
//! for `COMMAND`. Handlers live one family per file and share the same shape:
//! `fn(&mut Args, &mut Context) -> Result<Reply, Reply>` (the error side is an error reply).
//!
//! Acknowledgements and durability: XADD appends without waiting and leaves a [`PendingAck`];
//! the connection settles all pending acks (one fsync wait per stream) before it writes the
//! replies, and before running any command that could observe the appended entries. So a
//! pipeline of XADDs shares group commit, and nothing is acknowledged before it is durable.

mod command;
mod connection;
mod keyspace;
mod xack;
mod xadd;
mod xclaim;
mod xdel;
mod xgroup;
mod xinfo;
mod xlen;
mod xpending;
mod xrange;
mod xread;
mod xtrim;

use std::sync::Arc;

use bytes::Bytes;

use super::args::Args;
use super::reply::{Protocol, Reply};
use crate::broker::{Broker, Stream};
use crate::storage::Log;

/// Per-connection state.
pub struct Session {
    pub id: u64,
    pub protocol: Protocol,
    pub name: Option<Bytes>,
    /// Set by QUIT: reply, then close.
    pub closing: bool,
}

impl Session {
    pub fn new(id: u64) -> Session {
        Session {
            id,
            protocol: Protocol::Resp2,
            name: None,
            closing: false,
        }
    }
}

/// A reply that must wait until a log is durable up to `next_offset` (an XADD's entry, an
/// XACK's journal record).
pub struct PendingAck {
    pub log: Log,
    pub next_offset: u64,
    pub reply_index: usize,
}

/// Re-runs a blocked read: `Ok(Some(reply))` once there is data.
pub type RetryRead = Box<dyn FnMut(&Broker) -> Result<Option<Reply>, Reply> + Send>;

/// A read that found nothing and waits (XREAD BLOCK): the connection registers for wake-ups on
/// `keys`, re-runs `retry` after each, and replies `timeout_reply` if `timeout` passes first.
pub struct Blocked {
    pub keys: Vec<Bytes>,
    /// `None`: wait forever (BLOCK 0).
    pub timeout: Option<std::time::Duration>,
    pub retry: RetryRead,
    pub timeout_reply: Reply,
}

/// What a handler can reach.
pub struct Context<'a> {
    pub broker: &'a Broker,
    pub session: &'a mut Session,
    /// Pending acks of this round; a handler that defers its ack pushes here.
    pub pending: &'a mut Vec<PendingAck>,
    /// Index its reply will have in the round.
    pub reply_index: usize,
    /// Set by a handler whose reply must wait for data; its returned reply is then ignored.
    pub blocked: &'a mut Option<Blocked>,
}

type Handler = fn(&mut Args, &mut Context<'_>) -> Result<Reply, Reply>;

pub struct CommandSpec {
    pub name: &'static str,
    /// Redis convention: N means exactly N arguments with the name, -N means at least N.
    pub arity: i32,
    /// True for commands whose reply may wait for durability (they must not be preceded by a
    /// settle, so pipelines of them share one fsync).
    pub defers_ack: bool,
    handler: Handler,
}

const fn spec(name: &'static str, arity: i32, handler: Handler) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        defers_ack: false,
        handler,
    }
}

pub static COMMANDS: &[CommandSpec] = &[
    spec("command", -1, command::command),
    spec("dbsize", 1, keyspace::dbsize),
    spec("del", -2, keyspace::del),
    spec("echo", 2, connection::echo),
    spec("exists", -2, keyspace::exists),
    spec("flushall", -1, keyspace::flushall),
    spec("flushdb", -1, keyspace::flushall),
    spec("hello", -1, connection::hello),
    spec("keys", 2, keyspace::keys),
    spec("ping", -1, connection::ping),
    spec("quit", -1, connection::quit),
    spec("select", 2, connection::select),
    spec("type", 2, keyspace::type_of),
    spec("unlink", -2, keyspace::del),
    CommandSpec {
        name: "xack",
        arity: -4,
        defers_ack: true,
        handler: xack::xack,
    },
    CommandSpec {
        name: "xadd",
        arity: -5,
        defers_ack: true,
        handler: xadd::xadd,
    },
    spec("xautoclaim", -6, xclaim::xautoclaim),
    spec("xclaim", -6, xclaim::xclaim),
    spec("xdel", -3, xdel::xdel),
    spec("xgroup", -2, xgroup::xgroup),
    spec("xinfo", -2, xinfo::xinfo),
    spec("xlen", 2, xlen::xlen),
    spec("xpending", -3, xpending::xpending),
    spec("xrange", -4, xrange::xrange),
    spec("xread", -4, xread::xread),
    spec("xreadgroup", -7, xread::xreadgroup),
    spec("xrevrange", -4, xrange::xrevrange),
    spec("xsetid", -3, xdel::xsetid),
    spec("xtrim", -4, xtrim::xtrim),
];

pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Redis's reply to an unknown command: the name and up to ~128 bytes of arguments, quoted.
fn unknown_command(args: &[Bytes]) -> Reply {
    let name = String::from_utf8_lossy(&args[0]);
    let mut text = format!(
        "ERR unknown command '{:.128}', with args beginning with: ",
        name
    );
    let mut listed = 0;
    for arg in &args[1..] {
        if listed >= 128 {
            break;
        }
        let arg = String::from_utf8_lossy(arg);
        let shown: String = arg.chars().take(128).collect();
        listed += shown.len();
        text.push_str(&format!("'{shown}' "));
    }
    Reply::Error(text)
}

/// Run one request. `pending`/`replies` are the connection's current round.
pub fn execute(
    broker: &Broker,
    session: &mut Session,
    args: Vec<Bytes>,
    pending: &mut Vec<PendingAck>,
    replies: &mut [Reply],
    blocked: &mut Option<Blocked>,
) -> Reply {
    let Some(spec) = lookup(&args[0]) else {
        return unknown_command(&args);
    };
    let count = args.len() as i32;
    if (spec.arity > 0 && count != spec.arity) || (spec.arity < 0 && count < -spec.arity) {
        return Reply::wrong_arity(spec.name);
    }
    if !spec.defers_ack {
        settle(pending, replies);
    }
    let reply_index = replies.len();
    let mut args = Args::new(spec.name.to_string(), args.into_iter().skip(1).collect());
    let mut context = Context {
        broker,
        session,
        pending,
        reply_index,
        blocked,
    };
    match (spec.handler)(&mut args, &mut context) {
        Ok(reply) | Err(reply) => reply,
    }
}

/// Wait until every pending reply's log is durable (one wait per log, for its highest offset).
/// A reply whose durability failed becomes an error instead.
pub fn settle(pending: &mut Vec<PendingAck>, replies: &mut [Reply]) {
    while let Some(first) = pending.first() {
        let log = first.log.clone();
        let (same, rest): (Vec<PendingAck>, Vec<PendingAck>) =
            pending.drain(..).partition(|p| p.log.same_log(&log));
        *pending = rest;
        let highest = same.iter().map(|p| p.next_offset).max().unwrap_or(0);
        if let Err(e) = log.wait_until_durable(highest) {
            tracing::error!(error = %e, "write not durable; failing its reply");
            for p in same {
                if let Some(reply) = replies.get_mut(p.reply_index) {
                    *reply = Reply::error(format!("ERR write failed, it may not be stored: {e}"));
                }
            }
        }
    }
}

/// The stream called `name`, if the key holds one (`None` if the key does not exist).
fn existing_stream(context: &Context<'_>, name: &[u8]) -> Option<Arc<Stream>> {
    context.broker.stream(name)
}
