//! `MULTI`, `EXEC`, `DISCARD`. Queued commands run in order under the exclusive side of the
//! shared EXEC lock, so no other client's command runs in between. A blocking read inside a
//! transaction does not block (it answers as if its timeout passed), as in Redis.

use super::{dispatch, lookup, Context, Reply, Turn};
use crate::protocol::resp::args::Args;

pub fn multi(_: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    if context.session.multi.is_some() {
        return Err(Reply::error("ERR MULTI calls can not be nested"));
    }
    context.session.multi = Some(Vec::new());
    context.session.multi_failed = false;
    Ok(Reply::ok())
}

pub fn discard(_: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    if context.session.multi.take().is_none() {
        return Err(Reply::error("ERR DISCARD without MULTI"));
    }
    Ok(Reply::ok())
}

pub fn exec(_: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let Some(queued) = context.session.multi.take() else {
        return Err(Reply::error("ERR EXEC without MULTI"));
    };
    if std::mem::take(&mut context.session.multi_failed) {
        return Err(Reply::error(
            "EXECABORT Transaction discarded because of previous errors.",
        ));
    }
    let _exclusive = context
        .shared
        .exec_lock
        .write()
        .unwrap_or_else(|e| e.into_inner());
    let mut replies = Vec::with_capacity(queued.len());
    for args in queued {
        // Queued commands were checked when queued; the table still has them.
        let Some(spec) = lookup(&args[0]) else {
            continue;
        };
        // A queued read must see the queued writes before it, as in Redis: make them durable
        // (and so visible) first. EXEC runs off the async worker, so it may wait here; a
        // failure is reported when the connection settles the same acks.
        if !spec.defers_ack {
            context.pending.wait_blocking(context.broker);
        }
        let mut blocked = None;
        let turn = Turn {
            pending: context.pending,
            reply_index: context.reply_index,
            blocked: &mut blocked,
            // EXEC's reply carries every reply: none may be held back.
            deferred: None,
        };
        let reply = dispatch(spec, context.shared, context.session, args, turn);
        let reply = match blocked {
            Some(blocked) => blocked.timeout_reply,
            None => reply,
        };
        // The replies so far are part of the reply being built: later reads have less room.
        context.session.reply_bytes += reply.size_estimate();
        replies.push(reply);
        if context.session.subscriber.output.is_killed() {
            break;
        }
    }
    Ok(Reply::Array(replies))
}
