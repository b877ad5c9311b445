//! A stream's durable metadata beyond its entries: where it logically starts (trimming),
//! which entries are deleted (XDEL tombstones), and XSETID's settings. Kept in the stream's
//! journal as operations; see `storage-format.md` § Stream journal.
//!
//! Operation format (little endian), one per journal record body:
//! `{ tag u8 | fields }` with
//! - `1` Snapshot: `first_offset u64 | last_id_floor (ms u64, seq u64) | max_deleted (ms, seq) |
//!   entries_added u64 | entries_added_at u64 | deleted_count u32 | deleted offsets u64*`
//! - `2` Delete: `offset u64 | id (ms u64, seq u64)`
//! - `3` Trim: `first_offset u64`
//! - `4` SetId: `last_id (ms, seq) | entries_added u64 | entries_added_at u64 | max_deleted (ms, seq)`

use std::collections::BTreeSet;

use byteorder::{ByteOrder, LittleEndian as LE};

use super::stream_id::StreamId;

/// The state the journal rebuilds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamMeta {
    /// Entries below this offset are trimmed away.
    pub first_offset: u64,
    /// Deleted entries at or above `first_offset`.
    pub deleted: BTreeSet<u64>,
    /// XSETID may move the last ID past the last entry.
    pub last_id_floor: StreamId,
    /// The largest ID ever deleted by XDEL (or set by XSETID).
    pub max_deleted: StreamId,
    /// XSETID ENTRIESADDED: the count of entries ever added was `entries_added` when the log's
    /// next offset was `entries_added_at`; every later append adds one.
    pub entries_added: u64,
    pub entries_added_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaOp {
    Snapshot(StreamMeta),
    Delete {
        offset: u64,
        id: StreamId,
    },
    Trim {
        first_offset: u64,
    },
    SetId {
        last_id: StreamId,
        entries_added: u64,
        entries_added_at: u64,
        max_deleted: StreamId,
    },
}

const SNAPSHOT: u8 = 1;
const DELETE: u8 = 2;
const TRIM: u8 = 3;
const SET_ID: u8 = 4;

impl StreamMeta {
    /// Apply one operation. Total: any sequence of operations yields a valid state.
    pub fn apply(&mut self, op: &MetaOp) {
        match op {
            MetaOp::Snapshot(state) => *self = state.clone(),
            MetaOp::Delete { offset, id } => {
                if *offset >= self.first_offset {
                    self.deleted.insert(*offset);
                }
                self.max_deleted = self.max_deleted.max(*id);
            }
            MetaOp::Trim { first_offset } => {
                self.first_offset = self.first_offset.max(*first_offset);
                self.deleted = self.deleted.split_off(&self.first_offset);
            }
            MetaOp::SetId {
                last_id,
                entries_added,
                entries_added_at,
                max_deleted,
            } => {
                self.last_id_floor = *last_id;
                self.entries_added = *entries_added;
                self.entries_added_at = *entries_added_at;
                self.max_deleted = *max_deleted;
            }
        }
    }

    /// Live entries in `[first_offset, end)`.
    pub fn live_count(&self, end: u64) -> u64 {
        let span = end.saturating_sub(self.first_offset);
        span - self.deleted.range(self.first_offset..end).count() as u64
    }

    /// The offset after skipping `count` live entries from `first_offset`.
    pub fn offset_after_live(&self, count: u64) -> u64 {
        let (mut at, mut need) = (self.first_offset, count);
        for &dead in self.deleted.range(self.first_offset..) {
            let live_before = dead - at;
            if live_before >= need {
                break;
            }
            need -= live_before;
            at = dead + 1;
        }
        at + need
    }

    /// Entries ever added, given the log's next offset (each append is one entry).
    pub fn entries_added(&self, next_offset: u64) -> u64 {
        self.entries_added + next_offset.saturating_sub(self.entries_added_at)
    }

    pub fn is_live(&self, offset: u64) -> bool {
        offset >= self.first_offset && !self.deleted.contains(&offset)
    }
}

fn put_id(out: &mut Vec<u8>, id: StreamId) {
    out.extend_from_slice(&id.ms.to_le_bytes());
    out.extend_from_slice(&id.seq.to_le_bytes());
}

impl MetaOp {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            MetaOp::Snapshot(s) => {
                out.push(SNAPSHOT);
                out.extend_from_slice(&s.first_offset.to_le_bytes());
                put_id(&mut out, s.last_id_floor);
                put_id(&mut out, s.max_deleted);
                out.extend_from_slice(&s.entries_added.to_le_bytes());
                out.extend_from_slice(&s.entries_added_at.to_le_bytes());
                out.extend_from_slice(&(s.deleted.len() as u32).to_le_bytes());
                for offset in &s.deleted {
                    out.extend_from_slice(&offset.to_le_bytes());
                }
            }
            MetaOp::Delete { offset, id } => {
                out.push(DELETE);
                out.extend_from_slice(&offset.to_le_bytes());
                put_id(&mut out, *id);
            }
            MetaOp::Trim { first_offset } => {
                out.push(TRIM);
                out.extend_from_slice(&first_offset.to_le_bytes());
            }
            MetaOp::SetId {
                last_id,
                entries_added,
                entries_added_at,
                max_deleted,
            } => {
                out.push(SET_ID);
                put_id(&mut out, *last_id);
                out.extend_from_slice(&entries_added.to_le_bytes());
                out.extend_from_slice(&entries_added_at.to_le_bytes());
                put_id(&mut out, *max_deleted);
            }
        }
        out
    }

    /// `None` for bytes that are not an operation (the journal's CRCs make that a bug, not
    /// damage, but a bug must not crash the server).
    pub fn decode(bytes: &[u8]) -> Option<MetaOp> {
        let (&tag, rest) = bytes.split_first()?;
        let mut reader = Reader(rest);
        let op = match tag {
            SNAPSHOT => {
                let first_offset = reader.u64()?;
                let last_id_floor = reader.id()?;
                let max_deleted = reader.id()?;
                let entries_added = reader.u64()?;
                let entries_added_at = reader.u64()?;
                let count = reader.u32()? as usize;
                // Each offset takes 8 bytes: a huge count fails here, before allocating.
                if reader.0.len() != count * 8 {
                    return None;
                }
                let deleted = (0..count).map(|_| reader.u64()).collect::<Option<_>>()?;
                MetaOp::Snapshot(StreamMeta {
                    first_offset,
                    deleted,
                    last_id_floor,
                    max_deleted,
                    entries_added,
                    entries_added_at,
                })
            }
            DELETE => MetaOp::Delete {
                offset: reader.u64()?,
                id: reader.id()?,
            },
            TRIM => MetaOp::Trim {
                first_offset: reader.u64()?,
            },
            SET_ID => MetaOp::SetId {
                last_id: reader.id()?,
                entries_added: reader.u64()?,
                entries_added_at: reader.u64()?,
                max_deleted: reader.id()?,
            },
            _ => return None,
        };
        reader.0.is_empty().then_some(op)
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(LE::read_u64)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(LE::read_u32)
    }

    fn id(&mut self) -> Option<StreamId> {
        Some(StreamId::new(self.u64()?, self.u64()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_and_replay() {
        let mut meta = StreamMeta::default();
        let ops = [
            MetaOp::Delete {
                offset: 3,
                id: StreamId::new(3, 0),
            },
            MetaOp::Delete {
                offset: 7,
                id: StreamId::new(7, 0),
            },
            MetaOp::Trim { first_offset: 5 },
            MetaOp::SetId {
                last_id: StreamId::new(99, 0),
                entries_added: 50,
                entries_added_at: 9,
                max_deleted: StreamId::new(8, 0),
            },
        ];
        for op in &ops {
            assert_eq!(MetaOp::decode(&op.encode()).as_ref(), Some(op));
            meta.apply(op);
        }
        assert_eq!(meta.deleted.iter().copied().collect::<Vec<_>>(), vec![7]);
        assert_eq!(meta.live_count(10), 4);
        let snapshot = MetaOp::Snapshot(meta.clone());
        assert_eq!(MetaOp::decode(&snapshot.encode()), Some(snapshot));
        assert_eq!(MetaOp::decode(&[9]), None);
        assert_eq!(MetaOp::decode(&[TRIM, 1, 2]), None);
        let mut huge = vec![SNAPSHOT];
        huge.extend_from_slice(&[0u8; 48]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(MetaOp::decode(&huge), None);
    }

    #[test]
    fn skipping_live_entries_steps_over_tombstones() {
        let mut meta = StreamMeta {
            first_offset: 10,
            ..Default::default()
        };
        meta.deleted.extend([11, 12, 15]);
        // Live: 10, 13, 14, 16, 17, ...
        assert_eq!(meta.offset_after_live(0), 10);
        assert_eq!(meta.offset_after_live(1), 11);
        assert_eq!(meta.offset_after_live(2), 14);
        assert_eq!(meta.offset_after_live(3), 15);
        assert_eq!(meta.offset_after_live(4), 17);
        assert_eq!(meta.live_count(18), 5);
    }
}
