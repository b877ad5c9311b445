//! Stream entry IDs: `<milliseconds>-<sequence>`, both u64, ordered lexicographically.

use std::fmt;

/// The ID of a stream entry. Ordering is by `ms`, then `seq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

/// Bytes of an ID stored as a record key: ms then seq, big endian, so byte order is ID order.
pub const STREAM_ID_KEY_BYTES: usize = 16;

impl StreamId {
    pub const MIN: StreamId = StreamId { ms: 0, seq: 0 };
    pub const MAX: StreamId = StreamId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    pub fn new(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    /// The smallest ID greater than this one, if any.
    pub fn successor(self) -> Option<StreamId> {
        match (self.ms, self.seq) {
            (_, seq) if seq < u64::MAX => Some(StreamId::new(self.ms, seq + 1)),
            (ms, _) if ms < u64::MAX => Some(StreamId::new(ms + 1, 0)),
            _ => None,
        }
    }

    /// The largest ID smaller than this one, if any.
    pub fn predecessor(self) -> Option<StreamId> {
        match (self.ms, self.seq) {
            (_, seq) if seq > 0 => Some(StreamId::new(self.ms, seq - 1)),
            (ms, _) if ms > 0 => Some(StreamId::new(ms - 1, u64::MAX)),
            _ => None,
        }
    }

    pub fn to_key(self) -> [u8; STREAM_ID_KEY_BYTES] {
        let mut key = [0u8; STREAM_ID_KEY_BYTES];
        key[..8].copy_from_slice(&self.ms.to_be_bytes());
        key[8..].copy_from_slice(&self.seq.to_be_bytes());
        key
    }

    pub fn from_key(key: &[u8]) -> Option<StreamId> {
        let key: &[u8; STREAM_ID_KEY_BYTES] = key.try_into().ok()?;
        let (ms, seq) = key.split_at(8);
        Some(StreamId::new(
            u64::from_be_bytes(ms.try_into().ok()?),
            u64::from_be_bytes(seq.try_into().ok()?),
        ))
    }

    /// The record timestamp that carries this ID's milliseconds (clamped into i64), so the log's
    /// time index finds IDs.
    pub fn timestamp_ms(self) -> i64 {
        i64::try_from(self.ms).unwrap_or(i64::MAX)
    }

    /// Parse `ms-seq`, or `ms` alone with `missing_seq` as the sequence (0 for a start bound,
    /// u64::MAX for an end bound). `None` for anything else, as Redis rejects it.
    pub fn parse(text: &[u8], missing_seq: u64) -> Option<StreamId> {
        let text = std::str::from_utf8(text).ok()?;
        let (ms, seq) = match text.split_once('-') {
            Some((ms, seq)) => (ms, Some(seq)),
            None => (text, None),
        };
        let ms = parse_u64(ms)?;
        let seq = match seq {
            Some(seq) => parse_u64(seq)?,
            None => missing_seq,
        };
        Some(StreamId::new(ms, seq))
    }
}

/// Redis accepts only plain decimal digits here (no sign, no spaces).
fn parse_u64(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mut ms, mut seq) = (itoa::Buffer::new(), itoa::Buffer::new());
        f.write_str(ms.format(self.ms))?;
        f.write_str("-")?;
        f.write_str(seq.format(self.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_format_order_and_keys() {
        assert_eq!(StreamId::parse(b"5-3", 0), Some(StreamId::new(5, 3)));
        assert_eq!(StreamId::parse(b"5", 0), Some(StreamId::new(5, 0)));
        assert_eq!(
            StreamId::parse(b"5", u64::MAX),
            Some(StreamId::new(5, u64::MAX))
        );
        for bad in [
            &b""[..],
            b"-",
            b"5-",
            b"-5",
            b"a-1",
            b"1-b",
            b"+1",
            b"1-2-3",
            b"18446744073709551616",
        ] {
            assert_eq!(
                StreamId::parse(bad, 0),
                None,
                "{:?}",
                std::str::from_utf8(bad)
            );
        }
        assert_eq!(StreamId::new(1, 2).to_string(), "1-2");
        assert!(StreamId::new(1, u64::MAX) < StreamId::new(2, 0));
        for id in [StreamId::MIN, StreamId::new(1, 2), StreamId::MAX] {
            assert_eq!(StreamId::from_key(&id.to_key()), Some(id));
        }
        assert_eq!(
            StreamId::new(1, u64::MAX).successor(),
            Some(StreamId::new(2, 0))
        );
        assert_eq!(StreamId::MAX.successor(), None);
        assert_eq!(
            StreamId::new(2, 0).predecessor(),
            Some(StreamId::new(1, u64::MAX))
        );
        assert_eq!(StreamId::MIN.predecessor(), None);
    }
}
