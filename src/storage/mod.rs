//! The storage engine: segmented, append-only, crash-safe logs.
//!
//! # Layout
//!
//! - [`background`]: background threads whose panic ends the process rather than hanging it.
//! - [`io`]: the I/O seam ([`io::Vfs`], [`io::VFile`]) with the OS and fault-injecting backends.
//! - [`record`], [`batch`]: the byte format of records and checksummed batches.
//! - [`index`]: sparse offset and time indexes of one segment.
//! - [`segment`]: segment files, the verifying scan, batch reads.
//! - [`meta`]: the recovery point and clean-shutdown marker.
//! - [`recovery`]: opening a log and repairing its tail.
//! - [`log`]: [`Log`], the API: appends, rolls, retention (`log/mod.rs`), group commit and
//!   visibility (`log/durability.rs`), reads (`log/read.rs`).
//! - [`wal`]: the data directory's write-ahead log (a [`Log`] of entries): one group commit
//!   for every entity, checkpoints, replay.
//! - [`entity_log`]: [`EntityLog`], a stream's, topic's or queue's segmented log, written from
//!   the write-ahead log: an in-memory tail, written to its segment files in bulk.
//! - [`file_cache`]: the budget of open descriptors entity logs share.
//! - [`meta_store`]: an append-only key/value store for the broker's metadata snapshots.
//! - [`verify`]: offline checking of a data directory (`potok verify`) and `potok inspect`.
//!
//! `storage-format.md` at the project root specifies every byte and the recovery procedure.
//! The storage layer knows bytes, offsets and timestamps; nothing of protocols or routing.

pub mod background;
pub mod batch;
pub mod config;
pub mod entity_log;
pub mod error;
pub mod file_cache;
pub mod index;
pub mod io;
pub mod log;
pub mod meta;
pub mod meta_store;
pub mod record;
pub mod recovery;
mod retention;
pub mod segment;
pub mod verify;
pub mod wal;

pub use batch::BatchView;
pub use config::{Durability, LogConfig, Retention};
pub use entity_log::{EntityLog, LogShared, Visibility};
pub use error::{Error, FormatError, Result};
pub use file_cache::FileCache;
pub use log::{AppendInfo, Log, LogIter, ReadResult, RetentionReport};
pub use meta_store::MetaStore;
pub use record::{Record, RecordView};
pub use recovery::RecoveryReport;
pub use wal::{Commit, Wal, WalTxn};
