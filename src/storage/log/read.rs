//! Reading: locating an offset's segment, reading verified batches without blocking the writer,
//! timestamp lookups, and the owned-record iterator.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use super::*;

/// A log that hands out verified batches by offset: [`Log`] and
/// [`EntityLog`](crate::storage::entity_log::EntityLog).
pub trait ReadBatches {
    /// Visible batches holding offsets from `from` on, up to about `max_bytes`.
    fn read_batches(&self, from: u64, max_bytes: u64) -> Result<ReadResult>;
}

impl ReadBatches for Log {
    fn read_batches(&self, from: u64, max_bytes: u64) -> Result<ReadResult> {
        self.read(from, max_bytes)
    }
}

/// Iterator over owned records with their offsets; see [`Log::iter`].
pub struct LogIter<L: ReadBatches = Log> {
    pub(crate) log: L,
    pub(crate) next_offset: u64,
    pub(crate) buffered: VecDeque<(u64, Record)>,
    pub(crate) done: bool,
}

impl<L: ReadBatches> LogIter<L> {
    /// Iterate `log`'s visible records from `from` on.
    pub fn new(log: L, from: u64) -> LogIter<L> {
        LogIter {
            log,
            next_offset: from,
            buffered: VecDeque::new(),
            done: false,
        }
    }
}

/// Bytes fetched per read by [`LogIter`].
pub(crate) const ITER_READ_BYTES: u64 = 1024 * 1024;

impl<L: ReadBatches> Iterator for LogIter<L> {
    type Item = Result<(u64, Record)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffered.is_empty() && !self.done {
            match self.log.read_batches(self.next_offset, ITER_READ_BYTES) {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(result) => {
                    self.buffered
                        .extend(result.records().map(|r| (r.offset, r.to_record())));
                    match result.next_offset() {
                        Some(next) => self.next_offset = next,
                        None => self.done = true,
                    }
                }
            }
        }
        self.buffered.pop_front().map(Ok)
    }
}

enum Located {
    End,
    Sealed(Arc<SealedSegment>),
    Active {
        file: Arc<dyn VFile>,
        path: PathBuf,
        start_position: u64,
        start_offset: u64,
        end_position: u64,
        first: u64,
    },
}

impl LogInner {
    pub(super) fn read(&self, from: u64, max_bytes: u64) -> Result<ReadResult> {
        let mut result = ReadResult::default();
        let mut cursor = from;
        let mut budget = max_bytes.max(1);
        while budget > 0 {
            let before = result.batches.len();
            let added = match self.locate(cursor) {
                Located::End => break,
                Located::Sealed(segment) => {
                    cursor = cursor.max(segment.base_offset);
                    segment.read_into(
                        &*self.vfs,
                        self.config.index_interval_bytes,
                        cursor,
                        budget,
                        &mut result.batches,
                    )?
                }
                Located::Active {
                    file,
                    path,
                    start_position,
                    start_offset,
                    end_position,
                    first,
                } => {
                    cursor = cursor.max(first);
                    let read = SegmentRead {
                        path: &path,
                        bytes: SegmentBytes::File(&*file),
                        start_position,
                        start_offset,
                        end_position,
                    };
                    read.read_into(cursor, budget, &mut result.batches)?
                }
            };
            match result.batches.last() {
                Some(last) if result.batches.len() > before => cursor = last.next_offset(),
                _ => break,
            }
            budget = budget.saturating_sub(added);
        }
        Ok(result)
    }

    fn locate(&self, cursor: u64) -> Located {
        let shared = self.read_shared();
        let active = &shared.active;
        if cursor >= active.visible.next_offset {
            return Located::End;
        }
        let cursor = cursor.max(shared.start_offset());
        if cursor >= active.base_offset {
            let (start_position, start_offset) = active.index.position_for_offset(cursor);
            return Located::Active {
                file: Arc::clone(&active.file),
                path: active.path.clone(),
                start_position,
                start_offset,
                end_position: active.visible.bytes,
                first: active.base_offset,
            };
        }
        let i = shared.sealed.partition_point(|s| s.next_offset <= cursor);
        match shared.sealed.get(i) {
            Some(segment) => Located::Sealed(Arc::clone(segment)),
            None => Located::End,
        }
    }

    pub(super) fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        let interval = self.config.index_interval_bytes;
        let (sealed, active_start) = {
            let shared = self.read_shared();
            let active = &shared.active;
            let start = if active.index.max_timestamp_ms >= timestamp_ms {
                Some(active.index.position_for_timestamp(timestamp_ms).1)
            } else {
                None
            };
            (shared.sealed.iter().cloned().collect::<Vec<_>>(), start)
        };
        // The first segment holding a timestamp at or after the target holds the answer.
        let start = sealed
            .iter()
            .map(|s| (s, s.index(&*self.vfs, interval)))
            .find(|(_, index)| index.max_timestamp_ms >= timestamp_ms)
            .map(|(_, index)| index.position_for_timestamp(timestamp_ms).1)
            .or(active_start);
        let Some(mut cursor) = start else {
            return Ok(None);
        };
        // The index lands within a few KiB of the answer: read one batch first, then more.
        let mut budget = 1;
        loop {
            let result = self.read(cursor, budget)?;
            budget = (budget.max(4096) * 4).min(ITER_READ_BYTES);
            if let Some(found) = result.records().find(|r| r.timestamp_ms >= timestamp_ms) {
                return Ok(Some(found.offset));
            }
            match result.next_offset() {
                Some(next) => cursor = next,
                None => return Ok(None),
            }
        }
    }
}
