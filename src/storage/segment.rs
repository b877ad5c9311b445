//! One segment: a `.log` file of back-to-back batches (no file header; the base offset is in the
//! name) plus its indexes. This file holds what is common to sealed and active segments: names,
//! the verifying scan used by recovery, index rebuilds and `potok verify`, and batch reads.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::batch::{verify_batch, BatchHeader, BatchView, BATCH_HEADER_BYTES};
use super::error::{Error, FormatError, Result};
use super::index::SegmentIndex;
use super::io::{write_atomically, OpenMode, VFile, Vfs};

pub const LOG_EXTENSION: &str = "log";
pub const OFFSET_INDEX_EXTENSION: &str = "idx";
pub const TIME_INDEX_EXTENSION: &str = "tix";
/// Digits in a segment file name: enough for any u64.
pub const SEGMENT_NAME_DIGITS: usize = 20;

/// `00000000000000000042.log` and friends.
pub fn segment_file_name(base_offset: u64, extension: &str) -> String {
    // Written by hand rather than with `format!`: every new stream names its first segment.
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(base_offset);
    let mut name = String::with_capacity(SEGMENT_NAME_DIGITS + 1 + extension.len());
    for _ in digits.len()..SEGMENT_NAME_DIGITS {
        name.push('0');
    }
    name.push_str(digits);
    name.push('.');
    name.push_str(extension);
    name
}

/// The base offset and extension of a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<(u64, &str)> {
    let (stem, extension) = name.split_once('.')?;
    if stem.len() != SEGMENT_NAME_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, extension))
}

/// What a verifying scan of a segment's bytes found.
#[derive(Debug)]
pub struct ScanOutcome {
    /// Indexes describing every valid batch.
    pub index: SegmentIndex,
    /// Bytes from the start of the file up to the end of the last valid batch. Anything after
    /// it is either `error` or, when `error` is `None`, zero-filled preallocated space.
    pub valid_bytes: u64,
    /// The first invalid batch, if the scan stopped before the end of the bytes.
    pub error: Option<(u64, FormatError)>,
}

/// Verify batches from `position` (where the batch with base `index.next_offset` starts) to the
/// end of `bytes`, observing each into `index`; stop at the first invalid or torn byte.
/// Pure over a byte slice, so it is fuzzed directly.
pub fn scan_from(
    bytes: &[u8],
    mut index: SegmentIndex,
    position: u64,
    interval_bytes: u64,
) -> ScanOutcome {
    let mut pos = position as usize;
    let error = loop {
        if pos >= bytes.len() {
            break None;
        }
        let rest = &bytes[pos..];
        let header = match BatchHeader::parse(rest) {
            Ok(h) => h,
            // Zero-filled space ahead of the writes (see `LogConfig::preallocate_bytes_max`)
            // is the end of the log, not damage.
            Err(_) if rest.iter().all(|&b| b == 0) => break None,
            Err(e) => break Some((pos as u64, e)),
        };
        let len = header.batch_len as usize;
        if rest.len() < len {
            let e = FormatError::BatchTruncated {
                expected: header.batch_len,
                available: rest.len() as u64,
            };
            break Some((pos as u64, e));
        }
        if let Err(e) = verify_batch(&rest[..len]) {
            break Some((pos as u64, e));
        }
        if header.base_offset != index.next_offset {
            let e = FormatError::UnexpectedOffset {
                expected: index.next_offset,
                found: header.base_offset,
            };
            break Some((pos as u64, e));
        }
        index.observe(&header, pos as u64, interval_bytes);
        pos += len;
    };
    let valid_bytes = index.covered_bytes.max(position);
    ScanOutcome {
        index,
        valid_bytes,
        error,
    }
}

/// Scan a whole segment.
pub fn scan_segment(bytes: &[u8], base_offset: u64, interval_bytes: u64) -> ScanOutcome {
    scan_from(bytes, SegmentIndex::new(base_offset), 0, interval_bytes)
}

/// Read access to a segment's bytes: a memory map for sealed segments, positional reads for
/// the active one.
pub(crate) enum SegmentBytes<'a> {
    Mapped(&'a Bytes),
    File(&'a dyn VFile),
}

impl SegmentBytes<'_> {
    fn read(&self, pos: u64, len: u64) -> io::Result<Bytes> {
        match self {
            SegmentBytes::Mapped(map) => {
                let end = pos.checked_add(len).filter(|&e| e <= map.len() as u64);
                match end {
                    Some(end) => Ok(map.slice(pos as usize..end as usize)),
                    None => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "read past segment end",
                    )),
                }
            }
            SegmentBytes::File(file) => {
                let len = usize::try_from(len).map_err(|_| io::Error::other("read too large"))?;
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, pos)?;
                Ok(Bytes::from(buf))
            }
        }
    }
}

/// Where a read inside one segment starts and stops.
pub(crate) struct SegmentRead<'a> {
    pub path: &'a Path,
    pub bytes: SegmentBytes<'a>,
    /// Index-provided start: a batch boundary at or before the wanted offset, and its base.
    pub start_position: u64,
    pub start_offset: u64,
    /// Bytes of the segment that may be read (the visible end for the active segment).
    pub end_position: u64,
}

impl SegmentRead<'_> {
    fn corrupt(&self, position: u64, reason: FormatError) -> Error {
        Error::Corrupt {
            path: self.path.to_path_buf(),
            position,
            reason,
        }
    }

    fn io_or_corrupt(&self, position: u64, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            self.corrupt(
                position,
                FormatError::BatchTruncated {
                    expected: BATCH_HEADER_BYTES as u32,
                    available: 0,
                },
            )
        } else {
            Error::Io(e)
        }
    }

    /// Append to `out` the verified batches holding offsets `from..`, stopping once `max_bytes`
    /// would be exceeded. When `out` is empty the first batch is returned even if larger, so a
    /// reader always makes progress. Returns the bytes added.
    pub fn read_into(&self, from: u64, max_bytes: u64, out: &mut Vec<BatchView>) -> Result<u64> {
        let (mut pos, mut expected) = (self.start_position, self.start_offset);
        // Walk headers to the batch that holds `from`.
        let first = loop {
            if pos >= self.end_position {
                return Ok(0);
            }
            let raw = self
                .bytes
                .read(pos, BATCH_HEADER_BYTES as u64)
                .map_err(|e| self.io_or_corrupt(pos, e))?;
            let header = BatchHeader::parse(&raw).map_err(|e| self.corrupt(pos, e))?;
            if header.base_offset != expected {
                let reason = FormatError::UnexpectedOffset {
                    expected,
                    found: header.base_offset,
                };
                return Err(self.corrupt(pos, reason));
            }
            if header.next_offset() > from {
                break header;
            }
            pos += u64::from(header.batch_len);
            expected = header.next_offset();
        };
        if !out.is_empty() && u64::from(first.batch_len) > max_bytes {
            return Ok(0);
        }
        // One read for everything wanted, then split and verify each batch.
        let want = max_bytes.max(u64::from(first.batch_len));
        let chunk_len = want.min(self.end_position - pos);
        let chunk = self
            .bytes
            .read(pos, chunk_len)
            .map_err(|e| self.io_or_corrupt(pos, e))?;
        let mut at = 0usize;
        while at < chunk.len() {
            let batch_pos = pos + at as u64;
            let len = match BatchHeader::parse(&chunk[at..]) {
                Ok(h) if at + h.batch_len as usize <= chunk.len() => h.batch_len as usize,
                // A later batch that does not fit is left for the next read.
                _ if at > 0 => break,
                // The first batch must fit: chunk_len covers it unless the segment ends early.
                parsed => {
                    let reason = parsed.err().unwrap_or(FormatError::BatchTruncated {
                        expected: first.batch_len,
                        available: chunk.len() as u64,
                    });
                    return Err(self.corrupt(batch_pos, reason));
                }
            };
            let bytes = chunk.slice(at..at + len);
            let verified = verify_batch(&bytes).map_err(|e| self.corrupt(batch_pos, e))?;
            if verified.base_offset != expected {
                let reason = FormatError::UnexpectedOffset {
                    expected,
                    found: verified.base_offset,
                };
                return Err(self.corrupt(batch_pos, reason));
            }
            expected = verified.next_offset();
            out.push(BatchView::new(verified, bytes, from));
            at += len;
        }
        Ok(at as u64)
    }
}

/// A segment that no longer changes: fully synced, read through a memory map.
pub(crate) struct SealedSegment {
    pub base_offset: u64,
    /// One past its last record: the next segment's base offset.
    pub next_offset: u64,
    pub log_path: PathBuf,
    pub map: Bytes,
    /// Loaded (or rebuilt) on first use: opening a log must not read every index.
    index: Mutex<Option<Arc<SegmentIndex>>>,
}

impl SealedSegment {
    pub fn new(
        base_offset: u64,
        next_offset: u64,
        log_path: PathBuf,
        map: Bytes,
        index: Option<Arc<SegmentIndex>>,
    ) -> SealedSegment {
        debug_assert!(next_offset >= base_offset);
        SealedSegment {
            base_offset,
            next_offset,
            log_path,
            map,
            index: Mutex::new(index),
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn record_count(&self) -> u64 {
        self.next_offset - self.base_offset
    }

    /// Read batches from offset `from` on (at least this segment's base) into `out`, up to
    /// `max_bytes` (at least one batch), through the memory map and the sparse index. Returns
    /// the bytes added. A read that must return something (`out` still empty) and finds
    /// nothing is a corrupt segment: its index promised the offset.
    pub fn read_into(
        &self,
        vfs: &dyn Vfs,
        index_interval_bytes: u64,
        from: u64,
        max_bytes: u64,
        out: &mut Vec<BatchView>,
    ) -> Result<u64> {
        let from = from.max(self.base_offset);
        let (start_position, start_offset) = self
            .index(vfs, index_interval_bytes)
            .position_for_offset(from);
        let read = SegmentRead {
            path: &self.log_path,
            bytes: SegmentBytes::Mapped(&self.map),
            start_position,
            start_offset,
            end_position: self.size_bytes(),
        };
        let added = read.read_into(from, max_bytes, out)?;
        if out.is_empty() {
            return Err(Error::Corrupt {
                path: self.log_path.clone(),
                position: self.size_bytes(),
                reason: FormatError::UnexpectedOffset {
                    expected: from,
                    found: self.next_offset,
                },
            });
        }
        Ok(added)
    }

    /// The segment's indexes: from its files when they check out, else rebuilt by a scan (and
    /// written back when the scan finds the whole segment valid).
    pub fn index(&self, vfs: &dyn Vfs, interval_bytes: u64) -> Arc<SegmentIndex> {
        let mut slot = self.index.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(index) = slot.as_ref() {
            return Arc::clone(index);
        }
        let index = Arc::new(self.load_or_rebuild_index(vfs, interval_bytes));
        *slot = Some(Arc::clone(&index));
        index
    }

    fn load_or_rebuild_index(&self, vfs: &dyn Vfs, interval_bytes: u64) -> SegmentIndex {
        let read = |ext: &str| -> io::Result<Vec<u8>> {
            let file = vfs.open(&self.log_path.with_extension(ext), OpenMode::Read)?;
            (*file).read_all()
        };
        let loaded = read(super::segment::OFFSET_INDEX_EXTENSION).and_then(|idx| {
            let tix = read(TIME_INDEX_EXTENSION)?;
            SegmentIndex::decode(&idx, &tix, self.base_offset, self.size_bytes())
                .map_err(io::Error::other)
        });
        match loaded {
            Ok(index) if index.next_offset == self.next_offset => return index,
            Ok(_) => {
                tracing::warn!(path = %self.log_path.display(), "index disagrees with segment range; rebuilding")
            }
            Err(e) => {
                tracing::info!(path = %self.log_path.display(), error = %e, "rebuilding segment index")
            }
        }
        let mut outcome = scan_segment(&self.map, self.base_offset, interval_bytes);
        outcome.index.seal();
        if outcome.error.is_none() && outcome.index.next_offset == self.next_offset {
            if let Err(e) = write_index_files(vfs, &self.log_path, &outcome.index) {
                tracing::warn!(path = %self.log_path.display(), error = %e, "could not write rebuilt index");
            }
        } else {
            tracing::error!(path = %self.log_path.display(), error = ?outcome.error, "sealed segment is damaged; reads past the damage fail");
        }
        outcome.index
    }
}

/// Write a segment's two index files atomically.
pub(crate) fn write_index_files(
    vfs: &dyn Vfs,
    log_path: &Path,
    index: &SegmentIndex,
) -> io::Result<()> {
    write_atomically(
        vfs,
        &log_path.with_extension(OFFSET_INDEX_EXTENSION),
        &index.encode_offset_file(),
    )?;
    write_atomically(
        vfs,
        &log_path.with_extension(TIME_INDEX_EXTENSION),
        &index.encode_time_file(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::encode_batch;
    use crate::storage::record::Record;

    fn segment_bytes(batches: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        for i in 0..batches {
            let records: Vec<Record> = (0..3)
                .map(|j| Record::new((i * 3 + j) as i64, vec![i as u8; 50]))
                .collect();
            encode_batch(100 + i * 3, &records, &mut buf);
        }
        buf
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(42, "log"), "00000000000000000042.log");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.log"),
            Some((42, "log"))
        );
        assert_eq!(
            parse_segment_file_name("18446744073709551615.idx"),
            Some((u64::MAX, "idx"))
        );
        assert_eq!(parse_segment_file_name("99999999999999999999.log"), None);
        assert_eq!(parse_segment_file_name("0042.log"), None);
        assert_eq!(parse_segment_file_name("recovery-point"), None);
    }

    #[test]
    fn scan_stops_at_first_bad_byte() {
        let bytes = segment_bytes(10);
        let whole = scan_segment(&bytes, 100, 256);
        assert!(whole.error.is_none());
        assert_eq!(whole.valid_bytes, bytes.len() as u64);
        assert_eq!(whole.index.next_offset, 130);
        for cut in 0..bytes.len() {
            let outcome = scan_segment(&bytes[..cut], 100, 256);
            assert!(outcome.valid_bytes <= cut as u64);
            assert!(cut as u64 - outcome.valid_bytes < bytes.len() as u64 / 10 + 1);
        }
        // Wrong base offset: nothing is valid.
        assert_eq!(scan_segment(&bytes, 99, 256).valid_bytes, 0);
    }

    #[test]
    fn zero_filled_space_ends_the_scan_without_an_error() {
        let mut bytes = segment_bytes(4);
        let written = bytes.len() as u64;
        bytes.resize(bytes.len() + 10_000, 0);
        let outcome = scan_segment(&bytes, 100, 256);
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        assert_eq!(outcome.valid_bytes, written);
        assert_eq!(outcome.index.next_offset, 112);
        // A non-zero byte anywhere after the end makes it damage again.
        *bytes.last_mut().unwrap() = 1;
        let outcome = scan_segment(&bytes, 100, 256);
        assert_eq!(outcome.error.map(|(at, _)| at), Some(written));
        assert_eq!(outcome.valid_bytes, written);
    }

    #[test]
    fn reads_start_anywhere_and_respect_limits() {
        let bytes = Bytes::from(segment_bytes(10));
        let outcome = scan_segment(&bytes, 100, 256);
        let path = PathBuf::from("x.log");
        for from in 100..130 {
            let (start_position, start_offset) = outcome.index.position_for_offset(from);
            let read = SegmentRead {
                path: &path,
                bytes: SegmentBytes::Mapped(&bytes),
                start_position,
                start_offset,
                end_position: bytes.len() as u64,
            };
            let mut out = Vec::new();
            read.read_into(from, 1, &mut out).unwrap();
            assert_eq!(out.len(), 1, "one batch even when over the limit");
            assert_eq!(out[0].records().next().unwrap().offset, from);
            out.clear();
            read.read_into(from, u64::MAX, &mut out).unwrap();
            let offsets: Vec<u64> = out
                .iter()
                .flat_map(|b| b.records().map(|r| r.offset))
                .collect();
            assert_eq!(offsets, (from..130).collect::<Vec<_>>());
        }
    }
}
