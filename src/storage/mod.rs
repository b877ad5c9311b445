//! The storage engine: segmented, append-only, crash-safe logs.
//!
//! # Layout
//!
//! - [`io`]: the I/O seam ([`io::Vfs`], [`io::VFile`]) with the OS and fault-injecting backends.
//! - [`record`], [`batch`]: the byte format of records and checksummed batches.
//! - [`index`]: sparse offset and time indexes of one segment.
//! - [`segment`]: segment files, the verifying scan, batch reads.
//! - [`meta`]: the recovery point and clean-shutdown marker.
//! - [`recovery`]: opening a log and repairing its tail.
//! - [`log`]: [`Log`], the API: appends, rolls, retention (`log/mod.rs`), group commit and
//!   visibility (`log/durability.rs`), reads (`log/read.rs`).
//! - [`verify`]: offline checking of a data directory (`potok verify`) and `potok inspect`.
//!
//! `storage-format.md` at the project root specifies every byte and the recovery procedure.
//! The storage layer knows bytes, offsets and timestamps; nothing of protocols or routing.

pub mod batch;
pub mod config;
pub mod error;
pub mod index;
pub mod io;
pub mod log;
pub mod meta;
pub mod record;
pub mod recovery;
pub mod segment;
pub mod verify;

pub use batch::BatchView;
pub use config::{Durability, LogConfig, Retention};
pub use error::{Error, FormatError, Result};
pub use log::{AppendInfo, Log, LogIter, ReadResult, RetentionReport};
pub use record::{Record, RecordView};
pub use recovery::RecoveryReport;
