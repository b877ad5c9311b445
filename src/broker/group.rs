//! Consumer groups: the last delivered ID, the consumers, and the pending entries list (PEL) of
//! entries delivered but not yet acknowledged. Pure state; changes arrive as journal
//! operations ([`super::stream_meta::MetaOp`]) so replay rebuilds exactly this.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::stream_id::StreamId;

/// One delivered, unacknowledged entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingEntry {
    pub consumer: Bytes,
    /// When it was last delivered (ms since the epoch).
    pub delivery_time_ms: i64,
    pub delivery_count: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerState {
    /// Last time the consumer read or claimed (ms since the epoch).
    pub seen_time_ms: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupState {
    pub last_delivered: StreamId,
    /// Entries the group has read, for XINFO's lag; unknown after some operations.
    pub entries_read: Option<u64>,
    pub consumers: BTreeMap<Bytes, ConsumerState>,
    pub pending: BTreeMap<StreamId, PendingEntry>,
}

impl GroupState {
    pub fn new(last_delivered: StreamId, entries_read: Option<u64>) -> GroupState {
        GroupState {
            last_delivered,
            entries_read,
            ..GroupState::default()
        }
    }

    /// Create the consumer if missing and mark it seen.
    pub fn touch_consumer(&mut self, consumer: &Bytes, now_ms: i64) {
        self.consumers
            .entry(consumer.clone())
            .or_default()
            .seen_time_ms = now_ms;
    }

    /// Pending entries owned by `consumer`.
    pub fn pending_of(&self, consumer: &[u8]) -> usize {
        self.pending
            .values()
            .filter(|p| p.consumer == consumer)
            .count()
    }

    /// Deliver `ids` to `consumer`: new deliveries (with `advance`) move the last delivered ID;
    /// without `noack` each becomes pending with one more delivery. (The read counter is set
    /// by the caller: Redis derives it from the stream's shape at delivery time.)
    pub fn deliver(
        &mut self,
        consumer: &Bytes,
        ids: &[StreamId],
        now_ms: i64,
        advance: bool,
        noack: bool,
    ) {
        self.touch_consumer(consumer, now_ms);
        for &id in ids {
            if advance && id > self.last_delivered {
                self.last_delivered = id;
            }
            if noack {
                continue;
            }
            let entry = self.pending.entry(id).or_insert(PendingEntry {
                consumer: consumer.clone(),
                delivery_time_ms: now_ms,
                delivery_count: 0,
            });
            entry.consumer = consumer.clone();
            entry.delivery_time_ms = now_ms;
            entry.delivery_count += 1;
        }
    }

    /// Acknowledge: drop from the PEL; returns how many were pending.
    pub fn ack(&mut self, ids: &[StreamId]) -> u64 {
        ids.iter()
            .filter(|id| self.pending.remove(id).is_some())
            .count() as u64
    }

    /// Hand pending entries to `consumer` with the given delivery time and count.
    pub fn claim(&mut self, consumer: &Bytes, claims: &[(StreamId, i64, u64)], now_ms: i64) {
        self.touch_consumer(consumer, now_ms);
        for &(id, delivery_time_ms, delivery_count) in claims {
            self.pending.insert(
                id,
                PendingEntry {
                    consumer: consumer.clone(),
                    delivery_time_ms,
                    delivery_count,
                },
            );
        }
    }

    /// Delete a consumer and its pending entries; returns how many were pending.
    pub fn delete_consumer(&mut self, consumer: &[u8]) -> u64 {
        self.consumers.remove(consumer);
        let before = self.pending.len();
        self.pending.retain(|_, p| p.consumer != consumer);
        (before - self.pending.len()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_ack_claim_and_delete() {
        let mut group = GroupState::new(StreamId::MIN, Some(0));
        let (alice, bob) = (Bytes::from("alice"), Bytes::from("bob"));
        let ids = [
            StreamId::new(1, 0),
            StreamId::new(2, 0),
            StreamId::new(3, 0),
        ];
        group.deliver(&alice, &ids, 100, true, false);
        assert_eq!(group.last_delivered, StreamId::new(3, 0));
        assert_eq!(group.pending_of(b"alice"), 3);
        group.deliver(&alice, &ids[..1], 200, false, false);
        assert_eq!(group.pending[&ids[0]].delivery_count, 2);
        assert_eq!(group.ack(&[ids[1], StreamId::new(9, 9)]), 1);
        group.claim(&bob, &[(ids[2], 300, 5)], 300);
        assert_eq!(
            (group.pending_of(b"alice"), group.pending_of(b"bob")),
            (1, 1)
        );
        assert_eq!(group.delete_consumer(b"alice"), 1);
        assert_eq!(group.pending.len(), 1);
        group.deliver(&bob, &[StreamId::new(4, 0)], 400, true, true);
        assert_eq!(group.pending.len(), 1, "NOACK deliveries are not pending");
        assert_eq!(group.last_delivered, StreamId::new(4, 0));
    }
}
