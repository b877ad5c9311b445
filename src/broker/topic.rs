//! A topic (Pub/Sub channel): a log of published messages, so a subscriber that was away can
//! replay what it missed. Each record: key = none, body = the message, timestamp = publish time.
//! Live subscribers are fed by the front end right after each append, under the topic's publish
//! lock, so "subscribe, then replay up to the offset noted when subscribing" has no gap.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::storage::io::Vfs;
use crate::storage::{self, Log, LogConfig, Record};

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
    log: Log,
    /// Held across append + live fan-out, and while a subscriber notes where live begins.
    publish_lock: Mutex<()>,
}

/// Bytes read per step when replaying.
const READ_BYTES: u64 = 256 * 1024;

impl Topic {
    pub fn open(vfs: Arc<dyn Vfs>, dir: &Path, config: LogConfig) -> storage::Result<Topic> {
        Ok(Topic {
            log: Log::open_with(vfs, dir, config)?,
            publish_lock: Mutex::new(()),
        })
    }

    /// Take the publish lock: appends (and their fan-out) wait while it is held.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.publish_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append a message (the caller holds [`Topic::lock`] and fans out after); returns its
    /// offset.
    pub fn append(&self, payload: Bytes) -> storage::Result<u64> {
        let record = Record::new(crate::storage::recovery::now_ms(), payload);
        Ok(self.log.append(std::slice::from_ref(&record))?.base_offset)
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

    pub fn close(&self) -> storage::Result<()> {
        self.log.close()
    }
}
