//! Record batches: the unit of writing, checksumming and recovery.
//!
//! Format (48-byte header, little endian), see `storage-format.md` § Batch:
//! `{ magic u32 | version u8 | flags u8 | reserved u16 | batch_len u32 | crc u32 |
//!    base_offset u64 | record_count u32 | reserved u32 | first_timestamp_ms i64 |
//!    max_timestamp_ms i64 } records*`
//! The CRC-32 (IEEE, crc32fast) covers every byte of the batch except the crc field itself.

use byteorder::{ByteOrder, LittleEndian as LE};
use bytes::Bytes;

use super::error::FormatError;
use super::record::{decode_record, Record, RecordView, RECORD_BYTES_MIN};

/// "PTKB" read as a little-endian u32.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"PTKB");
pub const BATCH_VERSION: u8 = 1;

const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + 4;
const FLAGS_AT: usize = VERSION_AT + 1;
const RESERVED16_AT: usize = FLAGS_AT + 1;
const LENGTH_AT: usize = RESERVED16_AT + 2;
const CRC_AT: usize = LENGTH_AT + 4;
const BASE_OFFSET_AT: usize = CRC_AT + 4;
const COUNT_AT: usize = BASE_OFFSET_AT + 8;
const RESERVED32_AT: usize = COUNT_AT + 4;
const FIRST_TIMESTAMP_AT: usize = RESERVED32_AT + 4;
const MAX_TIMESTAMP_AT: usize = FIRST_TIMESTAMP_AT + 8;
pub const BATCH_HEADER_BYTES: usize = MAX_TIMESTAMP_AT + 8;

/// The format's ceiling on one batch; configuration may only lower it. Keeps a corrupt length
/// field from ever asking for an absurd allocation.
pub const BATCH_BYTES_MAX: u32 = 256 * 1024 * 1024;

const _: () = assert!(BATCH_HEADER_BYTES == 48);
const _: () = assert!(BATCH_HEADER_BYTES.is_multiple_of(8));
const _: () = assert!(BATCH_HEADER_BYTES + RECORD_BYTES_MIN <= BATCH_BYTES_MAX as usize);

/// The decoded fixed header of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub batch_len: u32,
    pub crc: u32,
    pub base_offset: u64,
    pub record_count: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
}

impl BatchHeader {
    /// Offset one past the batch's last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// Parse and sanity-check a header. This does not verify the CRC: that needs the payload.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, FormatError> {
        if buf.len() < BATCH_HEADER_BYTES {
            return Err(FormatError::BatchTruncated {
                expected: BATCH_HEADER_BYTES as u32,
                available: buf.len() as u64,
            });
        }
        let magic = LE::read_u32(&buf[MAGIC_AT..]);
        if magic != BATCH_MAGIC {
            return Err(FormatError::BadMagic(magic));
        }
        if buf[VERSION_AT] != BATCH_VERSION {
            return Err(FormatError::UnsupportedVersion(buf[VERSION_AT]));
        }
        let batch_len = LE::read_u32(&buf[LENGTH_AT..]);
        let min_len = (BATCH_HEADER_BYTES + RECORD_BYTES_MIN) as u32;
        if !(min_len..=BATCH_BYTES_MAX).contains(&batch_len) {
            return Err(FormatError::BadBatchLength(batch_len));
        }
        let record_count = LE::read_u32(&buf[COUNT_AT..]);
        // Zero records, or more records than could fit, can only be garbage.
        if record_count == 0
            || record_count > (batch_len - BATCH_HEADER_BYTES as u32) / RECORD_BYTES_MIN as u32
        {
            return Err(FormatError::RecordCountMismatch {
                declared: record_count,
                found: 0,
            });
        }
        Ok(BatchHeader {
            batch_len,
            crc: LE::read_u32(&buf[CRC_AT..]),
            base_offset: LE::read_u64(&buf[BASE_OFFSET_AT..]),
            record_count,
            first_timestamp_ms: LE::read_i64(&buf[FIRST_TIMESTAMP_AT..]),
            max_timestamp_ms: LE::read_i64(&buf[MAX_TIMESTAMP_AT..]),
        })
    }
}

fn checksum(batch: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&batch[..CRC_AT]);
    hasher.update(&batch[CRC_AT + 4..]);
    hasher.finalize()
}

/// Bytes a batch of `records` will take.
pub fn encoded_batch_len(records: &[Record]) -> u64 {
    BATCH_HEADER_BYTES as u64 + records.iter().map(|r| r.encoded_len() as u64).sum::<u64>()
}

/// Encode `records` (at least one; the caller checks the size limit) as one batch whose first
/// record gets `base_offset`, appending the bytes to `out`.
pub fn encode_batch(base_offset: u64, records: &[Record], out: &mut Vec<u8>) -> BatchHeader {
    assert!(!records.is_empty(), "a batch holds at least one record");
    let start = out.len();
    out.resize(start + BATCH_HEADER_BYTES, 0);
    let mut max_timestamp_ms = i64::MIN;
    for record in records {
        record.encode_into(out);
        max_timestamp_ms = max_timestamp_ms.max(record.timestamp_ms);
    }
    let batch_len = u32::try_from(out.len() - start).expect("caller enforces the batch limit");
    let header = &mut out[start..start + BATCH_HEADER_BYTES];
    LE::write_u32(&mut header[MAGIC_AT..], BATCH_MAGIC);
    header[VERSION_AT] = BATCH_VERSION;
    LE::write_u32(&mut header[LENGTH_AT..], batch_len);
    LE::write_u64(&mut header[BASE_OFFSET_AT..], base_offset);
    LE::write_u32(&mut header[COUNT_AT..], records.len() as u32);
    LE::write_i64(&mut header[FIRST_TIMESTAMP_AT..], records[0].timestamp_ms);
    LE::write_i64(&mut header[MAX_TIMESTAMP_AT..], max_timestamp_ms);
    let crc = checksum(&out[start..]);
    LE::write_u32(&mut out[start + CRC_AT..], crc);
    let parsed = BatchHeader::parse(&out[start..]).expect("freshly encoded header parses");
    debug_assert_eq!(verify_batch(&out[start..]), Ok(parsed));
    parsed
}

/// Fully verify one batch: `batch` must be exactly the batch's bytes. Checks the header, the
/// CRC, and that the records decode, number `record_count` and match the header's timestamps.
pub fn verify_batch(batch: &[u8]) -> Result<BatchHeader, FormatError> {
    let header = BatchHeader::parse(batch)?;
    if batch.len() as u64 != u64::from(header.batch_len) {
        return Err(FormatError::BatchTruncated {
            expected: header.batch_len,
            available: batch.len() as u64,
        });
    }
    let computed = checksum(batch);
    if computed != header.crc {
        return Err(FormatError::ChecksumMismatch {
            stored: header.crc,
            computed,
        });
    }
    let mut rest = &batch[BATCH_HEADER_BYTES..];
    let mut found = 0u32;
    let mut max_timestamp_ms = i64::MIN;
    while !rest.is_empty() {
        let (record, after) = decode_record(rest, 0)?;
        if found == 0 && record.timestamp_ms != header.first_timestamp_ms {
            return Err(FormatError::TimestampMismatch);
        }
        max_timestamp_ms = max_timestamp_ms.max(record.timestamp_ms);
        found += 1;
        rest = after;
    }
    if found != header.record_count {
        return Err(FormatError::RecordCountMismatch {
            declared: header.record_count,
            found,
        });
    }
    if max_timestamp_ms != header.max_timestamp_ms {
        return Err(FormatError::TimestampMismatch);
    }
    Ok(header)
}

/// A verified batch as returned by reads. Records before `skip_before` (which the reader did
/// not ask for) are hidden.
#[derive(Clone, Debug)]
pub struct BatchView {
    header: BatchHeader,
    bytes: Bytes,
    skip_before: u64,
}

impl BatchView {
    /// Wrap bytes that [`verify_batch`] accepted.
    pub(crate) fn new(header: BatchHeader, bytes: Bytes, skip_before: u64) -> BatchView {
        debug_assert_eq!(bytes.len() as u64, u64::from(header.batch_len));
        BatchView {
            header,
            bytes,
            skip_before,
        }
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The raw, verified batch bytes (header included), e.g. for zero-copy replication.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// First offset this view yields.
    pub fn first_offset(&self) -> u64 {
        self.header.base_offset.max(self.skip_before)
    }

    pub fn next_offset(&self) -> u64 {
        self.header.next_offset()
    }

    pub fn records(&self) -> RecordIter<'_> {
        RecordIter {
            rest: &self.bytes[BATCH_HEADER_BYTES..],
            next_offset: self.header.base_offset,
            skip_before: self.skip_before,
        }
    }
}

/// Iterates the records of a verified batch.
pub struct RecordIter<'a> {
    rest: &'a [u8],
    next_offset: u64,
    skip_before: u64,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = RecordView<'a>;

    fn next(&mut self) -> Option<RecordView<'a>> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            // Verified on read; an error here is impossible, and ending is the safe answer.
            let (record, after) = decode_record(self.rest, self.next_offset).ok()?;
            self.rest = after;
            self.next_offset += 1;
            if record.offset >= self.skip_before {
                return Some(record);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record::new(10, "a").with_key("k"),
            Record::new(30, "bb").with_header("h", "v"),
            Record::new(20, vec![7u8; 1000]),
        ]
    }

    #[test]
    fn encode_then_verify() {
        let mut buf = Vec::new();
        let header = encode_batch(100, &sample(), &mut buf);
        assert_eq!(buf.len() as u64, encoded_batch_len(&sample()));
        assert_eq!(header.base_offset, 100);
        assert_eq!(header.record_count, 3);
        assert_eq!(header.first_timestamp_ms, 10);
        assert_eq!(header.max_timestamp_ms, 30);
        assert_eq!(verify_batch(&buf), Ok(header));
        let view = BatchView::new(header, Bytes::from(buf), 101);
        let offsets: Vec<u64> = view.records().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![101, 102]);
        assert_eq!(view.records().next().unwrap().to_record(), sample()[1]);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode_batch(0, &sample()[..2], &mut buf);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    verify_batch(&bad).is_err(),
                    "flip at {byte}:{bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let mut buf = Vec::new();
        encode_batch(0, &sample(), &mut buf);
        for len in 0..buf.len() {
            assert!(verify_batch(&buf[..len]).is_err());
        }
    }
}
