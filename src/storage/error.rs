//! Storage errors. Format errors describe bytes that are not a valid batch; `Error` is what the
//! log's API returns.

use std::io;
use std::path::PathBuf;

/// Why a run of bytes is not a valid batch or record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("bad batch magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported batch version {0}")]
    UnsupportedVersion(u8),
    #[error("batch length {0} out of range")]
    BadBatchLength(u32),
    #[error("batch truncated: header says {expected} bytes, {available} available")]
    BatchTruncated { expected: u32, available: u64 },
    #[error("batch checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("record truncated")]
    RecordTruncated,
    #[error("record length does not match its contents")]
    RecordLengthMismatch,
    #[error("batch declares {declared} records but holds {found}")]
    RecordCountMismatch { declared: u32, found: u32 },
    #[error("batch timestamps disagree with its records")]
    TimestampMismatch,
    #[error("batch base offset {found} where {expected} was expected")]
    UnexpectedOffset { expected: u64, found: u64 },
}

/// Errors from the log API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A batch that fails verification was found where data should be. It is never served.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: FormatError,
    },
    /// An earlier write or fsync failed; the log refuses all I/O until it is reopened, because
    /// what is on disk can no longer be known (see fsyncgate).
    #[error("log is failed after an earlier I/O error; reopen it")]
    PreviousIo,
    #[error("log is closed")]
    Closed,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("batch of {bytes} bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge { bytes: u64, limit: u64 },
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
