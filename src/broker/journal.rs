//! A metadata journal: a small log of state changes, replayed on open, with snapshots.
//!
//! Each record's body is one encoded operation (the owner decides the encoding). To keep the
//! journal short, the owner appends a snapshot operation (its whole state) now and then; the
//! journal then drops whole segments before it. Replay applies every operation from the
//! journal's start: a snapshot replaces the state, so operations before it that survive in the
//! same segment are harmless.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::storage::io::Vfs;
use crate::storage::{self, Durability, Log, LogConfig, Record};

/// Journal segments are small so snapshots free space soon.
const JOURNAL_SEGMENT_BYTES: u64 = 1024 * 1024;
/// Operations after which the owner should write a snapshot.
pub const OPS_PER_SNAPSHOT: u64 = 4096;

pub struct Journal {
    log: Log,
    ops_since_snapshot: AtomicU64,
}

impl Journal {
    /// Open the journal in `dir`; returns it and every operation body to replay, in order.
    pub fn open(vfs: Arc<dyn Vfs>, dir: &Path) -> storage::Result<(Journal, Vec<Bytes>)> {
        let config = LogConfig {
            segment_bytes_max: JOURNAL_SEGMENT_BYTES,
            durability: Durability::Always,
            ..LogConfig::default()
        };
        let log = Log::open_with(vfs, dir, config)?;
        let ops: Vec<Bytes> = log
            .iter(0)
            .map(|r| r.map(|(_, record)| record.body))
            .collect::<storage::Result<_>>()?;
        let journal = Journal {
            log,
            ops_since_snapshot: AtomicU64::new(ops.len() as u64),
        };
        Ok((journal, ops))
    }

    /// Append one operation and wait until it is durable.
    pub fn append(&self, op: Vec<u8>) -> storage::Result<()> {
        self.log.append(&[Record::new(0, op)])?;
        self.ops_since_snapshot.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Append one operation without waiting for durability (group deliveries: a crash may
    /// then cause a redelivery, never a loss). Returns the offset to wait for, if wanted.
    pub fn append_without_waiting(&self, op: Vec<u8>) -> storage::Result<u64> {
        let info = self.log.append_without_waiting(&[Record::new(0, op)])?;
        self.ops_since_snapshot.fetch_add(1, Ordering::Relaxed);
        Ok(info.next_offset)
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Whether enough operations have accumulated that a snapshot is worth writing.
    pub fn wants_snapshot(&self) -> bool {
        self.ops_since_snapshot.load(Ordering::Relaxed) >= OPS_PER_SNAPSHOT
    }

    /// Append a snapshot (durably), then drop the segments wholly before it.
    pub fn snapshot(&self, state: Vec<u8>) -> storage::Result<()> {
        let info = self.log.append(&[Record::new(0, state)])?;
        self.ops_since_snapshot.store(0, Ordering::Relaxed);
        self.log.truncate_before(info.base_offset)?;
        Ok(())
    }

    pub fn close(&self) -> storage::Result<()> {
        self.log.close()
    }
}
