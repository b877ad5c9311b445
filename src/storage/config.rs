//! Per-log settings: segment size, indexing, durability and retention.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::batch::{BATCH_BYTES_MAX, BATCH_HEADER_BYTES};
use super::error::{Error, Result};

/// When an append counts as done, and when readers may see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// An append returns only after `fdatasync`; concurrent appends share one (group commit).
    /// Readers see a record once it is durable.
    Always,
    /// Appends return once written; a background flusher syncs at this interval. Readers see
    /// records after the sync that makes them durable, so at most one interval later.
    Interval(Duration),
    /// Appends return once written and are visible at once; the OS decides when data reaches
    /// the disk. A crash may lose recent appends.
    Never,
}

impl FromStr for Durability {
    type Err = String;

    /// `always`, `never`, or an interval such as `100ms`.
    fn from_str(s: &str) -> Result<Durability, String> {
        match s {
            "always" => Ok(Durability::Always),
            "never" => Ok(Durability::Never),
            other => other
                .strip_suffix("ms")
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|&n| n > 0)
                .map(|n| Durability::Interval(Duration::from_millis(n)))
                .ok_or_else(|| format!("durability must be always, never or <N>ms, not {other:?}")),
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Always => write!(f, "always"),
            Durability::Never => write!(f, "never"),
            Durability::Interval(d) => write!(f, "{}ms", d.as_millis()),
        }
    }
}

/// Which old data the log may delete. Whole sealed segments are deleted, oldest first, and
/// only while what remains still satisfies every limit that is set: a log keeps *at least*
/// `bytes_max` bytes / `records_max` records (so at most one segment more), and deletes a
/// segment by age only when its newest record is older than `age_max`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub bytes_max: Option<u64>,
    pub age_max: Option<Duration>,
    pub records_max: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment before a batch would grow the active one past this.
    pub segment_bytes_max: u64,
    /// Roll once the active segment's first record is this old.
    pub segment_age_max: Option<Duration>,
    /// Bytes of log between sparse index entries.
    pub index_interval_bytes: u64,
    /// Largest batch an append may write.
    pub batch_bytes_max: u64,
    pub durability: Durability,
    pub retention: Retention,
    /// Under `always`, zero-fill the active segment ahead of the writes, by as much as is
    /// written (at least 16 KiB) up to this many bytes at a time. An fdatasync then has no file
    /// size or block allocation to persist: one data write and a cache flush instead of also
    /// writing the inode and allocation metadata. 0 turns it off. The zeros are cut off when
    /// the segment is sealed or the log closes, and recovery reads them as the end of the log.
    pub preallocate_bytes_max: u64,
    /// Under `always`, a sync leader that finds more appends waiting after an fsync pauses this
    /// long before the next one, so that one fsync covers more of them. The first fsync after
    /// a quiet spell never waits, so a lone writer sees no delay. Each fsync has a fixed cost
    /// (a device round trip, and on a virtual machine an exit per request and per completion);
    /// under load, fewer and larger rounds leave more CPU to the appenders.
    pub group_commit_delay: Duration,
    /// Fault injection: the sync leader waits this long before it writes and fsyncs, widening
    /// the window in which appended data is neither written nor durable (tests use it to show
    /// that replies wait for durability). Zero (the default) in production.
    pub sync_delay: Duration,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes_max: 128 * 1024 * 1024,
            segment_age_max: None,
            index_interval_bytes: 4096,
            batch_bytes_max: 16 * 1024 * 1024,
            durability: Durability::Always,
            retention: Retention::default(),
            preallocate_bytes_max: 4 * 1024 * 1024,
            group_commit_delay: Duration::from_micros(100),
            sync_delay: Duration::ZERO,
        }
    }
}

impl LogConfig {
    /// Check the limits against each other and against the format. Positions inside a segment
    /// are u32 in the index, so a segment (which may exceed its limit by one batch) must stay
    /// below 4 GiB.
    pub fn validate(&self) -> Result<()> {
        let min = (BATCH_HEADER_BYTES * 2) as u64;
        if self.segment_bytes_max < min {
            return Err(Error::Config(format!(
                "segment_bytes_max must be at least {min}"
            )));
        }
        if self.batch_bytes_max < min || self.batch_bytes_max > u64::from(BATCH_BYTES_MAX) {
            return Err(Error::Config(format!(
                "batch_bytes_max must be between {min} and {BATCH_BYTES_MAX}"
            )));
        }
        if self.segment_bytes_max + self.batch_bytes_max > u64::from(u32::MAX) {
            return Err(Error::Config(
                "segment_bytes_max + batch_bytes_max must stay below 4 GiB".into(),
            ));
        }
        if self.index_interval_bytes == 0 {
            return Err(Error::Config(
                "index_interval_bytes must be positive".into(),
            ));
        }
        if let Durability::Interval(d) = self.durability {
            if d.is_zero() {
                return Err(Error::Config(
                    "a durability interval must be positive".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_parses_and_prints() {
        for s in ["always", "never", "250ms"] {
            assert_eq!(s.parse::<Durability>().unwrap().to_string(), s);
        }
        for bad in ["", "0ms", "ms", "10s", "Always", "-5ms"] {
            assert!(bad.parse::<Durability>().is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_rejects_impossible_limits() {
        assert!(LogConfig::default().validate().is_ok());
        let bad = [
            LogConfig {
                segment_bytes_max: 10,
                ..Default::default()
            },
            LogConfig {
                batch_bytes_max: u64::MAX,
                ..Default::default()
            },
            LogConfig {
                segment_bytes_max: u64::from(u32::MAX),
                ..Default::default()
            },
            LogConfig {
                index_interval_bytes: 0,
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
