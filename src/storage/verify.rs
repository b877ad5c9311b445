//! Offline checks behind `potok verify` and `potok inspect`: read every byte, change nothing.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use super::batch::{verify_batch, BatchHeader, BatchView};
use super::index::{IndexError, SegmentIndex};
use super::io::{OpenMode, Vfs};
use super::meta::{CleanShutdown, RecoveryPoint, CLEAN_SHUTDOWN_FILE, RECOVERY_POINT_FILE};
use super::segment::{
    parse_segment_file_name, scan_segment, segment_file_name, LOG_EXTENSION,
    OFFSET_INDEX_EXTENSION, TIME_INDEX_EXTENSION,
};

/// Something wrong in a file, with the byte where it starts when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub position: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.position {
            Some(p) => write!(f, "{} at byte {}: {}", self.path.display(), p, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// What `verify` found in one log directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogVerification {
    pub dir: PathBuf,
    pub segments: u64,
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
    pub problems: Vec<Problem>,
}

impl LogVerification {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Check one log directory: every batch's CRC and structure, offset continuity across
/// segments, every index file against the batches it points at, and the metadata files.
pub fn verify_log_dir(vfs: &dyn Vfs, dir: &Path) -> io::Result<LogVerification> {
    let mut report = LogVerification {
        dir: dir.to_path_buf(),
        ..Default::default()
    };
    let names = vfs.list_dir(dir)?;
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|n| parse_segment_file_name(n))
        .filter(|(_, ext)| *ext == LOG_EXTENSION)
        .map(|(b, _)| b)
        .collect();
    bases.sort_unstable();
    let mut expected_base: Option<u64> = None;
    for &base in &bases {
        let path = dir.join(segment_file_name(base, LOG_EXTENSION));
        let problem = |position, message: String| Problem {
            path: path.clone(),
            position,
            message,
        };
        if let Some(expected) = expected_base.filter(|&e| e != base) {
            report.problems.push(problem(
                None,
                format!("segment starts at offset {base}, previous ended at {expected}"),
            ));
        }
        let map = vfs.open(&path, OpenMode::Read)?.map()?;
        let mut outcome = scan_segment(&map, base, 4096);
        report.segments += 1;
        report.bytes += outcome.valid_bytes;
        report.records += outcome.index.next_offset - base;
        if let Some((position, e)) = &outcome.error {
            report
                .problems
                .push(problem(Some(*position), format!("invalid batch: {e}")));
        }
        report.batches += count_batches(&map[..outcome.valid_bytes as usize]);
        outcome.index.seal();
        check_index_files(vfs, &path, &map, &outcome.index, &mut report.problems);
        expected_base = Some(outcome.index.next_offset);
    }
    check_metadata(vfs, dir, &names, &mut report.problems);
    Ok(report)
}

fn count_batches(mut bytes: &[u8]) -> u64 {
    let mut n = 0;
    while let Ok(h) = BatchHeader::parse(bytes) {
        n += 1;
        bytes = &bytes[(h.batch_len as usize).min(bytes.len())..];
    }
    n
}

/// Index files are optional (rebuilt on open) but, when present and claiming to describe this
/// segment, every entry must point at a real batch and bound the timestamps before it.
fn check_index_files(
    vfs: &dyn Vfs,
    log_path: &Path,
    map: &[u8],
    scanned: &SegmentIndex,
    problems: &mut Vec<Problem>,
) {
    let idx_path = log_path.with_extension(OFFSET_INDEX_EXTENSION);
    let tix_path = log_path.with_extension(TIME_INDEX_EXTENSION);
    let read = |p: &Path| vfs.open(p, OpenMode::Read).and_then(|f| (*f).read_all());
    let (idx, tix) = match (read(&idx_path), read(&tix_path)) {
        (Ok(idx), Ok(tix)) => (idx, tix),
        (Err(_), Err(_)) => return, // no index yet: fine, it is rebuilt when needed
        _ => {
            problems.push(Problem {
                path: idx_path,
                position: None,
                message: "only one of .idx/.tix exists".into(),
            });
            return;
        }
    };
    let index = match SegmentIndex::decode(&idx, &tix, scanned.base_offset, map.len() as u64) {
        Ok(index) => index,
        // Written at a clean close and outgrown by later appends: a cache to rebuild, not damage.
        Err(IndexError::Stale { .. }) => return,
        Err(e) => {
            problems.push(Problem {
                path: idx_path,
                position: None,
                message: format!("index unusable ({e}); it will be rebuilt"),
            });
            return;
        }
    };
    // Batch boundaries with their base offsets and running maximum timestamps.
    let mut boundaries = Vec::new();
    let (mut pos, mut running_max) = (0usize, i64::MIN);
    while let Ok(h) = BatchHeader::parse(&map[pos.min(map.len())..]) {
        if pos as u64 >= scanned.covered_bytes {
            break;
        }
        running_max = running_max.max(h.max_timestamp_ms);
        boundaries.push((pos as u64, h.base_offset, running_max));
        pos += h.batch_len as usize;
    }
    let find = |position: u32| {
        boundaries
            .binary_search_by_key(&u64::from(position), |b| b.0)
            .ok()
            .map(|i| boundaries[i])
    };
    for e in &index.offsets {
        match find(e.position) {
            Some((_, base, _)) if base == index.base_offset + u64::from(e.relative_offset) => {}
            _ => problems.push(Problem {
                path: idx_path.clone(),
                position: Some(u64::from(e.position)),
                message: format!(
                    "entry for offset +{} does not point at its batch",
                    e.relative_offset
                ),
            }),
        }
    }
    for e in &index.times {
        match find(e.position) {
            Some((_, base, max))
                if base == index.base_offset + u64::from(e.relative_offset)
                    && e.max_timestamp_ms >= max => {}
            _ => problems.push(Problem {
                path: tix_path.clone(),
                position: Some(u64::from(e.position)),
                message: format!(
                    "time entry {} does not bound the batches before it",
                    e.max_timestamp_ms
                ),
            }),
        }
    }
}

/// Checks that a metadata file's bytes decode.
type MetadataCheck = fn(&[u8]) -> bool;

fn check_metadata(vfs: &dyn Vfs, dir: &Path, names: &[String], problems: &mut Vec<Problem>) {
    let files: [(&str, MetadataCheck, &str); 2] = [
        (
            RECOVERY_POINT_FILE,
            |b| RecoveryPoint::decode(b).is_some(),
            "recovery point is damaged",
        ),
        (
            CLEAN_SHUTDOWN_FILE,
            |b| CleanShutdown::decode(b).is_some(),
            "clean-shutdown marker is damaged",
        ),
    ];
    for (name, valid, message) in files {
        if !names.iter().any(|n| n == name) {
            continue;
        }
        let path = dir.join(name);
        let bytes = vfs
            .open(&path, OpenMode::Read)
            .and_then(|f| (*f).read_all());
        if !bytes.is_ok_and(|b| valid(&b)) {
            problems.push(Problem {
                path,
                position: None,
                message: message.into(),
            });
        }
    }
}

/// Find every log directory under `root` (a directory holding `.log` segments), depth first.
pub fn find_log_dirs(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut has_segment = false;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else if name
                .to_str()
                .and_then(parse_segment_file_name)
                .is_some_and(|(_, e)| e == LOG_EXTENSION)
            {
                has_segment = true;
            }
        }
        if has_segment {
            found.push(dir);
        }
    }
    found.sort();
    Ok(found)
}

/// Options for [`inspect_segment`].
#[derive(Clone, Copy, Debug)]
pub struct InspectOptions {
    pub show_records: bool,
    /// Body bytes shown per record before eliding.
    pub body_preview_bytes: usize,
}

/// Describe a segment file's batches and records in readable form. Stops at the first invalid
/// batch, saying why.
pub fn inspect_segment(bytes: &[u8], file_name: &str, options: InspectOptions) -> String {
    let mut out = String::new();
    let base = parse_segment_file_name(file_name).map(|(b, _)| b);
    let _ = writeln!(
        out,
        "segment {file_name}: {} bytes, base offset {}",
        bytes.len(),
        base.map_or("unknown".into(), |b| b.to_string())
    );
    let mut pos = 0usize;
    let mut batches = 0u64;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let header = match BatchHeader::parse(rest) {
            Ok(h) => h,
            Err(e) => {
                let _ = writeln!(out, "@{pos}: invalid batch header: {e}");
                break;
            }
        };
        let len = header.batch_len as usize;
        let verified = if rest.len() < len {
            Err(format!("truncated: {} of {len} bytes present", rest.len()))
        } else {
            verify_batch(&rest[..len]).map_err(|e| e.to_string())
        };
        let _ = writeln!(
            out,
            "@{pos} batch base={} count={} len={} first_ts={} max_ts={} crc={:#010x} {}",
            header.base_offset,
            header.record_count,
            header.batch_len,
            header.first_timestamp_ms,
            header.max_timestamp_ms,
            header.crc,
            match &verified {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("INVALID: {e}"),
            }
        );
        let Ok(verified) = verified else { break };
        batches += 1;
        if options.show_records {
            let view = BatchView::new(verified, bytes::Bytes::copy_from_slice(&rest[..len]), 0);
            for r in view.records() {
                let key = r
                    .key
                    .map_or("-".to_string(), |k| escape(k, options.body_preview_bytes));
                let headers: Vec<String> = r
                    .headers()
                    .map(|(n, v)| format!("{}={}", escape(n, 64), escape(v, 64)))
                    .collect();
                let _ = writeln!(
                    out,
                    "  offset={} ts={} key={} headers=[{}] body({} bytes)={}",
                    r.offset,
                    r.timestamp_ms,
                    key,
                    headers.join(", "),
                    r.body.len(),
                    escape(r.body, options.body_preview_bytes)
                );
            }
        }
        pos += len;
    }
    let _ = writeln!(
        out,
        "{batches} valid batches, {pos} of {} bytes",
        bytes.len()
    );
    out
}

/// Printable form of bytes: ASCII as is, the rest as `\xNN`, cut after `limit` bytes.
fn escape(bytes: &[u8], limit: usize) -> String {
    let mut s: String = bytes
        .iter()
        .take(limit)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if bytes.len() > limit {
        s.push_str("...");
    }
    format!("\"{s}\"")
}
