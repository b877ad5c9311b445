//! Consumer-group operations on a stream (XGROUP, XREADGROUP, XACK, XPENDING, XCLAIM,
//! XAUTOCLAIM, XINFO GROUPS/CONSUMERS).
//!
//! Durability: every change (group and consumer changes, deliveries with their pending
//! entries and the group's last delivered ID, claims, acknowledgements) is one commit in the
//! write-ahead log, returned to the caller: under `always` the reply waits for it, and many
//! consumers' deliveries share one fsync.

use bytes::Bytes;

use crate::storage::Commit;

use super::group::GroupState;
use super::stream::{Entry, Stream, StreamError};
use super::stream_id::StreamId;
use super::stream_meta::MetaOp;
use crate::storage::recovery::now_ms;

/// Where XGROUP CREATE / SETID put the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupStart {
    /// `$`: after the last entry.
    Last,
    Id(StreamId),
}

/// XPENDING's summary form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSummary {
    pub count: u64,
    pub smallest: Option<StreamId>,
    pub largest: Option<StreamId>,
    pub per_consumer: Vec<(Bytes, u64)>,
}

/// One row of XPENDING's extended form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRow {
    pub id: StreamId,
    pub consumer: Bytes,
    pub idle_ms: u64,
    pub delivery_count: u64,
}

/// XPENDING's extended-form filter.
#[derive(Clone, Debug)]
pub struct PendingFilter {
    pub min_idle_ms: u64,
    pub start: StreamId,
    pub end: StreamId,
    pub count: usize,
    pub consumer: Option<Bytes>,
}

/// XCLAIM's options.
#[derive(Clone, Debug, Default)]
pub struct ClaimOptions {
    /// Set the delivery time this many ms in the past (IDLE) ...
    pub idle_ms: Option<u64>,
    /// ... or to this absolute time (TIME).
    pub time_ms: Option<i64>,
    pub retry_count: Option<u64>,
    pub force: bool,
    pub just_id: bool,
    pub last_id: Option<StreamId>,
}

/// What XAUTOCLAIM did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoClaimed {
    /// Where the next call should start (0-0 when the scan is complete).
    pub next: StreamId,
    pub claimed: Vec<Entry>,
    /// Pending entries whose stream entries were deleted; dropped from the PEL.
    pub deleted: Vec<StreamId>,
}

/// XINFO GROUPS row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: Bytes,
    pub consumers: u64,
    pub pending: u64,
    pub last_delivered: StreamId,
    pub entries_read: Option<u64>,
    pub lag: Option<u64>,
}

/// XINFO CONSUMERS row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub name: Bytes,
    pub pending: u64,
    pub idle_ms: u64,
}

/// A pending entry read again from history: its ID, and the entry unless it was deleted.
pub type HistoryEntry = (StreamId, Option<Entry>);

/// One delivery to journal: new entries (`advance`) or a history read.
struct Delivery {
    ids: Vec<StreamId>,
    advance: bool,
    noack: bool,
    /// The group's read counter after a new delivery.
    entries_read: Option<u64>,
}

/// What Redis's lag arithmetic looks at.
struct StreamShape {
    added: u64,
    length: u64,
    last_id: StreamId,
    first_id: Option<StreamId>,
    max_deleted: StreamId,
}

impl StreamShape {
    /// Whether a deleted entry lies at or after `start` (Redis: streamRangeHasTombstones).
    fn tombstones_from(&self, start: StreamId) -> bool {
        self.length > 0 && self.max_deleted != StreamId::MIN && start <= self.max_deleted
    }

    /// How many entries ever added precede and include `id`, when that can be known (Redis:
    /// streamEstimateDistanceFromFirstEverEntry).
    fn entries_through(&self, id: StreamId) -> Option<u64> {
        if self.added == 0 {
            return Some(0);
        }
        if (self.length == 0 && id <= self.last_id) || id == self.last_id {
            return Some(self.added);
        }
        if id > self.last_id {
            return None;
        }
        let first = self.first_id?;
        let no_fragmentation = self.max_deleted == StreamId::MIN || self.max_deleted < first;
        match id.cmp(&first) {
            std::cmp::Ordering::Less if no_fragmentation => Some(self.added - self.length),
            std::cmp::Ordering::Equal if no_fragmentation => Some(self.added - self.length + 1),
            _ => None,
        }
    }

    /// XINFO GROUPS' lag, as Redis computes it; `None` when it cannot be known.
    fn lag(&self, group: &GroupState) -> Option<u64> {
        if self.added == 0 {
            return Some(0);
        }
        let read = match group.entries_read {
            Some(read) if !self.tombstones_from(group.last_delivered) => Some(read),
            _ => self.entries_through(group.last_delivered),
        };
        read.map(|read| self.added.saturating_sub(read))
    }
}

fn idle(now: i64, then: i64) -> u64 {
    u64::try_from(now.saturating_sub(then)).unwrap_or(0)
}

impl Stream {
    fn group_of<'a>(
        groups: &'a std::collections::BTreeMap<Bytes, GroupState>,
        group: &[u8],
    ) -> Result<&'a GroupState, StreamError> {
        groups.get(group).ok_or(StreamError::NoGroup)
    }

    pub fn has_group(&self, group: &[u8]) -> bool {
        self.meta().groups.contains_key(group)
    }

    pub fn create_group(
        &self,
        group: &Bytes,
        start: GroupStart,
        entries_read: Option<u64>,
    ) -> Result<Commit, StreamError> {
        let mut state = self.lock();
        if state.meta.groups.contains_key(group) {
            return Err(StreamError::BusyGroup);
        }
        let last_delivered = match start {
            GroupStart::Last => state.last_id,
            GroupStart::Id(id) => id,
        };
        let op = MetaOp::GroupCreate {
            group: group.clone(),
            last_delivered,
            entries_read,
        };
        self.commit(&mut state, vec![op])
    }

    /// Returns whether the group existed.
    pub fn destroy_group(&self, group: &Bytes) -> Result<(bool, Commit), StreamError> {
        let mut state = self.lock();
        if !state.meta.groups.contains_key(group) {
            return Ok((false, Commit::NONE));
        }
        let op = MetaOp::GroupDestroy {
            group: group.clone(),
        };
        let commit = self.commit(&mut state, vec![op])?;
        drop(state);
        // Readers blocked on the group find out.
        self.wake_waiters();
        Ok((true, commit))
    }

    pub fn set_group_id(
        &self,
        group: &Bytes,
        start: GroupStart,
        entries_read: Option<u64>,
    ) -> Result<Commit, StreamError> {
        let mut state = self.lock();
        Self::group_of(&state.meta.groups, group)?;
        let last_delivered = match start {
            GroupStart::Last => state.last_id,
            GroupStart::Id(id) => id,
        };
        let op = MetaOp::GroupSetId {
            group: group.clone(),
            last_delivered,
            entries_read,
        };
        self.commit(&mut state, vec![op])
    }

    /// Returns whether the consumer was created (false: it existed).
    pub fn create_consumer(
        &self,
        group: &Bytes,
        consumer: &Bytes,
    ) -> Result<(bool, Commit), StreamError> {
        let mut state = self.lock();
        if Self::group_of(&state.meta.groups, group)?
            .consumers
            .contains_key(consumer)
        {
            return Ok((false, Commit::NONE));
        }
        let op = MetaOp::ConsumerCreate {
            group: group.clone(),
            consumer: consumer.clone(),
            time_ms: now_ms(),
        };
        Ok((true, self.commit(&mut state, vec![op])?))
    }

    /// Returns how many pending entries the consumer had.
    pub fn delete_consumer(
        &self,
        group: &Bytes,
        consumer: &Bytes,
    ) -> Result<(u64, Commit), StreamError> {
        let mut state = self.lock();
        let g = Self::group_of(&state.meta.groups, group)?;
        if !g.consumers.contains_key(consumer) {
            return Ok((0, Commit::NONE));
        }
        let pending = g.pending_of(consumer) as u64;
        let op = MetaOp::ConsumerDelete {
            group: group.clone(),
            consumer: consumer.clone(),
        };
        Ok((pending, self.commit(&mut state, vec![op])?))
    }

    /// Record a delivery. Reading nothing writes nothing, except that a consumer seen for the
    /// first time is created, as in Redis.
    fn record_delivery(
        &self,
        state: &mut super::stream::StreamState,
        group: &Bytes,
        consumer: &Bytes,
        delivery: Delivery,
    ) -> Result<Commit, StreamError> {
        let Delivery {
            ids,
            advance,
            noack,
            entries_read,
        } = delivery;
        let time_ms = now_ms();
        if ids.is_empty() {
            let known = state
                .meta
                .groups
                .get(group)
                .is_some_and(|g| g.consumers.contains_key(consumer));
            if !known {
                let op = MetaOp::ConsumerCreate {
                    group: group.clone(),
                    consumer: consumer.clone(),
                    time_ms,
                };
                return self.commit(state, vec![op]);
            }
            return Ok(Commit::NONE);
        }
        let op = MetaOp::Deliver {
            group: group.clone(),
            consumer: consumer.clone(),
            ids,
            time_ms,
            advance,
            noack,
            entries_read,
        };
        self.commit(state, vec![op])
    }

    /// The stream facts Redis's read-counter and lag arithmetic uses.
    fn shape(&self, meta: &super::stream_meta::StreamMeta, last_id: StreamId) -> StreamShape {
        StreamShape {
            added: meta.entries_added(self.log.next_offset()),
            length: meta.live_count(self.log.visible_next_offset()),
            last_id,
            first_id: self
                .range_in(meta, StreamId::MIN, StreamId::MAX, Some(1), u64::MAX)
                .ok()
                .and_then(|mut e| e.pop())
                .map(|e| e.id),
            max_deleted: meta.max_deleted,
        }
    }

    /// XREADGROUP with `>`: entries after the group's last delivered ID, now delivered to
    /// `consumer` (and pending unless `noack`). More than `bytes_max` of entries (see
    /// [`Stream::range_within`]) is [`StreamError::ReplyTooLarge`], and nothing is delivered.
    pub fn read_group_new(
        &self,
        group: &Bytes,
        consumer: &Bytes,
        count: Option<usize>,
        noack: bool,
        bytes_max: u64,
    ) -> Result<(Vec<Entry>, Commit), StreamError> {
        let mut state = self.lock();
        let (last_delivered, mut entries_read) = {
            let g = Self::group_of(&state.meta.groups, group)?;
            (g.last_delivered, g.entries_read)
        };
        let entries = match last_delivered.successor() {
            Some(start) => self.range_in(&state.meta, start, StreamId::MAX, count, bytes_max)?,
            None => Vec::new(),
        };
        let ids: Vec<StreamId> = entries.iter().map(|e| e.id).collect();
        // Redis's read counter: one more per entry while nothing deleted lies ahead, else
        // re-estimated from the stream's shape (and unknown when it cannot be).
        let shape = self.shape(&state.meta, state.last_id);
        for &id in &ids {
            entries_read = match entries_read {
                Some(read) if !shape.tombstones_from(id) => Some(read + 1),
                _ => shape.entries_through(id),
            };
        }
        let delivery = Delivery {
            ids,
            advance: true,
            noack,
            entries_read,
        };
        let commit = self.record_delivery(&mut state, group, consumer, delivery)?;
        Ok((entries, commit))
    }

    /// XREADGROUP with an ID: the consumer's pending entries after `after`, delivered again.
    /// Deleted entries come back as `(id, None)`. Within `bytes_max` as
    /// [`Stream::read_group_new`].
    pub fn read_group_history(
        &self,
        group: &Bytes,
        consumer: &Bytes,
        after: StreamId,
        count: Option<usize>,
        bytes_max: u64,
    ) -> Result<(Vec<HistoryEntry>, Commit), StreamError> {
        let mut state = self.lock();
        let g = Self::group_of(&state.meta.groups, group)?;
        let ids: Vec<StreamId> = match after.successor() {
            Some(start) => g
                .pending
                .range(start..)
                .filter(|(_, p)| p.consumer == consumer)
                .map(|(id, _)| *id)
                .take(count.unwrap_or(usize::MAX))
                .collect(),
            None => Vec::new(),
        };
        let entries = self.entries_in(&state.meta, &ids, bytes_max)?;
        let found = ids.iter().copied().zip(entries).collect();
        let delivery = Delivery {
            ids,
            advance: false,
            noack: false,
            entries_read: None,
        };
        let commit = self.record_delivery(&mut state, group, consumer, delivery)?;
        Ok((found, commit))
    }

    /// XACK: returns how many were pending, and the commit to wait for before replying.
    pub fn ack(&self, group: &Bytes, ids: &[StreamId]) -> Result<(u64, Commit), StreamError> {
        let mut state = self.lock();
        let Some(g) = state.meta.groups.get(group) else {
            return Ok((0, Commit::NONE));
        };
        let mut acked: Vec<StreamId> = ids
            .iter()
            .copied()
            .filter(|id| g.pending.contains_key(id))
            .collect();
        acked.sort_unstable();
        acked.dedup();
        let count = acked.len() as u64;
        if acked.is_empty() {
            return Ok((0, Commit::NONE));
        }
        let op = MetaOp::Ack {
            group: group.clone(),
            ids: acked,
        };
        Ok((count, self.commit(&mut state, vec![op])?))
    }

    pub fn pending_summary(&self, group: &[u8]) -> Result<PendingSummary, StreamError> {
        let meta = self.meta();
        let g = Self::group_of(&meta.groups, group)?;
        let mut per_consumer: std::collections::BTreeMap<Bytes, u64> = Default::default();
        for p in g.pending.values() {
            *per_consumer.entry(p.consumer.clone()).or_default() += 1;
        }
        Ok(PendingSummary {
            count: g.pending.len() as u64,
            smallest: g.pending.keys().next().copied(),
            largest: g.pending.keys().next_back().copied(),
            per_consumer: per_consumer.into_iter().collect(),
        })
    }

    pub fn pending_range(
        &self,
        group: &[u8],
        filter: &PendingFilter,
    ) -> Result<Vec<PendingRow>, StreamError> {
        let meta = self.meta();
        let g = Self::group_of(&meta.groups, group)?;
        if filter.start > filter.end {
            return Ok(Vec::new());
        }
        let now = now_ms();
        Ok(g.pending
            .range(filter.start..=filter.end)
            .filter(|(_, p)| filter.consumer.as_ref().is_none_or(|c| *c == p.consumer))
            .map(|(id, p)| PendingRow {
                id: *id,
                consumer: p.consumer.clone(),
                idle_ms: idle(now, p.delivery_time_ms),
                delivery_count: p.delivery_count,
            })
            .filter(|row| row.idle_ms >= filter.min_idle_ms)
            .take(filter.count)
            .collect())
    }

    /// XCLAIM: hand pending entries idle at least `min_idle_ms` to `consumer`. Returns the
    /// claimed entries (IDs only with JUSTID, as entries without fields). Claimed entries over
    /// `bytes_max` (see [`Stream::range_within`]) are [`StreamError::ReplyTooLarge`], and
    /// nothing is claimed.
    pub fn claim(
        &self,
        group: &Bytes,
        consumer: &Bytes,
        min_idle_ms: u64,
        ids: &[StreamId],
        options: &ClaimOptions,
        bytes_max: u64,
    ) -> Result<(Vec<Entry>, Commit), StreamError> {
        let mut state = self.lock();
        let g = Self::group_of(&state.meta.groups, group)?.clone();
        let now = now_ms();
        let delivery_time = match (options.time_ms, options.idle_ms) {
            (Some(time), _) => time,
            (None, Some(idle)) => now.saturating_sub(i64::try_from(idle).unwrap_or(i64::MAX)),
            (None, None) => now,
        };
        let (mut claims, mut claimed_ids, mut dropped) = (Vec::new(), Vec::new(), Vec::new());
        for &id in ids {
            let exists = self.entry_exists_in(&state.meta, id)?;
            let pending = g.pending.get(&id);
            let previous_count = match (pending, options.force) {
                (Some(p), _) if idle(now, p.delivery_time_ms) >= min_idle_ms => p.delivery_count,
                (Some(_), _) => continue,
                (None, true) if exists => 0,
                (None, _) => continue,
            };
            if !exists {
                // The stream entry is gone: drop it from the PEL, as Redis 7 does.
                dropped.push(id);
                continue;
            }
            let count = options.retry_count.unwrap_or(if options.just_id {
                previous_count
            } else {
                previous_count + 1
            });
            claims.push((id, delivery_time, count));
            claimed_ids.push(id);
        }
        let claimed =
            self.claimed_entries(&state.meta, &claimed_ids, options.just_id, bytes_max)?;
        let mut ops = Vec::new();
        if let Some(last_id) = options.last_id.filter(|l| *l > g.last_delivered) {
            ops.push(MetaOp::GroupSetId {
                group: group.clone(),
                last_delivered: last_id,
                entries_read: g.entries_read,
            });
        }
        if !dropped.is_empty() {
            ops.push(MetaOp::PendingDrop {
                group: group.clone(),
                ids: dropped,
            });
        }
        // As in Redis 7, the consumer comes into being only if it claims something.
        if !claims.is_empty() {
            ops.push(MetaOp::Claim {
                group: group.clone(),
                consumer: consumer.clone(),
                claims,
                time_ms: now,
            });
        }
        let commit = self.commit(&mut state, ops)?;
        Ok((claimed, commit))
    }

    /// XAUTOCLAIM: scan the PEL from `start`, claiming up to `count` entries idle at least
    /// `min_idle_ms`; examines at most `count * 10` entries per call, as Redis does. Within
    /// `bytes_max` as [`Stream::claim`].
    // XAUTOCLAIM's own arguments, one for one, plus the reply's byte budget.
    #[allow(clippy::too_many_arguments)]
    pub fn autoclaim(
        &self,
        group: &Bytes,
        consumer: &Bytes,
        min_idle_ms: u64,
        start: StreamId,
        count: usize,
        just_id: bool,
        bytes_max: u64,
    ) -> Result<(AutoClaimed, Commit), StreamError> {
        let mut state = self.lock();
        let g = Self::group_of(&state.meta.groups, group)?.clone();
        let now = now_ms();
        let mut attempts = count.saturating_mul(10);
        let (mut claims, mut claimed_ids, mut deleted) = (Vec::new(), Vec::new(), Vec::new());
        let mut next = StreamId::MIN;
        for (&id, p) in g.pending.range(start..) {
            if claimed_ids.len() == count || attempts == 0 {
                next = id;
                break;
            }
            attempts -= 1;
            if idle(now, p.delivery_time_ms) < min_idle_ms {
                continue;
            }
            if !self.entry_exists_in(&state.meta, id)? {
                deleted.push(id);
                continue;
            }
            let delivery_count = if just_id {
                p.delivery_count
            } else {
                p.delivery_count + 1
            };
            claims.push((id, now, delivery_count));
            claimed_ids.push(id);
        }
        let claimed = self.claimed_entries(&state.meta, &claimed_ids, just_id, bytes_max)?;
        let mut ops = Vec::new();
        if !deleted.is_empty() {
            ops.push(MetaOp::PendingDrop {
                group: group.clone(),
                ids: deleted.clone(),
            });
        }
        // As in Redis 7, the consumer comes into being only if it claims something.
        if !claims.is_empty() {
            ops.push(MetaOp::Claim {
                group: group.clone(),
                consumer: consumer.clone(),
                claims,
                time_ms: now,
            });
        }
        let commit = self.commit(&mut state, ops)?;
        let claimed = AutoClaimed {
            next,
            claimed,
            deleted,
        };
        Ok((claimed, commit))
    }

    /// The entries a claim hands out: IDs only with JUSTID, else the entries within
    /// `bytes_max` (they exist: the caller holds the state lock and checked).
    fn claimed_entries(
        &self,
        meta: &super::stream_meta::StreamMeta,
        ids: &[StreamId],
        just_id: bool,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StreamError> {
        let id_only = |id| Entry {
            id,
            fields: Vec::new(),
        };
        if just_id {
            return Ok(ids.iter().copied().map(id_only).collect());
        }
        let entries = self.entries_in(meta, ids, bytes_max)?;
        Ok(ids
            .iter()
            .zip(entries)
            .map(|(&id, entry)| entry.unwrap_or_else(|| id_only(id)))
            .collect())
    }

    pub fn groups_info(&self) -> Vec<GroupInfo> {
        let meta = self.meta();
        let shape = self.shape(&meta, self.last_id());
        meta.groups
            .iter()
            .map(|(name, g)| GroupInfo {
                name: name.clone(),
                consumers: g.consumers.len() as u64,
                pending: g.pending.len() as u64,
                last_delivered: g.last_delivered,
                entries_read: g.entries_read,
                lag: shape.lag(g),
            })
            .collect()
    }

    /// Every group's full state (XINFO STREAM FULL).
    pub fn group_states(&self) -> Vec<(Bytes, GroupState)> {
        self.meta()
            .groups
            .iter()
            .map(|(name, g)| (name.clone(), g.clone()))
            .collect()
    }

    pub fn consumers_info(&self, group: &[u8]) -> Result<Vec<ConsumerInfo>, StreamError> {
        let meta = self.meta();
        let g = Self::group_of(&meta.groups, group)?;
        let now = now_ms();
        Ok(g.consumers
            .iter()
            .map(|(name, c)| ConsumerInfo {
                name: name.clone(),
                pending: g.pending_of(name) as u64,
                idle_ms: idle(now, c.seen_time_ms),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::stream::tests::{open, Fixture};
    use crate::broker::stream::IdSpec;

    /// No byte budget to speak of.
    const ANY: u64 = u64::MAX;
    use crate::storage::io::{CrashMode, FaultVfs};

    fn add(stream: &Fixture, ms: u64) -> StreamId {
        let added = stream
            .add(
                IdSpec::Explicit(StreamId::new(ms, 0)),
                vec![(Bytes::from("n"), Bytes::from(ms.to_string()))],
            )
            .unwrap();
        stream.broker.wait(added.commit).unwrap();
        added.id
    }

    #[test]
    fn reads_and_claims_over_their_byte_budget_change_nothing() {
        let stream = open(&FaultVfs::new(2));
        let ids: Vec<StreamId> = (1..=5).map(|ms| add(&stream, ms)).collect();
        let (g, alice, bob) = (Bytes::from("g"), Bytes::from("alice"), Bytes::from("bob"));
        stream
            .create_group(&g, GroupStart::Id(StreamId::MIN), None)
            .unwrap();
        // Each entry counts 16 + 1 + 1 + 8 = 26 bytes.
        let too_large = |r| matches!(r, Err(StreamError::ReplyTooLarge(77)));
        assert!(too_large(
            stream.read_group_new(&g, &alice, None, false, 77).map(drop)
        ));
        assert_eq!(
            stream.pending_summary(&g).unwrap().count,
            0,
            "nothing delivered"
        );
        assert_eq!(
            stream
                .read_group_new(&g, &alice, None, false, 130)
                .unwrap()
                .0
                .len(),
            5
        );
        assert!(too_large(
            stream
                .read_group_history(&g, &alice, StreamId::MIN, None, 77)
                .map(drop)
        ));
        let options = ClaimOptions::default();
        assert!(too_large(
            stream.claim(&g, &bob, 0, &ids, &options, 77).map(drop)
        ));
        assert!(too_large(
            stream
                .autoclaim(&g, &bob, 0, StreamId::MIN, 10, false, 77)
                .map(drop)
        ));
        let summary = stream.pending_summary(&g).unwrap();
        assert_eq!(
            summary.per_consumer,
            vec![(alice.clone(), 5)],
            "nothing claimed"
        );
        // JUSTID replies are IDs only: no entry bytes to refuse.
        let just_id = ClaimOptions {
            just_id: true,
            ..ClaimOptions::default()
        };
        assert_eq!(
            stream
                .claim(&g, &bob, 0, &ids, &just_id, 0)
                .unwrap()
                .0
                .len(),
            5
        );
    }

    #[test]
    fn a_group_delivers_acks_claims_and_survives_a_crash() {
        let vfs = FaultVfs::new(1);
        let stream = open(&vfs);
        let ids: Vec<StreamId> = (1..=5).map(|ms| add(&stream, ms)).collect();
        let (g, alice, bob) = (Bytes::from("g"), Bytes::from("alice"), Bytes::from("bob"));
        stream
            .create_group(&g, GroupStart::Id(StreamId::MIN), None)
            .unwrap();
        assert!(matches!(
            stream.create_group(&g, GroupStart::Last, None),
            Err(StreamError::BusyGroup)
        ));
        let got = stream
            .read_group_new(&g, &alice, Some(2), false, ANY)
            .unwrap()
            .0;
        assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), ids[..2]);
        let got = stream.read_group_new(&g, &bob, None, false, ANY).unwrap().0;
        assert_eq!(got.len(), 3);
        assert_eq!(
            stream.ack(&g, &[ids[0], StreamId::new(99, 0)]).unwrap().0,
            1
        );
        let summary = stream.pending_summary(b"g").unwrap();
        assert_eq!(
            (summary.count, summary.smallest, summary.largest),
            (4, Some(ids[1]), Some(ids[4]))
        );
        assert_eq!(
            summary.per_consumer,
            vec![(alice.clone(), 1), (bob.clone(), 3)]
        );
        let claimed = stream
            .claim(
                &g,
                &alice,
                0,
                &[ids[2], StreamId::new(77, 0)],
                &ClaimOptions::default(),
                ANY,
            )
            .unwrap()
            .0;
        assert_eq!(claimed.len(), 1);
        let history = stream
            .read_group_history(&g, &alice, StreamId::MIN, None, ANY)
            .unwrap()
            .0;
        assert_eq!(
            history.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![ids[1], ids[2]]
        );
        let auto = stream
            .autoclaim(&g, &bob, 0, StreamId::MIN, 2, false, ANY)
            .unwrap()
            .0;
        assert_eq!((auto.claimed.len(), auto.next), (2, ids[3]));
        // Waiting for the last commit makes every earlier one durable too: the deliveries,
        // claims and acknowledgements above survive the crash with the new consumer.
        let (_, commit) = stream.create_consumer(&g, &Bytes::from("zed")).unwrap();
        stream.broker.wait(commit).unwrap();
        vfs.crash(CrashMode::DropUnsynced);
        drop(stream);
        let stream = open(&vfs);
        let summary = stream.pending_summary(b"g").unwrap();
        assert_eq!(summary.count, 4);
        assert_eq!(summary.per_consumer, vec![(bob.clone(), 4)]);
        assert_eq!(stream.groups_info()[0].last_delivered, ids[4]);
        assert_eq!(stream.consumers_info(b"g").unwrap().len(), 3);
        assert_eq!(stream.delete_consumer(&g, &bob).unwrap().0, 4);
        assert!(stream.destroy_group(&g).unwrap().0);
        assert!(matches!(
            stream.pending_summary(b"g"),
            Err(StreamError::NoGroup)
        ));
    }

    #[test]
    fn lag_is_unknown_when_a_deletion_follows_the_last_delivered_entry() {
        let stream = open(&FaultVfs::new(3));
        let ids: Vec<StreamId> = (1..=6).map(|ms| add(&stream, ms)).collect();
        let g = Bytes::from("g");
        stream
            .create_group(&g, GroupStart::Id(StreamId::MIN), None)
            .unwrap();
        stream
            .read_group_new(&g, &Bytes::from("c"), Some(2), false, ANY)
            .unwrap();
        assert_eq!(stream.groups_info()[0].lag, Some(4));
        // Deleting an entry the group already read leaves the lag computable ...
        stream.delete(&[ids[0]]).unwrap();
        assert_eq!(stream.groups_info()[0].lag, Some(4));
        // ... deleting one it has not read does not.
        stream.delete(&[ids[4]]).unwrap();
        assert_eq!(stream.groups_info()[0].lag, None);
    }

    #[test]
    fn deliveries_not_yet_durable_are_delivered_again_after_a_crash() {
        let vfs = FaultVfs::new(2);
        let stream = open(&vfs);
        let g = Bytes::from("g");
        stream
            .create_group(&g, GroupStart::Id(StreamId::MIN), None)
            .unwrap();
        let ids: Vec<StreamId> = (1..=3).map(|ms| add(&stream, ms)).collect();
        assert_eq!(
            stream
                .read_group_new(&g, &Bytes::from("c"), None, false, ANY)
                .unwrap()
                .0
                .len(),
            3
        );
        vfs.crash(CrashMode::DropUnsynced);
        drop(stream);
        let stream = open(&vfs);
        let again = stream
            .read_group_new(&g, &Bytes::from("c"), None, false, ANY)
            .unwrap()
            .0;
        assert_eq!(
            again.iter().map(|e| e.id).collect::<Vec<_>>(),
            ids,
            "delivered again after the crash"
        );
    }
}
