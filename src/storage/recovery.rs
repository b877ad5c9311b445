//! Opening a log: find its segments, decide what can be trusted, and repair the tail.
//!
//! The procedure (specified in `storage-format.md` § Recovery):
//! 1. Delete leftover `*.tmp` files and index files whose `.log` is gone.
//! 2. Read and durably remove the clean-shutdown marker.
//! 3. Clean stop (marker matches the newest segment exactly): every segment is trusted; the
//!    active segment's index is loaded from its files and only the part after its last index
//!    entry is re-verified.
//! 4. Otherwise, read the recovery point. Segments before the one holding it are trusted
//!    (they were fsynced with their indexes before the recovery point moved past them). Every
//!    later segment is scanned, verifying each batch's CRC; the first invalid or torn byte (or
//!    the start of zero-filled preallocated space) ends the log there: the segment is truncated (then fsynced) and any later segment is deleted.
//!    Scanned segments are fsynced, sealed ones get fresh index files, and the recovery point
//!    moves to the active segment.
//!
//! Sealed segments' indexes are loaded lazily, so opening a large log reads only the tail.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::batch::BatchHeader;
use super::config::LogConfig;
use super::error::Result;
use super::index::SegmentIndex;
use super::io::{write_atomically, OpenMode, VFile, Vfs};
use super::meta::{CleanShutdown, RecoveryPoint, CLEAN_SHUTDOWN_FILE, RECOVERY_POINT_FILE};
use super::segment::{
    parse_segment_file_name, scan_from, scan_segment, segment_file_name, write_index_files,
    SealedSegment, LOG_EXTENSION, OFFSET_INDEX_EXTENSION, TIME_INDEX_EXTENSION,
};

/// What opening the log found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The previous close was clean and matched the files.
    pub clean: bool,
    /// Segments whose every batch was verified while opening.
    pub segments_scanned: u64,
    /// Bytes cut from the tail (torn or corrupt).
    pub bytes_truncated: u64,
    /// Segments deleted because they followed a cut.
    pub segments_removed: u64,
    /// Where the first invalid byte was found, as text, if any.
    pub first_error: Option<String>,
}

/// The writable newest segment, as recovery hands it over.
pub(crate) struct ActiveState {
    pub base_offset: u64,
    pub path: PathBuf,
    pub file: Arc<dyn VFile>,
    pub index: SegmentIndex,
    /// Timestamp that starts the segment's age (its first record's, or now when empty).
    pub started_ms: i64,
}

pub(crate) struct Recovered {
    pub sealed: VecDeque<Arc<SealedSegment>>,
    pub active: ActiveState,
    pub report: RecoveryReport,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn read_small_file(vfs: &dyn Vfs, path: &Path) -> Option<Vec<u8>> {
    let file = vfs.open(path, OpenMode::Read).ok()?;
    // Metadata files are tiny; anything big is not ours and is ignored.
    if file.len().ok()? > 4096 {
        return None;
    }
    (*file).read_all().ok()
}

/// Remove leftovers of interrupted operations (temporary files, indexes without their
/// segment); returns the sorted segment base offsets. Shared by both log kinds.
pub(crate) fn tidy_directory(vfs: &dyn Vfs, dir: &Path) -> io::Result<Vec<u64>> {
    let names = vfs.list_dir(dir)?;
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|n| parse_segment_file_name(n))
        .filter(|(_, ext)| *ext == LOG_EXTENSION)
        .map(|(base, _)| base)
        .collect();
    bases.sort_unstable();
    let mut removed = false;
    for name in &names {
        let orphan_index = parse_segment_file_name(name).is_some_and(|(base, ext)| {
            (ext == OFFSET_INDEX_EXTENSION || ext == TIME_INDEX_EXTENSION)
                && bases.binary_search(&base).is_err()
        });
        if name.ends_with(".tmp") || orphan_index {
            vfs.remove_file(&dir.join(name))?;
            removed = true;
        }
    }
    if removed {
        vfs.sync_dir(dir)?;
    }
    Ok(bases)
}

fn open_sealed(
    vfs: &dyn Vfs,
    dir: &Path,
    base: u64,
    next: u64,
    index: Option<SegmentIndex>,
) -> io::Result<Arc<SealedSegment>> {
    let path = dir.join(segment_file_name(base, LOG_EXTENSION));
    let map = vfs.open(&path, OpenMode::Read)?.map()?;
    Ok(Arc::new(SealedSegment::new(
        base,
        next,
        path,
        map,
        index.map(Arc::new),
    )))
}

/// Remove a segment's `.log`, `.idx` and `.tix` (whichever exist).
pub(crate) fn remove_segment_files(vfs: &dyn Vfs, dir: &Path, base: u64) -> io::Result<()> {
    for ext in [LOG_EXTENSION, OFFSET_INDEX_EXTENSION, TIME_INDEX_EXTENSION] {
        match vfs.remove_file(&dir.join(segment_file_name(base, ext))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn started_ms(file: &dyn VFile) -> i64 {
    let mut raw = [0u8; super::batch::BATCH_HEADER_BYTES];
    match file.read_at(&mut raw, 0) {
        Ok(n) if n == raw.len() => {
            BatchHeader::parse(&raw).map_or_else(|_| now_ms(), |h| h.first_timestamp_ms)
        }
        _ => now_ms(),
    }
}

fn make_active(
    vfs: &dyn Vfs,
    dir: &Path,
    base: u64,
    index: SegmentIndex,
) -> io::Result<ActiveState> {
    let path = dir.join(segment_file_name(base, LOG_EXTENSION));
    let file = vfs.open(&path, OpenMode::ReadWrite)?;
    let started_ms = started_ms(&*file);
    Ok(ActiveState {
        base_offset: base,
        path,
        file,
        index,
        started_ms,
    })
}

/// Create an empty segment at `base` and make it and the recovery point durable.
pub(crate) fn create_segment(vfs: &dyn Vfs, dir: &Path, base: u64) -> io::Result<ActiveState> {
    let path = dir.join(segment_file_name(base, LOG_EXTENSION));
    let file = vfs.open(&path, OpenMode::CreateNew)?;
    vfs.sync_dir(dir)?;
    write_atomically(
        vfs,
        &dir.join(RECOVERY_POINT_FILE),
        &RecoveryPoint { offset: base }.encode(),
    )?;
    Ok(ActiveState {
        base_offset: base,
        path,
        file,
        index: SegmentIndex::new(base),
        started_ms: now_ms(),
    })
}

/// Open (or create) the log in `dir`, repairing whatever an unclean stop left.
pub(crate) fn recover(vfs: &dyn Vfs, dir: &Path, config: &LogConfig) -> Result<Recovered> {
    vfs.create_dir_all(dir)?;
    let bases = tidy_directory(vfs, dir)?;
    let marker_path = dir.join(CLEAN_SHUTDOWN_FILE);
    let marker = read_small_file(vfs, &marker_path).and_then(|b| CleanShutdown::decode(&b));
    if vfs.exists(&marker_path) {
        // Gone for good before anything is written, so a later crash is never taken as clean.
        vfs.remove_file(&marker_path)?;
        vfs.sync_dir(dir)?;
    }
    let recovery_point = read_small_file(vfs, &dir.join(RECOVERY_POINT_FILE))
        .and_then(|b| RecoveryPoint::decode(&b));

    let Some(&last_base) = bases.last() else {
        // No segments: start where the metadata says the log had got to, never reusing offsets.
        let base = marker
            .map_or(0, |m| m.next_offset)
            .max(recovery_point.map_or(0, |r| r.offset));
        let active = create_segment(vfs, dir, base)?;
        let report = RecoveryReport {
            clean: marker.is_some(),
            ..Default::default()
        };
        return Ok(Recovered {
            sealed: VecDeque::new(),
            active,
            report,
        });
    };

    if let Some(marker) = marker.filter(|m| m.active_base_offset == last_base) {
        if let Some(recovered) = open_clean(vfs, dir, config, &bases, marker)? {
            return Ok(recovered);
        }
        tracing::warn!(dir = %dir.display(), "clean-shutdown marker does not match the files; recovering");
    }
    open_unclean(vfs, dir, config, &bases, recovery_point)
}

fn next_base(bases: &[u64], i: usize, active_next: u64) -> u64 {
    bases.get(i + 1).copied().unwrap_or(active_next)
}

fn open_clean(
    vfs: &dyn Vfs,
    dir: &Path,
    config: &LogConfig,
    bases: &[u64],
    marker: CleanShutdown,
) -> Result<Option<Recovered>> {
    let last_base = marker.active_base_offset;
    let path = dir.join(segment_file_name(last_base, LOG_EXTENSION));
    let file = vfs.open(&path, OpenMode::ReadWrite)?;
    if file.len()? != marker.active_bytes {
        return Ok(None);
    }
    let read = |ext: &str| read_index_file(vfs, &path.with_extension(ext));
    let decoded = match (read(OFFSET_INDEX_EXTENSION), read(TIME_INDEX_EXTENSION)) {
        (Some(idx), Some(tix)) => {
            SegmentIndex::decode(&idx, &tix, last_base, marker.active_bytes).ok()
        }
        _ => None,
    };
    let index = match decoded {
        Some(mut index) => {
            let (position, _) = index.resume_from_last_entry();
            scan_from(&file.map()?, index, position, config.index_interval_bytes)
        }
        None => scan_segment(&file.map()?, last_base, config.index_interval_bytes),
    };
    if index.error.is_some() || index.index.next_offset != marker.next_offset {
        return Ok(None);
    }
    let mut sealed = VecDeque::new();
    for (i, &base) in bases[..bases.len() - 1].iter().enumerate() {
        sealed.push_back(open_sealed(vfs, dir, base, next_base(bases, i, 0), None)?);
    }
    let active = make_active(vfs, dir, last_base, index.index)?;
    let report = RecoveryReport {
        clean: true,
        segments_scanned: 0,
        ..Default::default()
    };
    Ok(Some(Recovered {
        sealed,
        active,
        report,
    }))
}

fn read_index_file(vfs: &dyn Vfs, path: &Path) -> Option<Vec<u8>> {
    let file = vfs.open(path, OpenMode::Read).ok()?;
    (*file).read_all().ok()
}

fn open_unclean(
    vfs: &dyn Vfs,
    dir: &Path,
    config: &LogConfig,
    bases: &[u64],
    recovery_point: Option<RecoveryPoint>,
) -> Result<Recovered> {
    let mut report = RecoveryReport::default();
    // The segment holding the recovery point; with no usable point, scan everything.
    let first_scanned = recovery_point.map_or(0, |rp| {
        bases.partition_point(|&b| b <= rp.offset).saturating_sub(1)
    });
    let mut sealed = VecDeque::new();
    for (i, &base) in bases[..first_scanned].iter().enumerate() {
        sealed.push_back(open_sealed(vfs, dir, base, next_base(bases, i, 0), None)?);
    }
    let mut i = first_scanned;
    let active = loop {
        let base = bases[i];
        let path = dir.join(segment_file_name(base, LOG_EXTENSION));
        let file = vfs.open(&path, OpenMode::ReadWrite)?;
        let file_bytes = file.len()?;
        let mut outcome = scan_segment(&file.map()?, base, config.index_interval_bytes);
        report.segments_scanned += 1;
        if let Some((position, e)) = &outcome.error {
            report
                .first_error
                .get_or_insert_with(|| format!("{} at byte {position}: {e}", path.display()));
        }
        let is_last = i + 1 == bases.len();
        let reaches_next =
            !is_last && outcome.error.is_none() && outcome.index.next_offset == bases[i + 1];
        if reaches_next {
            if outcome.valid_bytes < file_bytes {
                // Preallocated zeros a roll had not yet cut (sealing cuts them first).
                file.set_len(outcome.valid_bytes)?;
            }
            file.sync_data()?;
            outcome.index.seal();
            write_index_files(vfs, &path, &outcome.index)?;
            sealed.push_back(open_sealed(
                vfs,
                dir,
                base,
                bases[i + 1],
                Some(outcome.index),
            )?);
            i += 1;
            continue;
        }
        // This segment ends the log: cut its invalid tail and drop anything after it.
        for &later in &bases[i + 1..] {
            tracing::warn!(dir = %dir.display(), segment = later, "removing segment after a cut");
            remove_segment_files(vfs, dir, later)?;
            report.segments_removed += 1;
        }
        if outcome.valid_bytes < file_bytes {
            // Either an invalid tail or, with no error, zero-filled preallocated space.
            if outcome.error.is_some() {
                tracing::warn!(path = %path.display(), from = outcome.valid_bytes, to = file_bytes, "truncating invalid tail");
                report.bytes_truncated += file_bytes - outcome.valid_bytes;
            }
            file.set_len(outcome.valid_bytes)?;
        }
        file.sync_data()?;
        vfs.sync_dir(dir)?;
        break make_active(vfs, dir, base, outcome.index)?;
    };
    if recovery_point.map(|rp| rp.offset) != Some(active.base_offset) {
        write_atomically(
            vfs,
            &dir.join(RECOVERY_POINT_FILE),
            &RecoveryPoint {
                offset: active.base_offset,
            }
            .encode(),
        )?;
    }
    Ok(Recovered {
        sealed,
        active,
        report,
    })
}
