//! The metadata store: an append-only key/value log for the broker's state snapshots (the
//! catalog, stream metadata, queue acknowledgement state, AMQP definitions).
//!
//! It is a [`Log`] (`<data>/meta/`) whose records each set one key: the record's key is the
//! item's key, its body the value; a record with the header `deleted` removes the key. The
//! newest record for a key wins. Checkpoints write the items that changed since the last one
//! (so a change costs what it changed, not the size of the whole catalog), and the checkpoint's
//! `syncfs` makes them durable. Once the store has doubled since it was last compacted,
//! [`MetaStore::compact`] rewrites the live items and drops the older segments (so the
//! rewrite costs no more than the writes that made it necessary).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::config::{Durability, LogConfig};
use super::error::Result;
use super::io::Vfs;
use super::log::Log;
use super::record::Record;

/// The store's directory inside the data directory.
pub const META_DIR: &str = "meta";
/// Header marking a deletion.
const DELETED: &[u8] = b"deleted";
/// Bytes of records per append (each append is one batch).
const APPEND_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Compaction is not worth it below this.
const COMPACT_BYTES_MIN: u64 = 4 * 1024 * 1024;

/// See the module documentation.
pub struct MetaStore {
    log: Log,
    /// Bytes held right after the last compaction (or open).
    compacted_bytes: AtomicU64,
}

/// One change: set `key` to the value, or delete it (`None`).
pub type MetaItem = (Bytes, Option<Bytes>);

impl MetaStore {
    /// Open (or create) `<data_dir>/meta`; returns the store and every live item.
    pub fn open(vfs: Arc<dyn Vfs>, data_dir: &Path) -> Result<(MetaStore, HashMap<Bytes, Bytes>)> {
        let config = LogConfig {
            segment_bytes_max: 16 * 1024 * 1024,
            batch_bytes_max: u64::from(super::batch::BATCH_BYTES_MAX),
            // Durable through checkpoints (`syncfs`) and compaction's own fsync.
            durability: Durability::Never,
            ..LogConfig::default()
        };
        let log = Log::open_with(vfs, data_dir.join(META_DIR), config)?;
        let items = live_items(&log)?;
        let compacted_bytes = AtomicU64::new(log.size_bytes());
        Ok((
            MetaStore {
                log,
                compacted_bytes,
            },
            items,
        ))
    }

    /// Append changes, in order (not durable until a checkpoint syncs).
    pub fn write(&self, changes: impl IntoIterator<Item = MetaItem>) -> Result<()> {
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        for (key, value) in changes {
            bytes += (key.len() + value.as_ref().map_or(0, Bytes::len)) as u64 + 64;
            batch.push(item_record(key, value));
            if bytes >= APPEND_BYTES_MAX {
                self.log.append(&std::mem::take(&mut batch))?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.log.append(&batch)?;
        }
        Ok(())
    }

    /// Bytes the store holds on disk.
    pub fn size_bytes(&self) -> u64 {
        self.log.size_bytes()
    }

    /// Whether the store has at least doubled since it was last compacted.
    pub fn wants_compaction(&self) -> bool {
        let size = self.size_bytes();
        size >= COMPACT_BYTES_MIN
            && size
                > self
                    .compacted_bytes
                    .load(Ordering::Relaxed)
                    .saturating_mul(2)
    }

    /// Rewrite every live item into fresh segments, make them durable, then drop every older
    /// segment. A crash part-way leaves the old records and some new ones, which load to the
    /// same items. Callers do not write meanwhile (checkpoints run one at a time).
    pub fn compact(&self) -> Result<()> {
        let live = live_items(&self.log)?;
        self.log.roll()?;
        let from = self.log.next_offset();
        self.write(live.into_iter().map(|(key, value)| (key, Some(value))))?;
        self.log.wait_until_durable(self.log.next_offset())?;
        self.log.truncate_before(from)?;
        self.compacted_bytes
            .store(self.log.size_bytes(), Ordering::Relaxed);
        Ok(())
    }

    pub fn close(&self) -> Result<()> {
        self.log.close()
    }
}

/// Every live item: the newest record of each key, unless it is a deletion.
fn live_items(log: &Log) -> Result<HashMap<Bytes, Bytes>> {
    // About one item per 64 bytes of log: most of the growth happens once, not in rehashes.
    let mut items = HashMap::with_capacity((log.size_bytes() / 64).min(1 << 24) as usize);
    for entry in log.iter(0) {
        let (_, record) = entry?;
        let Some(key) = record.key else { continue };
        if record.headers.iter().any(|(name, _)| name == DELETED) {
            items.remove(&key);
        } else {
            items.insert(key, record.body);
        }
    }
    Ok(items)
}

fn item_record(key: Bytes, value: Option<Bytes>) -> Record {
    let timestamp_ms = super::recovery::now_ms();
    match value {
        Some(body) => Record {
            timestamp_ms,
            key: Some(key),
            headers: Vec::new(),
            body,
        },
        None => Record {
            timestamp_ms,
            key: Some(key),
            headers: vec![(Bytes::from_static(DELETED), Bytes::new())],
            body: Bytes::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::io::{CrashMode, FaultVfs};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn newest_wins_deletes_remove_and_compaction_keeps_the_items() {
        let vfs = FaultVfs::new(1);
        let dir = Path::new("/data");
        let (store, items) = MetaStore::open(Arc::new(vfs.clone()), dir).unwrap();
        assert!(items.is_empty());
        store
            .write([
                (b("a"), Some(b("1"))),
                (b("b"), Some(b("2"))),
                (b("a"), Some(b("3"))),
                (b("c"), Some(b("4"))),
            ])
            .unwrap();
        store.write([(b("c"), None)]).unwrap();
        vfs.sync_all(dir).unwrap();
        drop(store);
        vfs.crash(CrashMode::DropUnsynced);
        let (store, items) = MetaStore::open(Arc::new(vfs.clone()), dir).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[&b("a")], b("3"));
        assert_eq!(items[&b("b")], b("2"));
        // Many rewrites of one key, then a compaction: only the live items remain.
        for i in 0..2000 {
            store
                .write([(b("a"), Some(Bytes::from(vec![i as u8; 4000])))])
                .unwrap();
        }
        store
            .write([(b("a"), Some(Bytes::from(vec![7u8; 4000])))])
            .unwrap();
        let before = store.size_bytes();
        assert!(store.wants_compaction());
        store.compact().unwrap();
        assert!(store.size_bytes() < before / 10, "old segments dropped");
        assert!(!store.wants_compaction());
        drop(store);
        // The compaction synced its own output before dropping the old segments.
        vfs.crash(CrashMode::DropUnsynced);
        let (_, items) = MetaStore::open(Arc::new(vfs.clone()), dir).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[&b("a")], Bytes::from(vec![7u8; 4000]));
    }
}
