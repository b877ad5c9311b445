//! Connection commands: PING, ECHO, SELECT, QUIT, RESET, HELLO.

use bytes::Bytes;

use super::auth::{credentials_valid, WRONGPASS};
use super::{Context, Reply, ReplyMode};
use crate::protocol::resp::args::{parse_i64, Args};
use crate::protocol::resp::reply::Protocol;

/// The Redis version Potok's command set is compatible with (clients use it to pick features).
pub const REDIS_COMPATIBLE_VERSION: &str = "7.0.15";

/// `PING [message]`
pub fn ping(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let message = args.optional();
    // In RESP2's subscribed context PING answers with a ["pong", message] array.
    let reply = match (context.session.in_subscribed_context(), message) {
        (true, message) => Reply::Array(vec![
            Reply::bulk("pong"),
            Reply::Bulk(message.unwrap_or_default()),
        ]),
        (false, None) => Reply::Status("PONG"),
        (false, Some(message)) => Reply::Bulk(message),
    };
    args.finish().map_err(|_| Reply::wrong_arity("ping"))?;
    Ok(reply)
}

/// `ECHO message`
pub fn echo(args: &mut Args, _: &mut Context<'_>) -> Result<Reply, Reply> {
    Ok(Reply::Bulk(args.required()?))
}

/// `SELECT index`: Potok has one database, 0.
pub fn select(args: &mut Args, _: &mut Context<'_>) -> Result<Reply, Reply> {
    match parse_i64(&args.required()?)? {
        0 => Ok(Reply::ok()),
        _ => Err(Reply::error("ERR DB index is out of range")),
    }
}

/// `QUIT`: reply OK, then close the connection.
pub fn quit(_: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    context.session.closing = true;
    Ok(Reply::ok())
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`
pub fn hello(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let mut protocol = context.session.protocol;
    if let Some(version) = args.optional() {
        protocol = match parse_i64(&version) {
            Ok(2) => Protocol::Resp2,
            Ok(3) => Protocol::Resp3,
            Ok(_) => return Err(Reply::error("NOPROTO unsupported protocol version")),
            Err(_) => {
                return Err(Reply::error(
                    "ERR Protocol version is not an integer or out of range",
                ))
            }
        };
    }
    let mut name: Option<Bytes> = None;
    let mut authenticated = context.session.authenticated;
    while let Some(option) = args.optional() {
        let remaining = args.remaining();
        if option.eq_ignore_ascii_case(b"AUTH") && remaining >= 2 {
            let (user, password) = (
                args.optional().unwrap_or_default(),
                args.optional().unwrap_or_default(),
            );
            if !credentials_valid(context.shared, Some(&user), &password) {
                return Err(Reply::error(WRONGPASS));
            }
            authenticated = true;
        } else if option.eq_ignore_ascii_case(b"SETNAME") && remaining >= 1 {
            let value = args.optional().unwrap_or_default();
            if !super::client::valid_name(&value) {
                return Err(Reply::error(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            name = Some(value);
        } else {
            return Err(Reply::error(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&option)
            )));
        }
    }
    if !authenticated {
        return Err(Reply::error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"));
    }
    context.session.authenticated = true;
    context.session.protocol = protocol;
    if name.is_some() {
        context.session.name = name;
    }
    let proto = if protocol == Protocol::Resp3 { 3 } else { 2 };
    Ok(Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("redis")),
        (
            Reply::bulk("version"),
            Reply::bulk(REDIS_COMPATIBLE_VERSION),
        ),
        (Reply::bulk("proto"), Reply::Integer(proto)),
        (Reply::bulk("id"), Reply::Integer(context.session.id as i64)),
        (Reply::bulk("mode"), Reply::bulk("standalone")),
        (Reply::bulk("role"), Reply::bulk("master")),
        (Reply::bulk("modules"), Reply::Array(Vec::new())),
    ]))
}

/// `RESET`: back to a fresh connection's state (protocol, name, transaction, reply mode, and
/// authentication when a password is required).
pub fn reset(_: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let session = &mut *context.session;
    session.protocol = Protocol::Resp2;
    session.name = None;
    session.multi = None;
    session.multi_failed = false;
    session.reply_mode = ReplyMode::On;
    session.authenticated = !context.shared.password_required();
    for channel in std::mem::take(&mut session.subscriptions).iter() {
        context.shared.pubsub.unsubscribe(channel, session.id);
    }
    for pattern in std::mem::take(&mut session.patterns).iter() {
        context.shared.pubsub.punsubscribe(pattern, session.id);
    }
    Ok(Reply::Status("RESET"))
}
