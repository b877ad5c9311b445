//! Sparse offset and time indexes of one segment.
//!
//! While a segment is active its index lives only in memory and grows with every batch. When the
//! segment is sealed (or the log closes cleanly) the index is written to two files, `.idx` and
//! `.tix`, each with a header that records how many log bytes it describes and a CRC over its
//! entries. An index file is trusted only if its CRC holds and it describes exactly the log
//! file's current length; anything else (missing, stale, corrupt, ahead of the log) means the
//! index is rebuilt by scanning the segment. The log is the truth; indexes are caches.
//!
//! Format, see `storage-format.md` § Index files:
//! header `{ magic u32 | version u8 | reserved [u8; 3] | base_offset u64 | next_offset u64 |
//!           covered_bytes u64 | entry_count u32 | crc u32 }`
//! `.idx` entry `{ relative_offset u32 | position u32 }`
//! `.tix` entry `{ max_timestamp_ms i64 | relative_offset u32 | position u32 }`

use byteorder::{ByteOrder, LittleEndian as LE};

use super::batch::BatchHeader;

pub const OFFSET_INDEX_MAGIC: u32 = u32::from_le_bytes(*b"PTKI");
pub const TIME_INDEX_MAGIC: u32 = u32::from_le_bytes(*b"PTKT");
pub const INDEX_VERSION: u8 = 1;

const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + 4;
const BASE_OFFSET_AT: usize = VERSION_AT + 4;
const NEXT_OFFSET_AT: usize = BASE_OFFSET_AT + 8;
const COVERED_BYTES_AT: usize = NEXT_OFFSET_AT + 8;
const ENTRY_COUNT_AT: usize = COVERED_BYTES_AT + 8;
const CRC_AT: usize = ENTRY_COUNT_AT + 4;
pub const INDEX_HEADER_BYTES: usize = CRC_AT + 4;
pub const OFFSET_ENTRY_BYTES: usize = 4 + 4;
pub const TIME_ENTRY_BYTES: usize = 8 + 4 + 4;

const _: () = assert!(INDEX_HEADER_BYTES == 40);

/// Points at the start of the batch whose first record is `base_offset + relative_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// Every record in batches up to and including the batch at `position` has a timestamp at most
/// `max_timestamp_ms` (a running maximum, so producer clocks may go backwards).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    pub max_timestamp_ms: i64,
    pub relative_offset: u32,
    pub position: u32,
}

/// The in-memory indexes of one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentIndex {
    pub base_offset: u64,
    /// One past the last record described.
    pub next_offset: u64,
    /// Log bytes described: the position after the last batch observed.
    pub covered_bytes: u64,
    /// Running maximum timestamp over every record described (`i64::MIN` when empty).
    pub max_timestamp_ms: i64,
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
    bytes_since_offset_entry: u64,
    bytes_since_time_entry: u64,
    /// Base offset and position of the newest batch observed (used when sealing).
    last_batch: Option<(u64, u64)>,
}

/// Why an index file was rejected (it is then rebuilt from the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("index file too short or bad magic/version")]
    BadHeader,
    #[error("index checksum mismatch")]
    Checksum,
    #[error("index describes {index} log bytes but the log holds {log}")]
    Stale { index: u64, log: u64 },
    #[error("index is for another segment or inconsistent with its pair")]
    Mismatch,
    #[error("index entries out of order or out of range")]
    BadEntries,
}

impl SegmentIndex {
    pub fn new(base_offset: u64) -> SegmentIndex {
        SegmentIndex {
            base_offset,
            next_offset: base_offset,
            covered_bytes: 0,
            max_timestamp_ms: i64::MIN,
            offsets: Vec::new(),
            times: Vec::new(),
            bytes_since_offset_entry: 0,
            bytes_since_time_entry: 0,
            last_batch: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.covered_bytes == 0
    }

    /// Record a batch written (or found by a scan) at `position`, right after the last one.
    /// Adds a sparse entry once `interval_bytes` of log have passed since the previous one.
    pub fn observe(&mut self, header: &BatchHeader, position: u64, interval_bytes: u64) {
        debug_assert_eq!(
            position, self.covered_bytes,
            "batches are observed in order"
        );
        debug_assert_eq!(header.base_offset, self.next_offset, "offsets are dense");
        let relative_offset = (header.base_offset - self.base_offset) as u32;
        let position32 = position as u32;
        if self.bytes_since_offset_entry >= interval_bytes {
            self.offsets.push(OffsetEntry {
                relative_offset,
                position: position32,
            });
            self.bytes_since_offset_entry = 0;
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(header.max_timestamp_ms);
        let batch_len = u64::from(header.batch_len);
        self.bytes_since_offset_entry += batch_len;
        self.bytes_since_time_entry += batch_len;
        if self.bytes_since_time_entry >= interval_bytes {
            self.push_time_entry(relative_offset, position32);
        }
        self.next_offset = header.next_offset();
        self.covered_bytes = position + batch_len;
        self.last_batch = Some((header.base_offset, position));
    }

    fn push_time_entry(&mut self, relative_offset: u32, position: u32) {
        let last = self.times.last().map_or(i64::MIN, |t| t.max_timestamp_ms);
        if self.max_timestamp_ms > last || self.times.is_empty() {
            self.times.push(TimeEntry {
                max_timestamp_ms: self.max_timestamp_ms,
                relative_offset,
                position,
            });
            self.bytes_since_time_entry = 0;
        }
    }

    /// Called when the segment is sealed: make the last time entry carry the segment's maximum
    /// timestamp, so a sealed segment's newest timestamp is known from its index alone.
    pub fn seal(&mut self) {
        let Some((last_batch_base, last_batch_position)) = self.last_batch else {
            return;
        };
        let last = self.times.last().map_or(i64::MIN, |t| t.max_timestamp_ms);
        if self.times.is_empty() || self.max_timestamp_ms > last {
            self.times.push(TimeEntry {
                max_timestamp_ms: self.max_timestamp_ms,
                relative_offset: (last_batch_base - self.base_offset) as u32,
                position: last_batch_position as u32,
            });
            self.bytes_since_time_entry = 0;
        }
    }

    /// Prepare a decoded index for further batches: forget what it says past the last offset
    /// entry, so a scan from the returned position can observe those batches again. The running
    /// maximum timestamp is kept, which keeps every later time entry a valid upper bound.
    /// Returns `(position, base_offset)` to scan from.
    pub fn resume_from_last_entry(&mut self) -> (u64, u64) {
        let (position, base) = self.offsets.last().map_or((0, self.base_offset), |e| {
            (
                u64::from(e.position),
                self.base_offset + u64::from(e.relative_offset),
            )
        });
        self.times.retain(|e| u64::from(e.position) < position);
        self.covered_bytes = position;
        self.next_offset = base;
        self.bytes_since_offset_entry = 0;
        self.bytes_since_time_entry = 0;
        self.last_batch = None;
        (position, base)
    }

    /// Where to start scanning for `offset`: the position of the last indexed batch whose base
    /// offset is at most `offset`, and that base offset (or the segment start).
    pub fn position_for_offset(&self, offset: u64) -> (u64, u64) {
        let relative = offset.saturating_sub(self.base_offset);
        let relative = u32::try_from(relative).unwrap_or(u32::MAX);
        let n = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative);
        match n.checked_sub(1).map(|i| self.offsets[i]) {
            Some(e) => (
                u64::from(e.position),
                self.base_offset + u64::from(e.relative_offset),
            ),
            None => (0, self.base_offset),
        }
    }

    /// Where to start scanning for the first record with timestamp >= `timestamp_ms`: the last
    /// time entry whose running maximum is still below the target (nothing at or before it can
    /// match), or the segment start.
    pub fn position_for_timestamp(&self, timestamp_ms: i64) -> (u64, u64) {
        let n = self
            .times
            .partition_point(|e| e.max_timestamp_ms < timestamp_ms);
        match n.checked_sub(1).map(|i| self.times[i]) {
            Some(e) => (
                u64::from(e.position),
                self.base_offset + u64::from(e.relative_offset),
            ),
            None => (0, self.base_offset),
        }
    }

    fn encode_header(&self, magic: u32, entries: &[u8], out: &mut Vec<u8>) {
        let mut header = [0u8; INDEX_HEADER_BYTES];
        LE::write_u32(&mut header[MAGIC_AT..], magic);
        header[VERSION_AT] = INDEX_VERSION;
        LE::write_u64(&mut header[BASE_OFFSET_AT..], self.base_offset);
        LE::write_u64(&mut header[NEXT_OFFSET_AT..], self.next_offset);
        LE::write_u64(&mut header[COVERED_BYTES_AT..], self.covered_bytes);
        let entry_size = if magic == OFFSET_INDEX_MAGIC {
            OFFSET_ENTRY_BYTES
        } else {
            TIME_ENTRY_BYTES
        };
        LE::write_u32(
            &mut header[ENTRY_COUNT_AT..],
            (entries.len() / entry_size) as u32,
        );
        let crc = index_checksum(&header, entries);
        LE::write_u32(&mut header[CRC_AT..], crc);
        out.extend_from_slice(&header);
        out.extend_from_slice(entries);
    }

    /// The `.idx` file's bytes.
    pub fn encode_offset_file(&self) -> Vec<u8> {
        let mut entries = vec![0u8; self.offsets.len() * OFFSET_ENTRY_BYTES];
        for (e, chunk) in self
            .offsets
            .iter()
            .zip(entries.chunks_exact_mut(OFFSET_ENTRY_BYTES))
        {
            LE::write_u32(&mut chunk[0..4], e.relative_offset);
            LE::write_u32(&mut chunk[4..8], e.position);
        }
        let mut out = Vec::with_capacity(INDEX_HEADER_BYTES + entries.len());
        self.encode_header(OFFSET_INDEX_MAGIC, &entries, &mut out);
        out
    }

    /// The `.tix` file's bytes.
    pub fn encode_time_file(&self) -> Vec<u8> {
        let mut entries = vec![0u8; self.times.len() * TIME_ENTRY_BYTES];
        for (e, chunk) in self
            .times
            .iter()
            .zip(entries.chunks_exact_mut(TIME_ENTRY_BYTES))
        {
            LE::write_i64(&mut chunk[0..8], e.max_timestamp_ms);
            LE::write_u32(&mut chunk[8..12], e.relative_offset);
            LE::write_u32(&mut chunk[12..16], e.position);
        }
        let mut out = Vec::with_capacity(INDEX_HEADER_BYTES + entries.len());
        self.encode_header(TIME_INDEX_MAGIC, &entries, &mut out);
        out
    }

    /// Decode a segment's index files and check them against the segment: its base offset and
    /// the log file's length. The result is trusted for lookups.
    pub fn decode(
        offset_file: &[u8],
        time_file: &[u8],
        base_offset: u64,
        log_bytes: u64,
    ) -> Result<SegmentIndex, IndexError> {
        let (idx, offset_entries) =
            parse_index_file(offset_file, OFFSET_INDEX_MAGIC, OFFSET_ENTRY_BYTES)?;
        let (tix, time_entries) = parse_index_file(time_file, TIME_INDEX_MAGIC, TIME_ENTRY_BYTES)?;
        if idx != tix || idx.base_offset != base_offset {
            return Err(IndexError::Mismatch);
        }
        if idx.covered_bytes != log_bytes {
            return Err(IndexError::Stale {
                index: idx.covered_bytes,
                log: log_bytes,
            });
        }
        if idx.next_offset < base_offset || (idx.next_offset == base_offset) != (log_bytes == 0) {
            return Err(IndexError::Mismatch);
        }
        let span = idx.next_offset - base_offset;
        let offsets: Vec<OffsetEntry> = offset_entries
            .chunks_exact(OFFSET_ENTRY_BYTES)
            .map(|c| OffsetEntry {
                relative_offset: LE::read_u32(&c[0..4]),
                position: LE::read_u32(&c[4..8]),
            })
            .collect();
        let times: Vec<TimeEntry> = time_entries
            .chunks_exact(TIME_ENTRY_BYTES)
            .map(|c| TimeEntry {
                max_timestamp_ms: LE::read_i64(&c[0..8]),
                relative_offset: LE::read_u32(&c[8..12]),
                position: LE::read_u32(&c[12..16]),
            })
            .collect();
        let in_range = |rel: u32, pos: u32| u64::from(rel) < span && u64::from(pos) < log_bytes;
        let offsets_ok = offsets
            .windows(2)
            .all(|w| w[0].relative_offset < w[1].relative_offset && w[0].position < w[1].position)
            && offsets
                .iter()
                .all(|e| in_range(e.relative_offset, e.position));
        let times_ok = times.windows(2).all(|w| {
            w[0].max_timestamp_ms < w[1].max_timestamp_ms && w[0].position < w[1].position
        }) && times
            .iter()
            .all(|e| in_range(e.relative_offset, e.position));
        if !offsets_ok || !times_ok || (log_bytes > 0 && times.is_empty()) {
            return Err(IndexError::BadEntries);
        }
        let max_timestamp_ms = times.last().map_or(i64::MIN, |t| t.max_timestamp_ms);
        Ok(SegmentIndex {
            base_offset,
            next_offset: idx.next_offset,
            covered_bytes: log_bytes,
            max_timestamp_ms,
            offsets,
            times,
            // A decoded index was sealed; `resume_from` prepares one for further batches.
            bytes_since_offset_entry: 0,
            bytes_since_time_entry: 0,
            last_batch: None,
        })
    }
}

#[derive(PartialEq, Eq)]
struct IndexFileHeader {
    base_offset: u64,
    next_offset: u64,
    covered_bytes: u64,
}

fn index_checksum(header: &[u8], entries: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..CRC_AT]);
    hasher.update(entries);
    hasher.finalize()
}

fn parse_index_file(
    file: &[u8],
    magic: u32,
    entry_bytes: usize,
) -> Result<(IndexFileHeader, &[u8]), IndexError> {
    if file.len() < INDEX_HEADER_BYTES
        || LE::read_u32(&file[MAGIC_AT..]) != magic
        || file[VERSION_AT] != INDEX_VERSION
    {
        return Err(IndexError::BadHeader);
    }
    let (header, entries) = file.split_at(INDEX_HEADER_BYTES);
    let count = LE::read_u32(&header[ENTRY_COUNT_AT..]) as usize;
    if entries.len() != count * entry_bytes {
        return Err(IndexError::BadHeader);
    }
    if index_checksum(header, entries) != LE::read_u32(&header[CRC_AT..]) {
        return Err(IndexError::Checksum);
    }
    Ok((
        IndexFileHeader {
            base_offset: LE::read_u64(&header[BASE_OFFSET_AT..]),
            next_offset: LE::read_u64(&header[NEXT_OFFSET_AT..]),
            covered_bytes: LE::read_u64(&header[COVERED_BYTES_AT..]),
        },
        entries,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(base_offset: u64, count: u32, len: u32, max_ts: i64) -> BatchHeader {
        BatchHeader {
            batch_len: len,
            crc: 0,
            base_offset,
            record_count: count,
            first_timestamp_ms: max_ts,
            max_timestamp_ms: max_ts,
        }
    }

    fn build() -> SegmentIndex {
        let mut index = SegmentIndex::new(1000);
        let mut pos = 0;
        let mut offset = 1000;
        for i in 0..100u64 {
            let h = header(offset, 2, 100, [5, 3, 9][i as usize % 3] * i as i64);
            index.observe(&h, pos, 1000);
            pos += 100;
            offset += 2;
        }
        index.seal();
        index
    }

    #[test]
    fn lookups_never_overshoot() {
        let index = build();
        assert!(index.offsets.len() > 5);
        for target in 1000..1200u64 {
            let (pos, base) = index.position_for_offset(target);
            assert!(base <= target);
            assert_eq!(pos, (base - 1000) / 2 * 100);
        }
        assert_eq!(index.position_for_offset(0), (0, 1000));
        // No batch before the returned position holds a timestamp at or after the target, for
        // every target (batch i has timestamp [5, 3, 9][i % 3] * i).
        for target in -5i64..1000 {
            let (pos, base) = index.position_for_timestamp(target);
            assert_eq!(pos, (base - 1000) / 2 * 100);
            for i in 0..(pos / 100) {
                let ts = [5, 3, 9][i as usize % 3] * i as i64;
                assert!(ts < target, "batch {i} ts {ts} skipped for target {target}");
            }
        }
        assert_eq!(
            index.max_timestamp_ms,
            index.times.last().unwrap().max_timestamp_ms
        );
    }

    #[test]
    fn files_round_trip_and_reject_damage() {
        let index = build();
        let idx = index.encode_offset_file();
        let tix = index.encode_time_file();
        let decoded = SegmentIndex::decode(&idx, &tix, 1000, 10_000).unwrap();
        assert_eq!(decoded.offsets, index.offsets);
        assert_eq!(decoded.times, index.times);
        assert_eq!(decoded.next_offset, 1200);
        assert!(matches!(
            SegmentIndex::decode(&idx, &tix, 1000, 10_100),
            Err(IndexError::Stale { .. })
        ));
        assert!(SegmentIndex::decode(&idx, &tix, 999, 10_000).is_err());
        assert!(SegmentIndex::decode(&idx[..idx.len() - 1], &tix, 1000, 10_000).is_err());
        for byte in 0..idx.len() {
            let mut bad = idx.clone();
            bad[byte] ^= 0x10;
            assert!(
                SegmentIndex::decode(&bad, &tix, 1000, 10_000).is_err(),
                "byte {byte}"
            );
        }
    }
}
