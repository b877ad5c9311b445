//! A stream's durable metadata beyond its entries: where it logically starts (trimming),
//! which entries are deleted (XDEL tombstones), XSETID's settings, and its consumer groups.
//! Kept in the stream's journal as operations; `storage-format.md` § Stream journal specifies
//! every byte. All integers little endian; an ID is `ms u64 | seq u64`; bytes are
//! `len u32 | bytes`; an optional u64 is `flag u8 (0/1) | u64`.

use std::collections::{BTreeMap, BTreeSet};

use byteorder::{ByteOrder, LittleEndian as LE};
use bytes::Bytes;

use super::group::{ConsumerState, GroupState, PendingEntry};
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
    pub groups: BTreeMap<Bytes, GroupState>,
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
    GroupCreate {
        group: Bytes,
        last_delivered: StreamId,
        entries_read: Option<u64>,
    },
    GroupDestroy {
        group: Bytes,
    },
    GroupSetId {
        group: Bytes,
        last_delivered: StreamId,
        entries_read: Option<u64>,
    },
    ConsumerCreate {
        group: Bytes,
        consumer: Bytes,
        time_ms: i64,
    },
    ConsumerDelete {
        group: Bytes,
        consumer: Bytes,
    },
    /// `advance`: new entries (`>`), moving the last delivered ID.
    Deliver {
        group: Bytes,
        consumer: Bytes,
        ids: Vec<StreamId>,
        time_ms: i64,
        advance: bool,
        noack: bool,
        /// The group's read counter after a new delivery (`advance`); ignored otherwise.
        entries_read: Option<u64>,
    },
    Ack {
        group: Bytes,
        ids: Vec<StreamId>,
    },
    /// Each claim: (id, delivery time, delivery count).
    Claim {
        group: Bytes,
        consumer: Bytes,
        claims: Vec<(StreamId, i64, u64)>,
        time_ms: i64,
    },
    /// Pending entries whose stream entries are gone (XCLAIM/XAUTOCLAIM drop them).
    PendingDrop {
        group: Bytes,
        ids: Vec<StreamId>,
    },
}

const SNAPSHOT: u8 = 1;
const DELETE: u8 = 2;
const TRIM: u8 = 3;
const SET_ID: u8 = 4;
const GROUP_CREATE: u8 = 5;
const GROUP_DESTROY: u8 = 6;
const GROUP_SET_ID: u8 = 7;
const CONSUMER_CREATE: u8 = 8;
const CONSUMER_DELETE: u8 = 9;
const DELIVER: u8 = 10;
const ACK: u8 = 11;
const CLAIM: u8 = 12;
const PENDING_DROP: u8 = 13;

impl StreamMeta {
    /// Apply one operation. Total: any sequence of operations yields a valid state (an
    /// operation on a group that does not exist does nothing).
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
            MetaOp::GroupCreate {
                group,
                last_delivered,
                entries_read,
            } => {
                self.groups
                    .entry(group.clone())
                    .or_insert_with(|| GroupState::new(*last_delivered, *entries_read));
            }
            MetaOp::GroupDestroy { group } => {
                self.groups.remove(group);
            }
            MetaOp::GroupSetId {
                group,
                last_delivered,
                entries_read,
            } => {
                if let Some(g) = self.groups.get_mut(group) {
                    g.last_delivered = *last_delivered;
                    g.entries_read = *entries_read;
                }
            }
            MetaOp::ConsumerCreate {
                group,
                consumer,
                time_ms,
            } => {
                if let Some(g) = self.groups.get_mut(group) {
                    g.consumers
                        .entry(consumer.clone())
                        .or_insert(ConsumerState {
                            seen_time_ms: *time_ms,
                        });
                }
            }
            MetaOp::ConsumerDelete { group, consumer } => {
                if let Some(g) = self.groups.get_mut(group) {
                    g.delete_consumer(consumer);
                }
            }
            MetaOp::Deliver {
                group,
                consumer,
                ids,
                time_ms,
                advance,
                noack,
                entries_read,
            } => {
                if let Some(g) = self.groups.get_mut(group) {
                    g.deliver(consumer, ids, *time_ms, *advance, *noack);
                    if *advance {
                        g.entries_read = *entries_read;
                    }
                }
            }
            MetaOp::Ack { group, ids } => {
                if let Some(g) = self.groups.get_mut(group) {
                    g.ack(ids);
                }
            }
            MetaOp::Claim {
                group,
                consumer,
                claims,
                time_ms,
            } => {
                if let Some(g) = self.groups.get_mut(group) {
                    g.claim(consumer, claims, *time_ms);
                }
            }
            MetaOp::PendingDrop { group, ids } => {
                if let Some(g) = self.groups.get_mut(group) {
                    g.ack(ids);
                }
            }
        }
    }

    /// Live entries in `[first_offset, end)`.
    pub fn live_count(&self, end: u64) -> u64 {
        // `end` may lie before `first_offset`: a trim can pass entries appended but not yet
        // durable (and so not yet visible); none of them is live to a reader.
        if end <= self.first_offset {
            return 0;
        }
        end - self.first_offset - self.deleted.range(self.first_offset..end).count() as u64
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

/// Appends fields in the journal's encoding.
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn id(&mut self, id: StreamId) {
        self.u64(id.ms);
        self.u64(id.seq);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        self.u8(u8::from(v.is_some()));
        self.u64(v.unwrap_or(0));
    }
    fn ids(&mut self, ids: &[StreamId]) {
        self.u32(ids.len() as u32);
        ids.iter().for_each(|id| self.id(*id));
    }
    fn group(&mut self, g: &GroupState) {
        self.id(g.last_delivered);
        self.opt_u64(g.entries_read);
        self.u32(g.consumers.len() as u32);
        for (name, c) in &g.consumers {
            self.bytes(name);
            self.i64(c.seen_time_ms);
        }
        self.u32(g.pending.len() as u32);
        for (id, p) in &g.pending {
            self.id(*id);
            self.bytes(&p.consumer);
            self.i64(p.delivery_time_ms);
            self.u64(p.delivery_count);
        }
    }
}

impl MetaOp {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        match self {
            MetaOp::Snapshot(s) => {
                w.u8(SNAPSHOT);
                w.u64(s.first_offset);
                w.id(s.last_id_floor);
                w.id(s.max_deleted);
                w.u64(s.entries_added);
                w.u64(s.entries_added_at);
                w.u32(s.deleted.len() as u32);
                s.deleted.iter().for_each(|o| w.u64(*o));
                w.u32(s.groups.len() as u32);
                for (name, g) in &s.groups {
                    w.bytes(name);
                    w.group(g);
                }
            }
            MetaOp::Delete { offset, id } => {
                w.u8(DELETE);
                w.u64(*offset);
                w.id(*id);
            }
            MetaOp::Trim { first_offset } => {
                w.u8(TRIM);
                w.u64(*first_offset);
            }
            MetaOp::SetId {
                last_id,
                entries_added,
                entries_added_at,
                max_deleted,
            } => {
                w.u8(SET_ID);
                w.id(*last_id);
                w.u64(*entries_added);
                w.u64(*entries_added_at);
                w.id(*max_deleted);
            }
            MetaOp::GroupCreate {
                group,
                last_delivered,
                entries_read,
            }
            | MetaOp::GroupSetId {
                group,
                last_delivered,
                entries_read,
            } => {
                w.u8(if matches!(self, MetaOp::GroupCreate { .. }) {
                    GROUP_CREATE
                } else {
                    GROUP_SET_ID
                });
                w.bytes(group);
                w.id(*last_delivered);
                w.opt_u64(*entries_read);
            }
            MetaOp::GroupDestroy { group } => {
                w.u8(GROUP_DESTROY);
                w.bytes(group);
            }
            MetaOp::ConsumerCreate {
                group,
                consumer,
                time_ms,
            } => {
                w.u8(CONSUMER_CREATE);
                w.bytes(group);
                w.bytes(consumer);
                w.i64(*time_ms);
            }
            MetaOp::ConsumerDelete { group, consumer } => {
                w.u8(CONSUMER_DELETE);
                w.bytes(group);
                w.bytes(consumer);
            }
            MetaOp::Deliver {
                group,
                consumer,
                ids,
                time_ms,
                advance,
                noack,
                entries_read,
            } => {
                w.u8(DELIVER);
                w.bytes(group);
                w.bytes(consumer);
                w.ids(ids);
                w.i64(*time_ms);
                w.u8(u8::from(*advance) | u8::from(*noack) << 1);
                w.opt_u64(*entries_read);
            }
            MetaOp::Ack { group, ids } | MetaOp::PendingDrop { group, ids } => {
                w.u8(if matches!(self, MetaOp::Ack { .. }) {
                    ACK
                } else {
                    PENDING_DROP
                });
                w.bytes(group);
                w.ids(ids);
            }
            MetaOp::Claim {
                group,
                consumer,
                claims,
                time_ms,
            } => {
                w.u8(CLAIM);
                w.bytes(group);
                w.bytes(consumer);
                w.u32(claims.len() as u32);
                for (id, time, count) in claims {
                    w.id(*id);
                    w.i64(*time);
                    w.u64(*count);
                }
                w.i64(*time_ms);
            }
        }
        w.0
    }

    /// `None` for bytes that are not an operation (the journal's CRCs make that a bug, not
    /// damage, but a bug must not crash the server).
    pub fn decode(bytes: &[u8]) -> Option<MetaOp> {
        let (&tag, rest) = bytes.split_first()?;
        let mut r = Reader(rest);
        let op = match tag {
            SNAPSHOT => {
                let first_offset = r.u64()?;
                let last_id_floor = r.id()?;
                let max_deleted = r.id()?;
                let entries_added = r.u64()?;
                let entries_added_at = r.u64()?;
                let deleted = (0..r.count(8)?).map(|_| r.u64()).collect::<Option<_>>()?;
                let groups = (0..r.count(4)?)
                    .map(|_| Some((r.bytes()?, r.group()?)))
                    .collect::<Option<_>>()?;
                MetaOp::Snapshot(StreamMeta {
                    first_offset,
                    deleted,
                    last_id_floor,
                    max_deleted,
                    entries_added,
                    entries_added_at,
                    groups,
                })
            }
            DELETE => MetaOp::Delete {
                offset: r.u64()?,
                id: r.id()?,
            },
            TRIM => MetaOp::Trim {
                first_offset: r.u64()?,
            },
            SET_ID => MetaOp::SetId {
                last_id: r.id()?,
                entries_added: r.u64()?,
                entries_added_at: r.u64()?,
                max_deleted: r.id()?,
            },
            GROUP_CREATE => MetaOp::GroupCreate {
                group: r.bytes()?,
                last_delivered: r.id()?,
                entries_read: r.opt_u64()?,
            },
            GROUP_SET_ID => MetaOp::GroupSetId {
                group: r.bytes()?,
                last_delivered: r.id()?,
                entries_read: r.opt_u64()?,
            },
            GROUP_DESTROY => MetaOp::GroupDestroy { group: r.bytes()? },
            CONSUMER_CREATE => MetaOp::ConsumerCreate {
                group: r.bytes()?,
                consumer: r.bytes()?,
                time_ms: r.i64()?,
            },
            CONSUMER_DELETE => MetaOp::ConsumerDelete {
                group: r.bytes()?,
                consumer: r.bytes()?,
            },
            DELIVER => {
                let (group, consumer, ids, time_ms) = (r.bytes()?, r.bytes()?, r.ids()?, r.i64()?);
                let flags = r.u8()?;
                MetaOp::Deliver {
                    group,
                    consumer,
                    ids,
                    time_ms,
                    advance: flags & 1 != 0,
                    noack: flags & 2 != 0,
                    entries_read: r.opt_u64()?,
                }
            }
            ACK => MetaOp::Ack {
                group: r.bytes()?,
                ids: r.ids()?,
            },
            PENDING_DROP => MetaOp::PendingDrop {
                group: r.bytes()?,
                ids: r.ids()?,
            },
            CLAIM => {
                let (group, consumer) = (r.bytes()?, r.bytes()?);
                let claims = (0..r.count(32)?)
                    .map(|_| Some((r.id()?, r.i64()?, r.u64()?)))
                    .collect::<Option<_>>()?;
                MetaOp::Claim {
                    group,
                    consumer,
                    claims,
                    time_ms: r.i64()?,
                }
            }
            _ => return None,
        };
        r.0.is_empty().then_some(op)
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
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(LE::read_u32)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(LE::read_u64)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8).map(LE::read_i64)
    }
    fn id(&mut self) -> Option<StreamId> {
        Some(StreamId::new(self.u64()?, self.u64()?))
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let len = self.u32()? as usize;
        self.take(len).map(Bytes::copy_from_slice)
    }
    fn opt_u64(&mut self) -> Option<Option<u64>> {
        let flag = self.u8()?;
        let value = self.u64()?;
        match flag {
            0 => Some(None),
            1 => Some(Some(value)),
            _ => None,
        }
    }
    /// A count of items each at least `item_bytes` long: a count the input cannot hold is
    /// rejected before anything is allocated for it.
    fn count(&mut self, item_bytes: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n.checked_mul(item_bytes)? <= self.0.len()).then_some(n)
    }
    fn ids(&mut self) -> Option<Vec<StreamId>> {
        (0..self.count(16)?).map(|_| self.id()).collect()
    }
    fn group(&mut self) -> Option<GroupState> {
        let last_delivered = self.id()?;
        let entries_read = self.opt_u64()?;
        let consumers = (0..self.count(12)?)
            .map(|_| {
                Some((
                    self.bytes()?,
                    ConsumerState {
                        seen_time_ms: self.i64()?,
                    },
                ))
            })
            .collect::<Option<_>>()?;
        let pending = (0..self.count(36)?)
            .map(|_| {
                let id = self.id()?;
                let entry = PendingEntry {
                    consumer: self.bytes()?,
                    delivery_time_ms: self.i64()?,
                    delivery_count: self.u64()?,
                };
                Some((id, entry))
            })
            .collect::<Option<_>>()?;
        Some(GroupState {
            last_delivered,
            entries_read,
            consumers,
            pending,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_ops() -> Vec<MetaOp> {
        let (g, c) = (Bytes::from("g"), Bytes::from("alice"));
        vec![
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
            MetaOp::GroupCreate {
                group: g.clone(),
                last_delivered: StreamId::MIN,
                entries_read: Some(0),
            },
            MetaOp::ConsumerCreate {
                group: g.clone(),
                consumer: Bytes::from("zed"),
                time_ms: 5,
            },
            MetaOp::Deliver {
                group: g.clone(),
                consumer: c.clone(),
                ids: vec![StreamId::new(8, 0), StreamId::new(9, 0)],
                time_ms: 10,
                advance: true,
                noack: false,
                entries_read: Some(2),
            },
            MetaOp::Ack {
                group: g.clone(),
                ids: vec![StreamId::new(8, 0)],
            },
            MetaOp::Claim {
                group: g.clone(),
                consumer: Bytes::from("bob"),
                claims: vec![(StreamId::new(9, 0), 20, 3)],
                time_ms: 20,
            },
            MetaOp::GroupSetId {
                group: g.clone(),
                last_delivered: StreamId::new(9, 0),
                entries_read: None,
            },
            MetaOp::GroupCreate {
                group: Bytes::from("gone"),
                last_delivered: StreamId::MIN,
                entries_read: None,
            },
            MetaOp::GroupDestroy {
                group: Bytes::from("gone"),
            },
            MetaOp::ConsumerDelete {
                group: g.clone(),
                consumer: Bytes::from("zed"),
            },
            MetaOp::PendingDrop {
                group: g,
                ids: vec![StreamId::new(1, 1)],
            },
        ]
    }

    #[test]
    fn ops_round_trip_and_replay() {
        let mut meta = StreamMeta::default();
        for op in &sample_ops() {
            assert_eq!(MetaOp::decode(&op.encode()).as_ref(), Some(op));
            meta.apply(op);
        }
        assert_eq!(meta.deleted.iter().copied().collect::<Vec<_>>(), vec![7]);
        assert_eq!(meta.live_count(10), 4);
        let group = &meta.groups[&Bytes::from("g")];
        assert_eq!(group.pending.len(), 1);
        assert_eq!(
            group.pending[&StreamId::new(9, 0)].consumer,
            Bytes::from("bob")
        );
        assert_eq!(group.consumers.len(), 2, "alice and bob; zed was deleted");
        assert_eq!(meta.groups.len(), 1);
        let snapshot = MetaOp::Snapshot(meta.clone());
        assert_eq!(MetaOp::decode(&snapshot.encode()), Some(snapshot.clone()));
        // Damaged or truncated encodings are refused, never a panic.
        let encoded = snapshot.encode();
        for len in 0..encoded.len() {
            assert_eq!(MetaOp::decode(&encoded[..len]), None);
        }
        assert_eq!(MetaOp::decode(&[99]), None);
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

    #[test]
    fn live_count_before_the_first_offset_is_zero() {
        // A trim can pass entries appended but not yet visible: the visible end then lies
        // before `first_offset` (an XREADGROUP in that window used to panic here).
        let mut meta = StreamMeta::default();
        meta.apply(&MetaOp::Delete {
            offset: 12,
            id: StreamId::new(12, 0),
        });
        meta.apply(&MetaOp::Trim { first_offset: 10 });
        assert_eq!(meta.live_count(7), 0);
        assert_eq!(meta.live_count(10), 0);
        assert_eq!(meta.live_count(15), 4);
    }
}
