//! A topic (Pub/Sub channel): a log of published messages, so a subscriber that was away can
//! replay what it missed. Each record: key = none, body = the message, timestamp = publish time.
//! Live subscribers are fed by the front end right after each append, under the topic's publish
//! lock, so "subscribe, then replay up to the offset noted when subscribing" has no gap.
//!
//! Appends go through the write-ahead log like every other entity's and are visible at once:
//! live subscribers get a message before it is durable; the publisher's reply waits for its
//! commit, so the history a reply reported survives a crash. Retention (by default 64
//! MiB or 24 hours) drops old segments, and the broker deletes a topic whose newest message has
//! passed the age limit.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::store::Store;
use crate::storage::wal::{WalEntry, WalTxn};
use crate::storage::{self, Commit, EntityLog, LogConfig, Record, Visibility};

/// One stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMessage {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub payload: Bytes,
}

/// What [`Topic::read`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicRead {
    /// The messages, oldest first.
    pub messages: Vec<TopicMessage>,
    /// The read stopped because the next message would have passed its byte budget.
    pub stopped_at_bytes: bool,
}

pub struct Topic {
    log: EntityLog,
    store: Arc<Store>,
    /// Held across append + live fan-out, and while a subscriber notes where live begins.
    publish_lock: Mutex<()>,
    used: AtomicBool,
}

/// Bytes read per step when replaying.
const READ_BYTES: u64 = 256 * 1024;

impl Topic {
    /// Open topic `id` from its directory and what the write-ahead log holds for it since the
    /// checkpoint.
    pub fn open(
        store: Arc<Store>,
        id: u64,
        dir: &Path,
        config: LogConfig,
        replay: Vec<(u64, WalEntry)>,
    ) -> storage::Result<Topic> {
        let log = EntityLog::open(
            Arc::clone(store.logs()),
            id,
            dir,
            config,
            Visibility::Immediate,
        )?;
        for (_, entry) in replay {
            if let WalEntry::Append { batch, .. } = entry {
                log.replay_batch(batch)?;
            }
        }
        Ok(Topic {
            log,
            store,
            publish_lock: Mutex::new(()),
            used: AtomicBool::new(true),
        })
    }

    pub fn log(&self) -> &EntityLog {
        &self.log
    }

    /// Take the publish lock: appends (and their fan-out) wait while it is held.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.publish_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append a message (the caller holds [`Topic::lock`] and fans out after); returns its
    /// offset and the commit that stores it.
    pub fn append(&self, payload: Bytes) -> storage::Result<(u64, Commit)> {
        let record = Record::new(crate::storage::recovery::now_ms(), payload);
        let mut txn = WalTxn::new();
        txn.append(&self.log, vec![record]);
        let committed = self.store.commit(txn)?;
        Ok((committed.appends[0].base_offset, committed.commit))
    }

    /// One past the newest message.
    pub fn next_offset(&self) -> u64 {
        self.log.next_offset()
    }

    pub fn start_offset(&self) -> u64 {
        self.log.start_offset()
    }

    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> storage::Result<u64> {
        Ok(self
            .log
            .offset_for_timestamp(timestamp_ms)?
            .unwrap_or_else(|| self.log.visible_next_offset()))
    }

    /// Messages with offsets in `[from, until)`, at most `count`, and no more payload than
    /// `bytes_max` (16 bytes counted per message besides its payload): the read stops before
    /// the message that would pass it (see [`TopicRead::stopped_at_bytes`]). Each message is
    /// sized before it is copied.
    pub fn read(
        &self,
        from: u64,
        until: u64,
        count: usize,
        bytes_max: u64,
    ) -> storage::Result<TopicRead> {
        let mut read = TopicRead::default();
        let mut bytes = 0u64;
        let mut offset = from;
        while offset < until && read.messages.len() < count {
            let result = self.log.read(offset, READ_BYTES)?;
            let Some(next) = result.next_offset() else {
                break;
            };
            for record in result.records().take_while(|r| r.offset < until) {
                if read.messages.len() == count {
                    return Ok(read);
                }
                bytes += record.body.len() as u64 + 16;
                if bytes > bytes_max {
                    read.stopped_at_bytes = true;
                    return Ok(read);
                }
                read.messages.push(TopicMessage {
                    offset: record.offset,
                    timestamp_ms: record.timestamp_ms,
                    payload: Bytes::copy_from_slice(record.body),
                });
            }
            offset = next;
        }
        Ok(read)
    }

    /// The publish time of the newest message, if any is stored.
    pub fn newest_timestamp_ms(&self) -> storage::Result<Option<i64>> {
        let end = self.log.visible_next_offset();
        if end == 0 || end <= self.log.start_offset() {
            return Ok(None);
        }
        let result = self.log.read(end - 1, 1)?;
        Ok(result.records().last().map(|r| r.timestamp_ms))
    }

    /// See [`super::stream::Stream::mark_used`].
    pub fn mark_used(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the topic was used since the last [`Topic::take_used`].
    pub fn is_used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    pub fn take_used(&self) -> bool {
        self.used.swap(false, Ordering::Relaxed)
    }

    pub fn close(&self) {
        self.log.release_files();
    }
}
