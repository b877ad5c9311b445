//! A stream (Redis Streams): a log whose records are entries with IDs.
//!
//! Each entry is one record: key = the 16-byte ID (see [`StreamId::to_key`]), headers = the
//! field/value pairs in order, timestamp = the ID's milliseconds, body empty. Offsets are dense and
//! IDs increase with them, so the log's time index finds an ID's neighbourhood and a short scan
//! finds the ID. The last generated ID is the ID of the last record, recovered from the log.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::stream_id::StreamId;
use super::waiters::Waiters;
use crate::storage::{self, Log, LogConfig, Record, RecordView};

/// How XADD chooses the new entry's ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdSpec {
    /// `*`: now in ms, or the last ID's ms with the next sequence if the clock is behind.
    Auto,
    /// `ms-*`: this ms, next sequence.
    AutoSequence(u64),
    /// An explicit `ms-seq`.
    Explicit(StreamId),
}

/// One stream entry as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: StreamId,
    pub fields: Vec<(Bytes, Bytes)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("The ID specified in XADD must be greater than 0-0")]
    IdZero,
    #[error("The ID specified in XADD is equal or smaller than the target stream top item")]
    IdTooSmall,
    #[error("The stream has exhausted the last possible ID, unable to add more items")]
    IdsExhausted,
    #[error(transparent)]
    Storage(#[from] storage::Error),
}

/// A stream entry appended but perhaps not yet durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Added {
    pub id: StreamId,
    /// Wait for durability of offsets below this before acknowledging.
    pub next_offset: u64,
}

struct StreamState {
    last_id: StreamId,
}

/// A stream. Cheap to share (`Arc`); appends are serialized so IDs follow offsets.
pub struct Stream {
    log: Log,
    state: Mutex<StreamState>,
    /// Readers blocked until new entries become visible.
    waiters: Arc<Waiters>,
}

/// Bytes read per step while scanning entries.
const SCAN_READ_BYTES: u64 = 256 * 1024;

impl Stream {
    pub fn open(
        vfs: Arc<dyn storage::io::Vfs>,
        dir: &Path,
        config: LogConfig,
    ) -> Result<Stream, StreamError> {
        let log = Log::open_with(vfs, dir, config)?;
        let last_id = match log.next_offset().checked_sub(1) {
            Some(last) if last >= log.start_offset() => {
                let result = log.read(last, 1)?;
                let record = result.records().last();
                record.and_then(|r| entry_id(&r)).unwrap_or_default()
            }
            _ => StreamId::MIN,
        };
        let waiters = Arc::new(Waiters::default());
        let wake = Arc::clone(&waiters);
        log.set_visibility_listener(Arc::new(move || wake.wake_all()));
        Ok(Stream {
            log,
            state: Mutex::new(StreamState { last_id }),
            waiters,
        })
    }

    /// Wake `notify` once when new entries become visible.
    pub fn register_waiter(&self, notify: &Arc<tokio::sync::Notify>) {
        self.waiters.register(notify);
    }

    /// Wake every blocked reader (the stream is being deleted).
    pub fn wake_waiters(&self) {
        self.waiters.wake_all();
    }

    fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn last_id(&self) -> StreamId {
        self.lock().last_id
    }

    /// Entries readers can see.
    pub fn len(&self) -> u64 {
        self.log.visible_next_offset() - self.log.start_offset()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append an entry without waiting for durability; pair with [`Stream::wait_durable`].
    pub fn add(&self, spec: IdSpec, fields: Vec<(Bytes, Bytes)>) -> Result<Added, StreamError> {
        let mut state = self.lock();
        let last = state.last_id;
        let id = match spec {
            IdSpec::Explicit(id) if id == StreamId::MIN => return Err(StreamError::IdZero),
            IdSpec::Explicit(id) if id <= last => return Err(StreamError::IdTooSmall),
            IdSpec::Explicit(id) => id,
            IdSpec::AutoSequence(ms) if ms < last.ms => return Err(StreamError::IdTooSmall),
            IdSpec::AutoSequence(ms) if ms == last.ms => {
                last.successor().ok_or(StreamError::IdTooSmall)?
            }
            IdSpec::AutoSequence(ms) => StreamId::new(ms, 0),
            IdSpec::Auto => {
                let now = u64::try_from(crate::storage::recovery::now_ms()).unwrap_or(0);
                if now > last.ms {
                    StreamId::new(now, 0)
                } else {
                    last.successor().ok_or(StreamError::IdsExhausted)?
                }
            }
        };
        let record = Record {
            timestamp_ms: id.timestamp_ms(),
            key: Some(Bytes::copy_from_slice(&id.to_key())),
            headers: fields,
            body: Bytes::new(),
        };
        let info = self
            .log
            .append_without_waiting(std::slice::from_ref(&record))?;
        state.last_id = id;
        Ok(Added {
            id,
            next_offset: info.next_offset,
        })
    }

    pub fn wait_durable(&self, next_offset: u64) -> Result<(), StreamError> {
        Ok(self.log.wait_until_durable(next_offset)?)
    }

    /// The offset of the first visible entry whose ID is at least `id` (the visible end if none).
    fn offset_of(&self, id: StreamId) -> Result<u64, StreamError> {
        let end = self.log.visible_next_offset();
        let Some(mut offset) = self.log.offset_for_timestamp(id.timestamp_ms())? else {
            return Ok(end);
        };
        loop {
            let result = self.log.read(offset, SCAN_READ_BYTES)?;
            for record in result.records() {
                if entry_id(&record).is_some_and(|found| found >= id) {
                    return Ok(record.offset);
                }
            }
            match result.next_offset() {
                Some(next) => offset = next,
                None => return Ok(end),
            }
        }
    }

    /// Entries with `start <= id <= end`, oldest first, at most `count`.
    pub fn range(
        &self,
        start: StreamId,
        end: StreamId,
        count: Option<usize>,
    ) -> Result<Vec<Entry>, StreamError> {
        let limit = count.unwrap_or(usize::MAX);
        let mut entries = Vec::new();
        if start > end || limit == 0 {
            return Ok(entries);
        }
        let mut offset = self.offset_of(start)?;
        while entries.len() < limit {
            let result = self.log.read(offset, SCAN_READ_BYTES)?;
            for record in result.records() {
                let Some(entry) = to_entry(&record) else {
                    continue;
                };
                if entry.id > end || entries.len() == limit {
                    return Ok(entries);
                }
                entries.push(entry);
            }
            match result.next_offset() {
                Some(next) => offset = next,
                None => break,
            }
        }
        Ok(entries)
    }

    /// Entries with `start <= id <= end`, newest first, at most `count`.
    pub fn rev_range(
        &self,
        end: StreamId,
        start: StreamId,
        count: Option<usize>,
    ) -> Result<Vec<Entry>, StreamError> {
        let limit = count.unwrap_or(usize::MAX);
        if start > end || limit == 0 {
            return Ok(Vec::new());
        }
        let high = match end.successor() {
            Some(after) => self.offset_of(after)?,
            None => self.log.visible_next_offset(),
        };
        let low = self.offset_of(start)?;
        // Offsets are dense and every record is an entry, so the newest `count` start here.
        let from = high.saturating_sub(limit as u64).max(low);
        let mut entries = Vec::new();
        let mut offset = from;
        while offset < high {
            let result = self.log.read(offset, SCAN_READ_BYTES)?;
            entries.extend(
                result
                    .records()
                    .filter(|r| r.offset < high)
                    .filter_map(|r| to_entry(&r)),
            );
            match result.next_offset() {
                Some(next) => offset = next,
                None => break,
            }
        }
        entries.reverse();
        Ok(entries)
    }

    pub fn close(&self) -> Result<(), StreamError> {
        Ok(self.log.close()?)
    }
}

fn entry_id(record: &RecordView<'_>) -> Option<StreamId> {
    record.key.and_then(StreamId::from_key)
}

fn to_entry(record: &RecordView<'_>) -> Option<Entry> {
    Some(Entry {
        id: entry_id(record)?,
        fields: record
            .headers()
            .map(|(f, v)| (Bytes::copy_from_slice(f), Bytes::copy_from_slice(v)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::io::FaultVfs;

    fn open(vfs: &FaultVfs) -> Stream {
        let config = LogConfig {
            segment_bytes_max: 2048,
            index_interval_bytes: 128,
            ..LogConfig::default()
        };
        Stream::open(Arc::new(vfs.clone()), Path::new("/s"), config).unwrap()
    }

    fn fields(n: u64) -> Vec<(Bytes, Bytes)> {
        vec![(Bytes::from("n"), Bytes::from(n.to_string()))]
    }

    #[test]
    fn ids_are_checked_and_generated_like_redis() {
        let stream = open(&FaultVfs::new(1));
        assert!(matches!(
            stream.add(IdSpec::Explicit(StreamId::MIN), fields(0)),
            Err(StreamError::IdZero)
        ));
        assert_eq!(
            stream
                .add(IdSpec::Explicit(StreamId::new(5, 5)), fields(1))
                .unwrap()
                .id,
            StreamId::new(5, 5)
        );
        assert!(matches!(
            stream.add(IdSpec::Explicit(StreamId::new(5, 5)), fields(2)),
            Err(StreamError::IdTooSmall)
        ));
        assert!(matches!(
            stream.add(IdSpec::AutoSequence(4), fields(2)),
            Err(StreamError::IdTooSmall)
        ));
        assert_eq!(
            stream.add(IdSpec::AutoSequence(5), fields(2)).unwrap().id,
            StreamId::new(5, 6)
        );
        assert_eq!(
            stream.add(IdSpec::AutoSequence(7), fields(3)).unwrap().id,
            StreamId::new(7, 0)
        );
        let auto = stream.add(IdSpec::Auto, fields(4)).unwrap();
        assert!(auto.id.ms > 1_600_000_000_000 && auto.id.seq == 0);
        // A clock behind the last ID continues its sequence.
        stream
            .add(IdSpec::Explicit(StreamId::new(u64::MAX - 1, 0)), fields(5))
            .unwrap();
        assert_eq!(
            stream.add(IdSpec::Auto, fields(6)).unwrap().id,
            StreamId::new(u64::MAX - 1, 1)
        );
        stream
            .add(IdSpec::Explicit(StreamId::MAX), fields(7))
            .unwrap();
        assert!(matches!(
            stream.add(IdSpec::Auto, fields(8)),
            Err(StreamError::IdsExhausted)
        ));
    }

    #[test]
    fn ranges_match_a_simple_filter_and_survive_reopen() {
        let vfs = FaultVfs::new(2);
        let stream = open(&vfs);
        let mut ids = Vec::new();
        for n in 0..300u64 {
            let added = stream
                .add(
                    IdSpec::Explicit(StreamId::new(1000 + n / 3, n % 3)),
                    fields(n),
                )
                .unwrap();
            stream.wait_durable(added.next_offset).unwrap();
            ids.push(added.id);
        }
        drop(stream);
        let stream = open(&vfs);
        assert_eq!(stream.last_id(), *ids.last().unwrap());
        assert_eq!(stream.len(), 300);
        let bounds = [
            StreamId::MIN,
            StreamId::new(1000, 1),
            StreamId::new(1010, 0),
            StreamId::new(1050, 2),
            StreamId::new(1099, u64::MAX),
            StreamId::MAX,
        ];
        for &start in &bounds {
            for &end in &bounds {
                for count in [None, Some(0), Some(1), Some(7)] {
                    let expected: Vec<StreamId> = ids
                        .iter()
                        .copied()
                        .filter(|id| *id >= start && *id <= end)
                        .collect();
                    let forward: Vec<StreamId> = stream
                        .range(start, end, count)
                        .unwrap()
                        .iter()
                        .map(|e| e.id)
                        .collect();
                    let n = count.unwrap_or(usize::MAX).min(expected.len());
                    assert_eq!(forward, expected[..n], "{start}..{end} {count:?}");
                    let backward: Vec<StreamId> = stream
                        .rev_range(end, start, count)
                        .unwrap()
                        .iter()
                        .map(|e| e.id)
                        .collect();
                    let tail: Vec<StreamId> = expected.iter().rev().take(n).copied().collect();
                    assert_eq!(backward, tail, "rev {end}..{start} {count:?}");
                }
            }
        }
        assert_eq!(
            stream.range(StreamId::MIN, StreamId::MAX, Some(1)).unwrap()[0].fields,
            fields(0)
        );
    }
}
