//! Command dispatch: one table of every command (name, arity, handler), used for execution and
//! for `COMMAND`. Handlers live one family per file and share the same shape:
//! `fn(&mut Args, &mut Context) -> Result<Reply, Reply>` (the error side is an error reply).
//!
//! [`execute`] applies what holds for every command, in Redis's order: unknown command, arity,
//! authentication, MULTI queueing. Then it runs the handler.
//!
//! Acknowledgements and durability: every command that changes durable state gets a
//! [`Commit`] from the broker and leaves it in [`PendingAcks`]; the connection waits for the
//! round's latest commit (one wait: the write-ahead log is durable in order) before it writes
//! the replies, and before running any command that could observe those writes. So a pipeline
//! shares group commit, and nothing is acknowledged before it is durable.

mod auth;
mod client;
mod command;
mod config;
mod connection;
mod info;
mod keyspace;
mod multi;
mod pubsub;
mod xack;
mod xadd;

pub use xadd::DeferredAdds;
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
use super::output::ClientClass;
use super::pubsub::{Subscribed, Subscriber};
use super::reply::{Protocol, Reply};
use super::shared::RespShared;
use crate::broker::{Broker, Commit, Stream, StreamError};

/// What CLIENT REPLY asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyMode {
    On,
    Off,
    /// Skip the next command's reply.
    Skip,
}

/// Per-connection state.
pub struct Session {
    pub id: u64,
    pub protocol: Protocol,
    pub name: Option<Bytes>,
    pub authenticated: bool,
    /// Commands queued since MULTI, and whether one of them was refused.
    pub multi: Option<Vec<Vec<Bytes>>>,
    pub multi_failed: bool,
    pub reply_mode: ReplyMode,
    /// Set by QUIT: reply, then close.
    pub closing: bool,
    pub subscriptions: Subscribed,
    pub patterns: Subscribed,
    /// How Pub/Sub reaches this connection.
    pub subscriber: Subscriber,
    /// Bytes of replies built earlier in this round (and inside EXEC, earlier in it), not yet
    /// written: a command building a large reply has that much less room (see
    /// [`Context::reply_budget`]).
    pub reply_bytes: u64,
    /// The stream this connection last appended to in the current round (see
    /// [`Context::take_stream`]).
    last_stream: Option<CachedStream>,
}

/// A stream handle with its key and its binding when it was looked up
/// ([`Broker::stream_bound`](crate::broker::Broker::stream_bound)).
struct CachedStream {
    key: Bytes,
    stream: Arc<Stream>,
    binding: u64,
}

impl CachedStream {
    /// Still what the key names: not deleted, renamed or evicted since the lookup.
    fn is_live(&self) -> bool {
        self.stream.binding() == self.binding
    }

    /// Still what `key` names.
    fn is_current(&self, key: &[u8]) -> bool {
        self.key == key && self.is_live()
    }
}

impl Session {
    pub fn new(id: u64, authenticated: bool, subscriber: Subscriber) -> Session {
        Session {
            id,
            protocol: Protocol::Resp2,
            name: None,
            authenticated,
            multi: None,
            multi_failed: false,
            reply_mode: ReplyMode::On,
            closing: false,
            subscriptions: Default::default(),
            patterns: Default::default(),
            subscriber,
            reply_bytes: 0,
            last_stream: None,
        }
    }

    /// Which output buffer limits apply: pubsub while subscribed to anything, as in Redis.
    pub fn output_class(&self) -> ClientClass {
        if self.subscriptions.is_empty() && self.patterns.is_empty() {
            ClientClass::Normal
        } else {
            ClientClass::Pubsub
        }
    }

    /// Drop the cached stream handle. Called after every round, so an idle connection never
    /// keeps a deleted stream's files (and their disk space) alive.
    pub fn forget_stream(&mut self) {
        self.last_stream = None;
    }

    /// RESP2's subscribed context: only subscription commands, PING, QUIT and RESET run.
    pub fn in_subscribed_context(&self) -> bool {
        self.protocol == Protocol::Resp2
            && !(self.subscriptions.is_empty() && self.patterns.is_empty())
    }
}

/// The replies of one round that must wait for a commit (an XADD's entry, an XACK, a group
/// change, a deletion): the latest commit, and which replies depend on it. The write-ahead log
/// is durable in order, so waiting for the latest covers them all.
#[derive(Default)]
pub struct PendingAcks {
    commit: Commit,
    /// Indexes of the replies in the round.
    replies: Vec<usize>,
}

impl PendingAcks {
    /// The reply at `reply_index` waits for `commit` (nothing to wait for is ignored).
    pub fn add(&mut self, commit: Commit, reply_index: usize) {
        if commit.is_none() {
            return;
        }
        self.commit = self.commit.max(commit);
        self.replies.push(reply_index);
    }

    pub fn is_empty(&self) -> bool {
        self.commit.is_none()
    }

    /// Wait, blocking the thread, until the commits are durable; a failure is left for
    /// [`PendingAcks::settle`] to report.
    pub fn wait_blocking(&self, broker: &Broker) {
        let _ = broker.wait(self.commit);
    }

    /// Wait until the commits are durable. Replies whose commit failed become errors instead.
    /// Leaves `self` empty.
    pub async fn settle(&mut self, broker: &Broker, replies: &mut [Reply]) {
        if let Err(e) = broker.wait_async(self.commit).await {
            tracing::error!(error = %e, "write not durable; failing its replies");
            for &reply_index in &self.replies {
                if let Some(reply) = replies.get_mut(reply_index) {
                    *reply = Reply::error(format!("ERR write failed, it may not be stored: {e}"));
                }
            }
        }
        self.commit = Commit::NONE;
        self.replies.clear();
    }
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
    pub shared: &'a RespShared,
    pub broker: &'a Broker,
    pub session: &'a mut Session,
    /// Pending acks of this round; a handler that defers its ack pushes here.
    pub pending: &'a mut PendingAcks,
    /// Index its reply will have in the round.
    pub reply_index: usize,
    /// Set by a handler whose reply must wait for data; its returned reply is then ignored.
    pub blocked: &'a mut Option<Blocked>,
    /// Where XADD may hold back its entry for one append with its neighbours; `None` where
    /// its reply must be final when it returns (inside EXEC).
    pub deferred: Option<&'a mut DeferredAdds>,
}

/// How large a reply a command may build now, in the bytes range reads count (see
/// [`crate::broker::Stream::range_within`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyBudget {
    pub bytes_max: u64,
    /// The client's own output limit is what binds: a reply past it closes the client, as
    /// Redis closes a client whose reply passes its hard limit. Otherwise (the per-reply cap,
    /// the server-wide budget) the command is refused with an error.
    pub closes_client: bool,
}

impl Context<'_> {
    /// The room a reply has: the smallest of the per-reply cap
    /// ([`RANGE_BYTES_MAX`](crate::broker::stream::RANGE_BYTES_MAX)), what the client's hard
    /// output limit leaves, and what `maxmemory-clients` leaves, each less what this round's
    /// replies already take. Known before the reply is built, so a refused one allocates
    /// nothing big.
    pub fn reply_budget(&self) -> ReplyBudget {
        let round = self.session.reply_bytes;
        let cap = crate::broker::stream::RANGE_BYTES_MAX.saturating_sub(round);
        let total = self.shared.output_budget.room().saturating_sub(round);
        let hard = self
            .shared
            .output_limits()
            .class(self.session.output_class())
            .hard_bytes;
        let own = match hard {
            0 => u64::MAX,
            hard => hard.saturating_sub(self.session.subscriber.output.held() + round),
        };
        ReplyBudget {
            bytes_max: cap.min(total).min(own),
            closes_client: own < cap.min(total),
        }
    }

    /// The reply to a failed read: [`StreamError::ReplyTooLarge`] as
    /// [`Context::reply_too_large`], anything else as its error text.
    pub fn read_error(&mut self, error: StreamError, budget: ReplyBudget) -> Reply {
        match error {
            StreamError::ReplyTooLarge(_) => self.reply_too_large(budget),
            other => xadd::stream_error(other),
        }
    }

    /// The reply to a read refused for its size: the client is closed if its own output
    /// limit refused it (the reply is never sent), else Redis-style error text.
    pub fn reply_too_large(&mut self, budget: ReplyBudget) -> Reply {
        if budget.closes_client {
            tracing::warn!(
                client = self.session.id,
                "closing client: its reply would pass its output buffer limit"
            );
            self.session.subscriber.output.kill();
        }
        Reply::error(format!(
            "ERR reply would exceed {} bytes; ask for fewer entries with COUNT",
            budget.bytes_max
        ))
    }
}

type Handler = fn(&mut Args, &mut Context<'_>) -> Result<Reply, Reply>;

pub struct CommandSpec {
    pub name: &'static str,
    /// Redis convention: N means exactly N arguments with the name, -N means at least N.
    pub arity: i32,
    /// True for commands whose reply may wait for durability (they must not be preceded by a
    /// settle, so pipelines of them share one fsync).
    pub defers_ack: bool,
    /// Whether it may wait for an fsync or do slow I/O (see [`may_block`]).
    blocks: Blocks,
    handler: Handler,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Blocks {
    Never,
    Always,
    /// XADD commits a trim durably when asked to trim.
    WhenTrimming,
}

const fn spec(name: &'static str, arity: i32, handler: Handler) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        defers_ack: false,
        blocks: Blocks::Never,
        handler,
    }
}

/// A command that commits durably inline, or does slow I/O.
const fn blocking(name: &'static str, arity: i32, handler: Handler) -> CommandSpec {
    CommandSpec {
        blocks: Blocks::Always,
        ..spec(name, arity, handler)
    }
}

const fn deferring(name: &'static str, arity: i32, handler: Handler) -> CommandSpec {
    CommandSpec {
        defers_ack: true,
        ..spec(name, arity, handler)
    }
}

pub static COMMANDS: &[CommandSpec] = &[
    spec("auth", -2, auth::auth),
    spec("client", -2, client::client),
    spec("command", -1, command::command),
    spec("config", -2, config::config),
    spec("dbsize", 1, keyspace::dbsize),
    blocking("del", -2, keyspace::del),
    spec("discard", 1, multi::discard),
    spec("echo", 2, connection::echo),
    blocking("exec", 1, multi::exec),
    spec("exists", -2, keyspace::exists),
    blocking("flushall", -1, keyspace::flushall),
    blocking("flushdb", -1, keyspace::flushall),
    spec("hello", -1, connection::hello),
    spec("info", -1, info::info),
    spec("keys", 2, keyspace::keys),
    spec("multi", 1, multi::multi),
    spec("ping", -1, connection::ping),
    spec("psubscribe", -2, pubsub::psubscribe),
    spec("publish", 3, pubsub::publish),
    spec("pubsub", -2, pubsub::pubsub),
    spec("punsubscribe", -1, pubsub::punsubscribe),
    spec("quit", -1, connection::quit),
    blocking("rename", 3, keyspace::rename),
    spec("reset", 1, connection::reset),
    spec("scan", -2, keyspace::scan),
    spec("select", 2, connection::select),
    spec("subscribe", -2, pubsub::subscribe),
    blocking("topic.delete", -2, pubsub::topic_delete),
    spec("topic.read", -3, pubsub::topic_read),
    spec("topic.subscribe", 3, pubsub::topic_subscribe),
    spec("type", 2, keyspace::type_of),
    blocking("unlink", -2, keyspace::del),
    spec("unsubscribe", -1, pubsub::unsubscribe),
    deferring("xack", -4, xack::xack),
    CommandSpec {
        blocks: Blocks::WhenTrimming,
        ..deferring("xadd", -5, xadd::xadd)
    },
    spec("xautoclaim", -6, xclaim::xautoclaim),
    spec("xclaim", -6, xclaim::xclaim),
    blocking("xdel", -3, xdel::xdel),
    blocking("xgroup", -2, xgroup::xgroup),
    spec("xinfo", -2, xinfo::xinfo),
    spec("xlen", 2, xlen::xlen),
    spec("xpending", -3, xpending::xpending),
    spec("xrange", -4, xrange::xrange),
    spec("xread", -4, xread::xread),
    spec("xreadgroup", -7, xread::xreadgroup),
    spec("xrevrange", -4, xrange::xrevrange),
    blocking("xsetid", -3, xdel::xsetid),
    blocking("xtrim", -4, xtrim::xtrim),
];

/// The command's position in [`COMMANDS`] (for compact bookkeeping), by address: `spec` is
/// always an element of the table, so no search is needed on this per-command path.
pub fn index_of(spec: &CommandSpec) -> usize {
    let base = COMMANDS.as_ptr() as usize;
    (spec as *const CommandSpec as usize - base) / std::mem::size_of::<CommandSpec>()
}

/// Find a command by name, case-insensitively (the table is sorted by name).
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    // No command name is longer than this; anything longer is unknown.
    const NAME_BYTES_MAX: usize = 16;
    if name.len() > NAME_BYTES_MAX {
        return None;
    }
    let mut lower = [0u8; NAME_BYTES_MAX];
    lower[..name.len()].copy_from_slice(name);
    lower[..name.len()].make_ascii_lowercase();
    let lower = &lower[..name.len()];
    COMMANDS
        .binary_search_by(|c| c.name.as_bytes().cmp(lower))
        .ok()
        .map(|i| &COMMANDS[i])
}

/// Whether a request must wait for pending acks first (it could observe their writes).
pub fn needs_settled_writes(spec: Option<&CommandSpec>) -> bool {
    spec.is_none_or(|spec| !spec.defers_ack)
}

/// Whether a request may wait for an fsync or do slow I/O (then it runs off the async worker).
/// Appends, acks and deliveries are buffered and cheap; what commits durably inline is not.
pub fn may_block(spec: Option<&CommandSpec>, args: &[Bytes]) -> bool {
    match spec.map_or(Blocks::Never, |spec| spec.blocks) {
        Blocks::Never => false,
        Blocks::Always => true,
        Blocks::WhenTrimming => args
            .iter()
            .any(|a| a.eq_ignore_ascii_case(b"MAXLEN") || a.eq_ignore_ascii_case(b"MINID")),
    }
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

/// Commands allowed before authentication, as in Redis.
fn allowed_unauthenticated(name: &str) -> bool {
    matches!(name, "auth" | "hello" | "quit" | "reset")
}

fn allowed_subscribed(name: &str) -> bool {
    matches!(
        name,
        "subscribe"
            | "psubscribe"
            | "unsubscribe"
            | "punsubscribe"
            | "ping"
            | "quit"
            | "reset"
            | "topic.subscribe"
    )
}

/// Commands that act on the transaction itself instead of being queued.
fn controls_transaction(name: &str) -> bool {
    matches!(name, "exec" | "discard" | "multi" | "quit" | "reset")
}

/// Where a request runs in its connection's round: what a handler may add to or set there.
pub struct Turn<'a> {
    /// Pending acks of this round; a handler that defers its ack pushes here.
    pub pending: &'a mut PendingAcks,
    /// Index the request's reply will have in the round.
    pub reply_index: usize,
    /// Set by a handler whose reply must wait for data; its returned reply is then ignored.
    pub blocked: &'a mut Option<Blocked>,
    /// Where XADD may hold back its entry for one append with its neighbours; `None` where
    /// its reply must be final when it returns (inside EXEC).
    pub deferred: Option<&'a mut DeferredAdds>,
}

/// Run one request at its turn in the connection's current round.
pub fn execute(
    shared: &RespShared,
    session: &mut Session,
    spec: Option<&'static CommandSpec>,
    args: Vec<Bytes>,
    turn: Turn<'_>,
) -> Reply {
    let checked = spec.ok_or_else(|| unknown_command(&args)).and_then(|spec| {
        let count = args.len() as i32;
        if (spec.arity > 0 && count != spec.arity) || (spec.arity < 0 && count < -spec.arity) {
            Err(Reply::wrong_arity(spec.name))
        } else {
            Ok(spec)
        }
    });
    let spec = match checked {
        Ok(spec) => spec,
        Err(reply) => {
            if session.multi.is_some() {
                session.multi_failed = true;
            }
            return reply;
        }
    };
    if !session.authenticated && !allowed_unauthenticated(spec.name) {
        return Reply::error("NOAUTH Authentication required.");
    }
    if session.in_subscribed_context() && !allowed_subscribed(spec.name) {
        return Reply::error(format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            spec.name
        ));
    }
    if let Some(queue) = session.multi.as_mut() {
        if !controls_transaction(spec.name) {
            queue.push(args);
            return Reply::Status("QUEUED");
        }
    }
    // EXEC takes the lock exclusively itself.
    let _shared_turn =
        (spec.name != "exec").then(|| shared.exec_lock.read().unwrap_or_else(|e| e.into_inner()));
    dispatch(spec, shared, session, args, turn)
}

/// Run a handler (arity and gates already checked).
fn dispatch(
    spec: &CommandSpec,
    shared: &RespShared,
    session: &mut Session,
    args: Vec<Bytes>,
    turn: Turn<'_>,
) -> Reply {
    let mut args = Args::new(spec.name, args);
    let Turn {
        pending,
        reply_index,
        blocked,
        deferred,
    } = turn;
    let mut context = Context {
        shared,
        broker: &shared.broker,
        session,
        pending,
        reply_index,
        blocked,
        deferred,
    };
    match (spec.handler)(&mut args, &mut context) {
        Ok(reply) | Err(reply) => reply,
    }
}

impl Context<'_> {
    /// The stream called `key` if it exists, with the binding to hand back to
    /// [`Context::keep_stream`]. A pipeline appending to one key takes it from the connection's
    /// cache: no catalog lock, no hashing, no reference count traffic shared with other cores.
    fn take_stream(&mut self, key: &[u8]) -> Option<(Arc<Stream>, u64)> {
        self.take_cached_stream(key)
            .or_else(|| self.broker.stream_bound(key))
    }

    /// The connection's cached handle, if it is for `key` and still current.
    fn take_cached_stream(&mut self, key: &[u8]) -> Option<(Arc<Stream>, u64)> {
        match self.session.last_stream.take() {
            Some(cached) if cached.is_current(key) => Some((cached.stream, cached.binding)),
            _ => None,
        }
    }

    /// Cache `stream`, with its binding as looked up, for the next command.
    fn keep_stream(&mut self, key: Bytes, stream: Arc<Stream>, binding: u64) {
        self.session.last_stream = Some(CachedStream {
            key,
            stream,
            binding,
        });
    }
}

/// The stream called `name`, if the key holds one (`None` if the key does not exist).
fn existing_stream(context: &Context<'_>, name: &[u8]) -> Option<Arc<Stream>> {
    context.broker.stream(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_lookup_ignores_case() {
        assert!(
            COMMANDS.windows(2).all(|w| w[0].name < w[1].name),
            "binary search needs a sorted table"
        );
        assert!(COMMANDS.iter().all(|c| c.name.len() <= 16));
        assert_eq!(lookup(b"XaDd").map(|c| c.name), Some("xadd"));
        assert_eq!(lookup(b"topic.READ").map(|c| c.name), Some("topic.read"));
        assert!(lookup(b"nosuch").is_none());
        assert!(lookup(&[b'x'; 100]).is_none());
        for (i, spec) in COMMANDS.iter().enumerate() {
            assert_eq!(index_of(spec), i);
        }
    }
}
