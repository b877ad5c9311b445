//! `CLIENT ID | SETNAME | GETNAME | SETINFO | LIST | KILL | REPLY | INFO | HELP`

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;

use super::{Context, ReplyMode};
use crate::protocol::resp::args::{parse_i64, Args};
use crate::protocol::resp::reply::Reply;
use crate::protocol::resp::shared::{ClientEntry, RespShared};

/// Names may not contain spaces, newlines or special characters (they appear in CLIENT LIST).
pub fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

fn text(bytes: &Option<Bytes>) -> String {
    bytes
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// One CLIENT LIST line, with the fields Redis prints (those Potok does not track are zero;
/// `omem` and `tot-mem` are the output held for the client, as its output limits count it).
fn describe(shared: &RespShared, id: u64, c: &ClientEntry, now: Instant) -> String {
    format!(
        "id={id} addr={} laddr={} fd=0 name={} age={} idle={} flags={} db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem={} tot-mem={} events=r cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}\n",
        c.addr,
        c.local_addr,
        text(&c.name),
                now.duration_since(c.created).as_secs(),
        (shared.started.elapsed().as_millis() as u64).saturating_sub(c.activity.last_active_ms.load(Ordering::Relaxed)) / 1000,
        if c.blocked { "b" } else { "N" },
        c.output.held(),
        c.output.held(),
        usize::try_from(c.activity.last_command.load(Ordering::Relaxed)).ok().and_then(|i| super::COMMANDS.get(i)).map_or("NULL", |spec| spec.name),
        c.activity.protocol.load(Ordering::Relaxed),
        text(&c.lib_name),
        text(&c.lib_ver),
    )
}

pub fn client(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let typed = args.required()?;
    let sub = typed.to_ascii_uppercase();
    let id = context.session.id;
    let shared = context.shared;
    match sub.as_slice() {
        b"ID" => Ok(Reply::Integer(id as i64)),
        b"GETNAME" => Ok(context.session.name.clone().map_or(Reply::Nil, Reply::Bulk)),
        b"SETNAME" => {
            let name = args.required()?;
            if !valid_name(&name) {
                return Err(Reply::error(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            let name = (!name.is_empty()).then_some(name);
            context.session.name = name.clone();
            if let Some(entry) = shared.clients().get_mut(&id) {
                entry.name = name;
            }
            Ok(Reply::ok())
        }
        b"SETINFO" => {
            let (attribute, value) = (args.required()?.to_ascii_uppercase(), args.required()?);
            let mut clients = shared.clients();
            let entry = clients.get_mut(&id);
            match (attribute.as_slice(), entry) {
                (b"LIB-NAME", Some(e)) => e.lib_name = Some(value),
                (b"LIB-VER", Some(e)) => e.lib_ver = Some(value),
                (b"LIB-NAME" | b"LIB-VER", None) => {}
                _ => {
                    return Err(Reply::error(format!(
                        "ERR Unrecognized option '{}'",
                        String::from_utf8_lossy(&attribute)
                    )))
                }
            }
            Ok(Reply::ok())
        }
        b"LIST" | b"INFO" => {
            let now = Instant::now();
            let clients = shared.clients();
            let lines: String = clients
                .iter()
                .filter(|(client_id, _)| sub == b"LIST" || **client_id == id)
                .map(|(client_id, c)| describe(shared, *client_id, c, now))
                .collect();
            Ok(Reply::bulk(lines))
        }
        b"KILL" => kill(args, context),
        b"REPLY" => {
            let mode = args.required()?.to_ascii_uppercase();
            context.session.reply_mode = match mode.as_slice() {
                b"ON" => ReplyMode::On,
                b"OFF" => ReplyMode::Off,
                b"SKIP" => ReplyMode::Skip,
                _ => return Err(Reply::syntax_error()),
            };
            Ok(Reply::ok())
        }
        b"HELP" => Ok(Reply::Array(
            [
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "ID",
                "GETNAME",
                "SETNAME <name>",
                "SETINFO <LIB-NAME|LIB-VER> <value>",
                "LIST",
                "INFO",
                "KILL <ip:port> | KILL <ID id|ADDR ip:port|LADDR ip:port|SKIPME yes|no> ...",
                "REPLY <ON|OFF|SKIP>",
                "HELP",
            ]
            .into_iter()
            .map(Reply::Status)
            .collect(),
        )),
        _ => Err(Reply::error(format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(&typed)
        ))),
    }
}

/// `CLIENT KILL ip:port` (old form: OK or an error) or `CLIENT KILL <filter value> ...`
/// (new form: how many were killed).
fn kill(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let first = args.required()?;
    let me = context.session.id;
    if args.remaining() == 0 {
        let addr = String::from_utf8_lossy(&first).into_owned();
        let killed = context
            .shared
            .kill_clients(|_, c| c.addr.to_string() == addr);
        return if killed > 0 {
            Ok(Reply::ok())
        } else {
            Err(Reply::error("ERR No such client"))
        };
    }
    let (mut id, mut addr, mut laddr, mut skip_me) = (None, None, None, true);
    let mut filter = Some(first);
    while let Some(name) = filter.take().or_else(|| args.optional()) {
        let value = args.optional().ok_or_else(Reply::syntax_error)?;
        match name.to_ascii_uppercase().as_slice() {
            b"ID" => {
                id = Some(
                    parse_i64(&value)
                        .map_err(|_| Reply::error("ERR client-id should be greater than 0"))?
                        as u64,
                )
            }
            b"ADDR" => addr = Some(String::from_utf8_lossy(&value).into_owned()),
            b"LADDR" => laddr = Some(String::from_utf8_lossy(&value).into_owned()),
            b"SKIPME" => skip_me = !value.eq_ignore_ascii_case(b"no"),
            _ => return Err(Reply::syntax_error()),
        }
    }
    let killed = context.shared.kill_clients(|client_id, c| {
        !(skip_me && client_id == me)
            && id.is_none_or(|i| i == client_id)
            && addr.as_ref().is_none_or(|a| *a == c.addr.to_string())
            && laddr
                .as_ref()
                .is_none_or(|a| *a == c.local_addr.to_string())
    });
    Ok(Reply::Integer(killed as i64))
}
