//! `CONFIG GET pattern [pattern ...]`, `CONFIG SET parameter value [parameter value ...]`,
//! `CONFIG RESETSTAT`, `CONFIG HELP`, for the settings that exist. Settable: `requirepass`,
//! `maxclients`, `client-output-buffer-limit` (Redis's form and units) and
//! `maxmemory-clients` (bytes with Redis's units; Redis's percent of maxmemory does not apply:
//! Potok has no maxmemory). A CONFIG SET applies all its values or none.

use super::{Context, Reply};
use crate::broker::Durability;
use crate::protocol::glob::glob_match;
use crate::protocol::resp::args::Args;
use crate::protocol::resp::output::parse_memory;
use crate::protocol::resp::shared::RespShared;

/// Every parameter CONFIG GET knows, with its current value. Redis names are used where a Potok
/// setting means the same thing.
fn parameters(shared: &RespShared) -> Vec<(&'static str, String)> {
    let settings = shared.settings();
    let facts = &shared.facts;
    let appendfsync = match facts.durability {
        Durability::Always => "always",
        Durability::Interval(_) => "everysec",
        Durability::Never => "no",
    };
    vec![
        ("appendfsync", appendfsync.to_string()),
        ("appendonly", "yes".to_string()),
        ("bind", facts.resp_addr.ip().to_string()),
        (
            "client-output-buffer-limit",
            settings.output_limits.to_config(),
        ),
        (
            "client-query-buffer-limit",
            facts.limits.request_bytes_max.to_string(),
        ),
        ("databases", "1".to_string()),
        ("dir", facts.data_dir.display().to_string()),
        ("maxclients", settings.clients_max.to_string()),
        ("maxmemory-clients", shared.output_budget.max().to_string()),
        ("port", facts.resp_addr.port().to_string()),
        ("potok-fsync", facts.durability.to_string()),
        (
            "proto-max-bulk-len",
            facts.limits.bulk_bytes_max.to_string(),
        ),
        ("requirepass", settings.password.unwrap_or_default()),
        ("save", String::new()),
    ]
}

/// CONFIG SET's refusal of a value, in Redis's words.
fn set_failed(name: &str, why: &str) -> Reply {
    Reply::error(format!(
        "ERR CONFIG SET failed (possibly related to argument '{name}') - {why}"
    ))
}

/// `maxclients`: an integer from 1 to 4294967295, as Redis takes it.
fn parse_maxclients(value: &[u8]) -> Result<usize, Reply> {
    let value: i64 = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| set_failed("maxclients", "argument couldn't be parsed into an integer"))?;
    if !(1..=i64::from(u32::MAX)).contains(&value) {
        return Err(set_failed(
            "maxclients",
            "argument must be between 1 and 4294967295 inclusive",
        ));
    }
    Ok(value as usize)
}

pub fn config(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let typed = args.required()?;
    let sub = typed.to_ascii_uppercase();
    match sub.as_slice() {
        b"GET" => {
            let patterns = args.rest();
            if patterns.is_empty() {
                return Err(Reply::error(
                    "ERR wrong number of arguments for 'config|get' command",
                ));
            }
            let found = parameters(context.shared)
                .into_iter()
                .filter(|(name, _)| {
                    patterns
                        .iter()
                        .any(|p| glob_match(&p.to_ascii_lowercase(), name.as_bytes()))
                })
                .map(|(name, value)| (Reply::bulk(name), Reply::bulk(value)))
                .collect();
            Ok(Reply::Map(found))
        }
        b"SET" => {
            let pairs = args.rest();
            if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
                return Err(Reply::error(
                    "ERR wrong number of arguments for 'config|set' command",
                ));
            }
            let mut settings = context.shared.settings();
            let mut clients_output_max = None;
            for pair in pairs.chunks_exact(2) {
                let name = String::from_utf8_lossy(&pair[0]).to_ascii_lowercase();
                match name.as_str() {
                    "client-output-buffer-limit" => {
                        settings.output_limits = settings
                            .output_limits
                            .with_config(&pair[1])
                            .map_err(|why| set_failed(&name, why))?;
                    }
                    "maxmemory-clients" => {
                        clients_output_max =
                            Some(parse_memory(&pair[1]).ok_or_else(|| {
                                set_failed(&name, "argument must be a memory value")
                            })?);
                    }
                    "requirepass" => {
                        settings.password = (!pair[1].is_empty())
                            .then(|| String::from_utf8_lossy(&pair[1]).into_owned());
                    }
                    "maxclients" => settings.clients_max = parse_maxclients(&pair[1])?,
                    _ => {
                        return Err(Reply::error(format!(
                            "ERR Unknown option or number of arguments for CONFIG SET - '{name}'"
                        )))
                    }
                }
            }
            *context
                .shared
                .settings
                .write()
                .unwrap_or_else(|e| e.into_inner()) = settings;
            if let Some(max) = clients_output_max {
                context.shared.output_budget.set_max(max);
                context.shared.evict_over_budget();
            }
            Ok(Reply::ok())
        }
        b"RESETSTAT" => Ok(Reply::ok()),
        b"HELP" => Ok(Reply::Array(
            [
                "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GET <pattern>",
                "SET <directive> <value>",
                "RESETSTAT",
                "HELP",
            ]
            .into_iter()
            .map(Reply::Status)
            .collect(),
        )),
        _ => Err(Reply::error(format!(
            "ERR unknown subcommand '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(&typed)
        ))),
    }
}
