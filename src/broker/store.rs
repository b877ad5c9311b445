//! What every durable entity of a data directory shares: the write-ahead log (every change
//! goes through it), the budget of open descriptors, and the metadata store that checkpoints
//! write snapshots into.
//!
//! Operations in the write-ahead log carry a *domain* byte before their body, saying whose
//! encoding follows: the catalog's, a stream's metadata, a queue's state, or the AMQP
//! definitions.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};

use super::catalog::Catalog;
use crate::storage::io::Vfs;
use crate::storage::wal::{Committed, WalEntry, WalTxn};
use crate::storage::{self, Commit, Durability, EntityLog, LogShared, MetaStore, Wal};

/// Whose encoding an operation's body is in.
pub mod domain {
    /// [`super::super::catalog::CatalogOp`]: owner = the entity.
    pub const CATALOG: u8 = 1;
    /// [`super::super::stream_meta::MetaOp`]: owner = the stream.
    pub const STREAM: u8 = 2;
    /// A queue's acknowledgement state: owner = the queue.
    pub const QUEUE: u8 = 3;
    /// AMQP exchanges and bindings: owner = 0.
    pub const AMQP: u8 = 4;
}

/// An entity deleted in memory whose files go once its deletion is durable.
pub struct Doomed {
    pub commit: Commit,
    pub dir: PathBuf,
    pub log: Option<EntityLog>,
}

/// The shared durable machinery of one data directory.
pub struct Store {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    wal: Wal,
    logs: Arc<LogShared>,
    meta: MetaStore,
    /// Every named entity of every kind. A leaf lock: nothing else is locked while it is held.
    catalog: Mutex<Catalog>,
    doomed: Mutex<Vec<Doomed>>,
}

/// `domain | body`, as an operation's bytes in the write-ahead log.
pub fn op_bytes(domain: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + body.len());
    out.put_u8(domain);
    out.put_slice(body);
    out.freeze()
}

/// Split an operation into its domain and body.
pub fn split_op(op: &Bytes) -> Option<(u8, Bytes)> {
    let (&domain, _) = op.split_first()?;
    Some((domain, op.slice(1..)))
}

/// Replay what the write-ahead log holds for one entity since the checkpoint, in order:
/// appends go to `log` (the files may hold them already), and operations of `domain` newer
/// than `lsn` (the entity's snapshot) go to `apply`; an operation of another domain is logged
/// and skipped. Returns the LSN of the last operation applied (or `lsn`).
pub fn replay_entity(
    log: &EntityLog,
    replay: Vec<(u64, WalEntry)>,
    domain: u8,
    mut lsn: u64,
    mut apply: impl FnMut(&Bytes),
) -> storage::Result<u64> {
    for (entry_lsn, entry) in replay {
        match entry {
            WalEntry::Append { batch, .. } => {
                log.replay_batch(batch)?;
            }
            WalEntry::Op { op, .. } if entry_lsn > lsn => {
                match split_op(&op).filter(|(d, _)| *d == domain) {
                    Some((_, body)) => apply(&body),
                    None => {
                        tracing::error!(log = log.id(), "skipping an operation of another kind")
                    }
                }
                lsn = entry_lsn;
            }
            WalEntry::Op { .. } => {}
        }
    }
    Ok(lsn)
}

impl Store {
    pub fn new(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        wal: Wal,
        logs: Arc<LogShared>,
        meta: MetaStore,
        catalog: Catalog,
    ) -> Store {
        Store {
            vfs,
            dir: dir.to_path_buf(),
            wal,
            logs,
            meta,
            catalog: Mutex::new(catalog),
            doomed: Mutex::new(Vec::new()),
        }
    }

    pub fn catalog(&self) -> MutexGuard<'_, Catalog> {
        super::lock(&self.catalog)
    }

    /// Remove `dir` (and forget `log`) once `commit`, the entity's deletion, is durable.
    pub fn doom(&self, commit: Commit, dir: PathBuf, log: Option<EntityLog>) {
        if let Some(log) = &log {
            log.mark_deleted();
        }
        super::lock(&self.doomed).push(Doomed { commit, dir, log });
    }

    /// Take the deletions whose commits are durable (at or below `durable_lsn`).
    pub fn take_doomed(&self, durable_lsn: u64) -> Vec<Doomed> {
        let mut doomed = super::lock(&self.doomed);
        let (due, keep) = std::mem::take(&mut *doomed)
            .into_iter()
            .partition(|d| d.commit.lsn() <= durable_lsn);
        *doomed = keep;
        due
    }

    pub fn vfs(&self) -> &Arc<dyn Vfs> {
        &self.vfs
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// What the entity logs share (descriptor budget, tail memory).
    pub fn logs(&self) -> &Arc<LogShared> {
        &self.logs
    }

    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    pub fn durability(&self) -> Durability {
        self.wal.durability()
    }

    /// Commit a transaction through the write-ahead log.
    pub fn commit(&self, txn: WalTxn) -> storage::Result<Committed> {
        self.wal.commit(txn)
    }

    /// Commit one operation of `domain` on `owner`.
    pub fn commit_op(&self, owner: u64, domain: u8, body: &[u8]) -> storage::Result<Commit> {
        let mut txn = WalTxn::new();
        txn.op(owner, op_bytes(domain, body));
        Ok(self.wal.commit(txn)?.commit)
    }
}
