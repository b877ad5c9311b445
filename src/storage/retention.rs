//! Deleting whole sealed segments from the front of a log, shared by [`Log`](super::Log) and
//! [`EntityLog`](super::entity_log::EntityLog): which segments a retention policy (or an
//! acknowledgement floor) dooms, and removing their files oldest first.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use super::config::Retention;
use super::error::Result;
use super::io::Vfs;
use super::log::RetentionReport;
use super::recovery::remove_segment_files;
use super::segment::SealedSegment;

/// What a log holds, counted before a segment goes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Totals {
    pub bytes: u64,
    pub records: u64,
}

/// The predicate of `retention` at `now_ms`: a segment goes while what remains without it
/// still exceeds a byte or record bound, or its newest record is older than the age bound.
pub(crate) fn policy<'a>(
    retention: &'a Retention,
    vfs: &'a dyn Vfs,
    index_interval_bytes: u64,
    now_ms: i64,
) -> impl Fn(&SealedSegment, Totals) -> bool + 'a {
    move |segment, totals| {
        let bytes_ok = retention
            .bytes_max
            .is_some_and(|max| totals.bytes - segment.size_bytes() >= max);
        let records_ok = retention
            .records_max
            .is_some_and(|max| totals.records - segment.record_count() >= max);
        let age_ok = retention.age_max.is_some_and(|age| {
            segment.index(vfs, index_interval_bytes).max_timestamp_ms
                < now_ms.saturating_sub(age.as_millis() as i64)
        });
        bytes_ok || records_ok || age_ok
    }
}

/// The sealed segments from the front that `doomed` picks, oldest first; `doomed` sees the
/// totals of what remains before each segment goes.
pub(crate) fn doomed_front(
    sealed: &VecDeque<Arc<SealedSegment>>,
    mut totals: Totals,
    doomed: impl Fn(&SealedSegment, Totals) -> bool,
) -> Vec<Arc<SealedSegment>> {
    let mut victims = Vec::new();
    for segment in sealed {
        if !doomed(segment, totals) {
            break;
        }
        totals.bytes -= segment.size_bytes();
        totals.records -= segment.record_count();
        victims.push(Arc::clone(segment));
    }
    victims
}

/// Remove the victims' files, oldest first, then sync the directory, so a crash part-way
/// cannot bring back an older segment without the newer ones (a gap).
pub(crate) fn remove_front(
    vfs: &dyn Vfs,
    dir: &Path,
    victims: &[Arc<SealedSegment>],
) -> Result<RetentionReport> {
    let mut report = RetentionReport::default();
    for segment in victims {
        remove_segment_files(vfs, dir, segment.base_offset)?;
        report.segments_deleted += 1;
        report.bytes_freed += segment.size_bytes();
        report.records_deleted += segment.record_count();
    }
    vfs.sync_dir(dir)?;
    Ok(report)
}
