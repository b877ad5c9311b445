//! Reading an entity log: sealed segments through their maps, the written part of the active
//! segment through positional reads, and the tail from memory.

use std::sync::Arc;

use super::{Chunk, EntityLog};
use crate::storage::batch::BatchView;
use crate::storage::error::Result;
use crate::storage::log::ITER_READ_BYTES;
use crate::storage::log::{LogIter, ReadBatches, ReadResult};
use crate::storage::segment::{SealedSegment, SegmentBytes, SegmentRead};

/// Where the next read goes.
enum Located {
    End,
    Sealed(Arc<SealedSegment>),
    Active {
        path: std::path::PathBuf,
        start_position: u64,
        start_offset: u64,
        end_position: u64,
        first: u64,
    },
    /// Visible batches in memory from the cursor on, up to about the budget.
    Tail(Vec<Chunk>),
}

/// Iterator over owned records of an entity log; see [`EntityLog::iter`].
pub type EntityIter = LogIter<EntityLog>;

impl ReadBatches for EntityLog {
    fn read_batches(&self, from: u64, max_bytes: u64) -> Result<ReadResult> {
        self.read(from, max_bytes)
    }
}

impl EntityLog {
    /// Iterate visible records from `from` on, as owned records with their offsets.
    pub fn iter(&self, from: u64) -> EntityIter {
        LogIter::new(self.clone(), from)
    }

    /// Read visible batches holding offsets from `from` on (from the start if `from` precedes
    /// it), up to about `max_bytes` (at least one batch when any is visible).
    pub fn read(&self, from: u64, max_bytes: u64) -> Result<ReadResult> {
        self.read_to(from, max_bytes, false)
    }

    /// [`EntityLog::read`] including appends not yet visible (still waiting for their commit):
    /// for the owner's own bookkeeping, never for consumers.
    pub fn read_written(&self, from: u64, max_bytes: u64) -> Result<ReadResult> {
        self.read_to(from, max_bytes, true)
    }

    fn read_to(&self, from: u64, max_bytes: u64, unsettled: bool) -> Result<ReadResult> {
        let mut result = ReadResult::default();
        let mut cursor = from;
        let mut budget = max_bytes.max(1);
        while budget > 0 {
            let before = result.batches.len();
            let added = match self.locate(cursor, budget, unsettled) {
                Located::End => break,
                Located::Sealed(segment) => {
                    cursor = cursor.max(segment.base_offset);
                    segment.read_into(
                        &**self.files().vfs(),
                        self.inner.config.index_interval_bytes,
                        cursor,
                        budget,
                        &mut result.batches,
                    )?
                }
                Located::Active {
                    path,
                    start_position,
                    start_offset,
                    end_position,
                    first,
                } => {
                    cursor = cursor.max(first);
                    let file = self.files().open(&path)?;
                    let read = SegmentRead {
                        path: &path,
                        bytes: SegmentBytes::File(&*file),
                        start_position,
                        start_offset,
                        end_position,
                    };
                    read.read_into(cursor, budget, &mut result.batches)?
                }
                Located::Tail(chunks) => {
                    let mut added = 0;
                    for chunk in chunks {
                        let len = chunk.bytes.len() as u64;
                        if !result.batches.is_empty() && added + len > budget {
                            break;
                        }
                        added += len;
                        result
                            .batches
                            .push(BatchView::new(chunk.header, chunk.bytes, cursor));
                    }
                    added
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

    fn locate(&self, cursor: u64, budget: u64, unsettled: bool) -> Located {
        let shared = self.read_shared();
        let end = if unsettled {
            shared.written_next
        } else {
            shared.visible_next
        };
        if cursor >= end {
            return Located::End;
        }
        let cursor = cursor.max(shared.start_offset());
        let active = &shared.active;
        if cursor >= active.index.next_offset {
            let mut chunks = Vec::new();
            let mut bytes = 0;
            for chunk in &shared.tail {
                if chunk.header.base_offset >= end || bytes >= budget {
                    break;
                }
                if chunk.header.next_offset() > cursor {
                    bytes += chunk.bytes.len() as u64;
                    chunks.push(chunk.clone());
                }
            }
            return Located::Tail(chunks);
        }
        if cursor >= active.base_offset {
            let (start_position, start_offset) = active.index.position_for_offset(cursor);
            return Located::Active {
                path: active.path(&self.inner.dir).clone(),
                start_position,
                start_offset,
                end_position: active.index.covered_bytes,
                first: active.base_offset,
            };
        }
        let i = shared.sealed.partition_point(|s| s.next_offset <= cursor);
        match shared.sealed.get(i) {
            Some(segment) => Located::Sealed(Arc::clone(segment)),
            None => Located::End,
        }
    }

    /// The first visible offset whose record's timestamp is at or after `timestamp_ms`.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        let interval = self.inner.config.index_interval_bytes;
        let (sealed, active_start, tail_start) = {
            let shared = self.read_shared();
            let active = &shared.active;
            let active_start = (active.index.max_timestamp_ms >= timestamp_ms
                && active.index.covered_bytes > 0)
                .then(|| active.index.position_for_timestamp(timestamp_ms).1);
            let tail_start = shared
                .tail
                .iter()
                .find(|c| c.header.max_timestamp_ms >= timestamp_ms)
                .map(|c| c.header.base_offset);
            (
                shared.sealed.iter().cloned().collect::<Vec<_>>(),
                active_start,
                tail_start,
            )
        };
        let vfs = self.files().vfs();
        // The first place holding a timestamp at or after the target holds the answer.
        let start = sealed
            .iter()
            .map(|s| s.index(&**vfs, interval))
            .find(|index| index.max_timestamp_ms >= timestamp_ms)
            .map(|index| index.position_for_timestamp(timestamp_ms).1)
            .or(active_start)
            .or(tail_start);
        let Some(mut cursor) = start else {
            return Ok(None);
        };
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
