//! A durable queue's acknowledgement state as the write-ahead log records it: which offsets
//! are acknowledged (or otherwise removed), how far messages were handed out, and which
//! dropped messages still have to reach their dead-letter exchange.
//!
//! Operations (owner = the queue, domain [`QUEUE`](crate::broker::store::domain::QUEUE); little
//! endian; `storage-format.md` § AMQP queues):
//!
//! | tag | operation | fields |
//! |----:|-----------|--------|
//! | 1 | Acked | `start u64, end u64`: offsets in `[start, end)` are removed |
//! | 2 | Snapshot | `floor u64, count u32, count × (start u64, end u64), delivered u64, intents u32, intents × (offset u64, reason u8)` |
//! | 3 | Delivered | `high u64`: every offset below it may have reached a consumer |
//! | 4 | DeadLetter | `offset u64, reason u8`: the message at `offset` (removed by an Acked in the same commit) must be dead-lettered |
//! | 5 | DeadLettered | `count u32, count × offset u64`: those dead letters reached their targets |
//!
//! Every operation is a set insertion, a maximum or a removal of a pending dead letter, so
//! applying one twice changes nothing: replay may start before a snapshot. A dead letter's
//! removal from its queue and its intent are one commit; its arrival at the targets and the
//! DeadLettered mark another, so a crash between the two makes recovery route it again
//! (at-least-once, never lost).

use std::collections::BTreeMap;

use byteorder::{ByteOrder, LittleEndian as LE};

use super::queue::DeadReason;
use super::ranges::RangeSet;

const OP_ACKED: u8 = 1;
const OP_SNAPSHOT: u8 = 2;
const OP_DELIVERED: u8 = 3;
const OP_DEAD_LETTER: u8 = 4;
const OP_DEAD_LETTERED: u8 = 5;

/// What the operations build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckRecord {
    pub acked: RangeSet,
    /// Every offset below this is removed.
    pub floor: u64,
    /// Every offset below this may have been delivered (for the redelivered flag after a
    /// restart).
    pub delivered_high: u64,
    /// Removed messages not yet dead-lettered, by offset.
    pub intents: BTreeMap<u64, DeadReason>,
}

fn reason_code(reason: DeadReason) -> u8 {
    match reason {
        DeadReason::Rejected => 1,
        DeadReason::Expired => 2,
        DeadReason::Maxlen => 3,
    }
}

fn reason_from(code: u8) -> Option<DeadReason> {
    match code {
        1 => Some(DeadReason::Rejected),
        2 => Some(DeadReason::Expired),
        3 => Some(DeadReason::Maxlen),
        _ => None,
    }
}

// Format: { 1 | start u64 | end u64 }
pub fn encode_acked(start: u64, end: u64) -> Vec<u8> {
    let mut op = vec![OP_ACKED; 17];
    LE::write_u64(&mut op[1..9], start);
    LE::write_u64(&mut op[9..17], end);
    op
}

// Format: { 3 | high u64 }
pub fn encode_delivered(high: u64) -> Vec<u8> {
    let mut op = vec![OP_DELIVERED];
    op.extend_from_slice(&high.to_le_bytes());
    op
}

// Format: { 4 | offset u64 | reason u8 }
pub fn encode_dead_letter(offset: u64, reason: DeadReason) -> Vec<u8> {
    let mut op = vec![OP_DEAD_LETTER];
    op.extend_from_slice(&offset.to_le_bytes());
    op.push(reason_code(reason));
    op
}

// Format: { 5 | count u32 | count × offset u64 }
pub fn encode_dead_lettered(offsets: &[u64]) -> Vec<u8> {
    let mut op = vec![OP_DEAD_LETTERED];
    op.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
    for offset in offsets {
        op.extend_from_slice(&offset.to_le_bytes());
    }
    op
}

impl AckRecord {
    // Format: { 2 | floor u64 | count u32 | (start u64, end u64)* | delivered u64 |
    //           intents u32 | (offset u64, reason u8)* }
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let mut op = vec![OP_SNAPSHOT];
        op.extend_from_slice(&self.floor.to_le_bytes());
        let ranges: Vec<(u64, u64)> = self.acked.iter().collect();
        op.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
        for (s, e) in ranges {
            op.extend_from_slice(&s.to_le_bytes());
            op.extend_from_slice(&e.to_le_bytes());
        }
        op.extend_from_slice(&self.delivered_high.to_le_bytes());
        op.extend_from_slice(&(self.intents.len() as u32).to_le_bytes());
        for (offset, reason) in &self.intents {
            op.extend_from_slice(&offset.to_le_bytes());
            op.push(reason_code(*reason));
        }
        debug_assert!({
            let mut check = AckRecord::default();
            check.apply(&op) && check == *self
        });
        op
    }

    /// Apply one operation; `false` for bytes that are not one (they are ignored: at worst a
    /// message is delivered again).
    pub fn apply(&mut self, op: &[u8]) -> bool {
        let Some((&tag, body)) = op.split_first() else {
            return false;
        };
        match tag {
            OP_ACKED if body.len() == 16 => {
                self.acked
                    .insert_range(LE::read_u64(&body[0..8]), LE::read_u64(&body[8..16]));
            }
            OP_DELIVERED if body.len() == 8 => {
                self.delivered_high = self.delivered_high.max(LE::read_u64(body));
            }
            OP_DEAD_LETTER if body.len() == 9 => {
                let Some(reason) = reason_from(body[8]) else {
                    return false;
                };
                self.intents.insert(LE::read_u64(body), reason);
            }
            OP_DEAD_LETTERED if body.len() >= 4 => {
                let count = LE::read_u32(body) as usize;
                if body.len() != 4 + count * 8 {
                    return false;
                }
                for i in 0..count {
                    self.intents.remove(&LE::read_u64(&body[4 + i * 8..]));
                }
            }
            OP_SNAPSHOT => match decode_snapshot(body) {
                Some(snapshot) => *self = snapshot,
                None => return false,
            },
            _ => return false,
        }
        true
    }
}

fn decode_snapshot(body: &[u8]) -> Option<AckRecord> {
    let mut record = AckRecord {
        floor: LE::read_u64(body.get(0..8)?),
        ..AckRecord::default()
    };
    let count = LE::read_u32(body.get(8..12)?) as usize;
    let ranges_end = 12usize.checked_add(count.checked_mul(16)?)?;
    let ranges = body.get(12..ranges_end)?;
    for range in ranges.chunks_exact(16) {
        record
            .acked
            .insert_range(LE::read_u64(&range[0..8]), LE::read_u64(&range[8..16]));
    }
    let rest = &body[ranges_end..];
    record.delivered_high = LE::read_u64(rest.get(0..8)?);
    let intents = LE::read_u32(rest.get(8..12)?) as usize;
    let entries = rest.get(12..)?;
    if entries.len() != intents.checked_mul(9)? {
        return None;
    }
    for entry in entries.chunks_exact(9) {
        record
            .intents
            .insert(LE::read_u64(&entry[0..8]), reason_from(entry[8])?);
    }
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_idempotent_and_snapshots_round_trip() {
        let ops = [
            encode_acked(0, 3),
            encode_delivered(7),
            encode_dead_letter(5, DeadReason::Expired),
            encode_dead_letter(6, DeadReason::Maxlen),
            encode_dead_lettered(&[5]),
            encode_acked(9, 10),
        ];
        let mut once = AckRecord::default();
        for op in &ops {
            assert!(once.apply(op));
        }
        let mut twice = once.clone();
        for op in &ops {
            twice.apply(op);
        }
        assert_eq!(once, twice, "replaying again changes nothing");
        assert!(once.acked.contains(2) && once.acked.contains(9) && !once.acked.contains(5));
        assert_eq!(
            once.intents.iter().collect::<Vec<_>>(),
            vec![(&6, &DeadReason::Maxlen)]
        );
        let snapshot = once.encode_snapshot();
        let mut restored = AckRecord::default();
        assert!(restored.apply(&snapshot));
        assert_eq!(restored, once);
        for len in 1..snapshot.len() {
            assert!(
                !AckRecord::default().apply(&snapshot[..len]),
                "cut at {len}"
            );
        }
        assert!(!once.apply(&[99, 1, 2]));
    }
}
