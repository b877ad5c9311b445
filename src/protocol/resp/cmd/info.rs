//! `INFO [section ...]`: server, clients, persistence, stats, keyspace, in Redis's text form.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::connection::REDIS_COMPATIBLE_VERSION;
use super::{Context, Reply};
use crate::protocol::resp::args::Args;
use crate::protocol::resp::shared::RespShared;

const SECTIONS: [&str; 5] = ["server", "clients", "persistence", "stats", "keyspace"];

fn section(shared: &RespShared, name: &str, out: &mut String) {
    let uptime = shared.started.elapsed().as_secs();
    match name {
        "server" => {
            let _ = write!(
                out,
                "# Server\r\nredis_version:{REDIS_COMPATIBLE_VERSION}\r\npotok_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\nexecutable:potok\r\n",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::process::id(),
                shared.facts.resp_addr.port(),
                uptime / 86_400,
            );
        }
        "clients" => {
            let clients = shared.clients();
            let blocked = clients.values().filter(|c| c.blocked).count();
            let _ = write!(
                out,
                "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:{blocked}\r\n",
                clients.len(),
                shared.settings().clients_max,
            );
        }
        "persistence" => {
            let _ = write!(
                out,
                "# Persistence\r\nloading:0\r\naof_enabled:1\r\npotok_fsync:{}\r\nrdb_changes_since_last_save:0\r\n",
                shared.facts.durability
            );
        }
        "stats" => {
            let _ = write!(
                out,
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\n",
                shared.stats.connections_received.load(Ordering::Relaxed),
                shared.stats.commands_processed.load(Ordering::Relaxed),
                shared.stats.rejected_connections.load(Ordering::Relaxed),
            );
        }
        "keyspace" => {
            let keys = shared.broker.len();
            out.push_str("# Keyspace\r\n");
            if keys > 0 {
                let _ = write!(out, "db0:keys={keys},expires=0,avg_ttl=0\r\n");
            }
        }
        _ => {}
    }
}

pub fn info(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let wanted: Vec<String> = args
        .rest()
        .iter()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| w == "all" || w == "everything" || w == "default");
    let mut out = String::new();
    for name in SECTIONS
        .iter()
        .filter(|s| all || wanted.iter().any(|w| w == *s))
    {
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        section(context.shared, name, &mut out);
    }
    Ok(Reply::bulk(out))
}
