//! Helpers shared by the integration tests: storage fixtures here, server processes in
//! `server`.
#![allow(dead_code)]

pub mod raw_amqp;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use potok::storage::io::{FaultVfs, Vfs};
use potok::storage::{Durability, Log, LogConfig, Record};

pub const LOG_DIR: &str = "/data/log";

pub fn log_dir() -> PathBuf {
    PathBuf::from(LOG_DIR)
}

/// A small-segment configuration so tests roll often.
pub fn small_config(durability: Durability) -> LogConfig {
    LogConfig {
        segment_bytes_max: 4096,
        index_interval_bytes: 256,
        durability,
        ..LogConfig::default()
    }
}

/// A deterministic record with key, headers and a body whose size varies with `n`.
pub fn record(n: u64) -> Record {
    let body: Vec<u8> = (0..(n * 37 % 300))
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(n as u8))
        .collect();
    let mut r = Record::new(1_700_000_000_000 + (n as i64 * 7919) % 100_000, body);
    if !n.is_multiple_of(3) {
        r = r.with_key(format!("key-{n}"));
    }
    for h in 0..(n % 4) {
        r = r.with_header(format!("h{h}"), format!("v{n}"));
    }
    r
}

pub fn open_fault(vfs: &FaultVfs, config: LogConfig) -> potok::storage::Result<Log> {
    Log::open_with(Arc::new(vfs.clone()) as Arc<dyn Vfs>, log_dir(), config)
}

/// Every visible record with its offset, from the start.
pub fn read_all(log: &Log) -> potok::storage::Result<Vec<(u64, Record)>> {
    log.iter(0).collect()
}

/// The segment files of a log directory on a Vfs, sorted.
pub fn segment_paths(vfs: &dyn Vfs, dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<String> = vfs
        .list_dir(dir)
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names.into_iter().map(|n| dir.join(n)).collect()
}
